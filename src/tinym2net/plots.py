"""Figures: the confusion matrix, and bits and sensitivity per layer; the tables DVC plots draw."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def confusion_matrix(y_true, y_pred, classes: list[str]) -> np.ndarray:
    """Counts (rows = true class, columns = predicted) over every class, including classes that never occur."""
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))


def confusion_counts(y_true, y_pred, classes: list[str]) -> list[dict]:
    """One row per (actual, predicted) pair of classes, zeros included, in class order (DVC's confusion_counts)."""
    cm = confusion_matrix(y_true, y_pred, classes)
    return [{"actual": a, "predicted": p, "count": int(cm[i, j])}
            for i, a in enumerate(classes) for j, p in enumerate(classes)]


def confusion_csv(y_true, y_pred, classes: list[str], fh) -> None:
    """Write `confusion_counts` as CSV (actual, predicted, count) to an open text file."""
    writer = csv.DictWriter(fh, fieldnames=["actual", "predicted", "count"])
    writer.writeheader()
    writer.writerows(confusion_counts(y_true, y_pred, classes))


def confusion_png(y_true, y_pred, classes: list[str], path, title: str) -> None:
    """Write the confusion matrix (counts, rows = true class) as a PNG (to a path or a binary file)."""
    cm = confusion_matrix(y_true, y_pred, classes)
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


def bits_png(layers: list[dict], bits: dict[str, int] | None, path: Path, title: str) -> None:
    """Bit width per layer (bars) over each layer's sensitivity Omega at the lowest width (line, log scale)."""
    names = [l["name"] for l in layers]
    low = str(min(int(b) for b in layers[0]["omega"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4), dpi=100)
    ax.bar(range(len(names)), [bits.get(n, 32) if bits else 32 for n in names], color="tab:blue")
    ax.set_ylabel("bits (32 = float)")
    ax.set_xticks(range(len(names)), [n.replace("branches.", "").replace("features.", "") for n in names],
                  rotation=60, ha="right", fontsize=7)
    twin = ax.twinx()
    twin.plot(range(len(names)), [max(abs(l["omega"][low]), 1e-30) for l in layers], "o-", color="tab:red")
    twin.set_yscale("log")
    twin.set_ylabel(f"|Omega| at {low} bits", color="tab:red")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
