"""Classification metrics (accuracy, UAR, macro-F1, ROC AUC) and the confusion-matrix image."""
from __future__ import annotations


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
