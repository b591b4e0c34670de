"""Classification metrics (accuracy, UAR, macro-F1, ROC AUC) and the confusion-matrix image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict:
    """accuracy, uar (unweighted average recall, the ComParE metric), macro_f1; roc_auc if binary."""
    labels = np.arange(prob.shape[1])
    pred = prob.argmax(1)
    out = {"accuracy": float(skm.accuracy_score(y_true, pred)),
           "uar": float(skm.recall_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
           "macro_f1": float(skm.f1_score(y_true, pred, labels=labels, average="macro", zero_division=0))}
    if prob.shape[1] == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, prob[:, 1])) if len(set(y_true)) == 2 else None
    return out


def confusion_png(y_true, y_pred, classes: list[str], path: Path, title: str) -> None:
    """Write the confusion matrix (counts, rows = true class) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = skm.confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(classes), 1.0 + 0.9 * len(classes)), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
