"""Figures and their spread: accuracy, UAR (unweighted average recall, ComParE's headline where classes are
imbalanced), macro-F1 and ROC AUC; per subject and per group; the interval over repeated partitions and
the subject-level bootstrap of one test split; the guard against a model collapsed to chance.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as st
from sklearn import metrics as skm

FIGURES = ("accuracy", "uar", "macro_f1", "roc_auc")


def classification_metrics(y_true: np.ndarray, prob: np.ndarray) -> dict:
    """accuracy, uar, macro_f1; roc_auc if binary (None when the labels hold one class)."""
    labels = np.arange(prob.shape[1])
    pred = prob.argmax(1)
    out = {"accuracy": float(skm.accuracy_score(y_true, pred)),
           "uar": uar(y_true, pred, prob.shape[1]),
           "macro_f1": float(skm.f1_score(y_true, pred, labels=labels, average="macro", zero_division=0))}
    if prob.shape[1] == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, prob[:, 1])) if len(set(y_true.tolist())) == 2 else None
    return out


def uar(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in `y_true` (absent classes are not counted as 0)."""
    recalls = [float((pred[y_true == c] == c).mean()) for c in range(n_classes) if (y_true == c).any()]
    return float(np.mean(recalls))


def by_subject(y_true: np.ndarray, prob: np.ndarray, subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One score per subject: the mean of its samples' probabilities. Returns (subjects, labels, probabilities)."""
    names, inverse = np.unique(subjects, return_inverse=True)
    counts = np.bincount(inverse)
    mean = np.stack([np.bincount(inverse, weights=prob[:, k]) / counts for k in range(prob.shape[1])], axis=1)
    labels = np.zeros(len(names), int)
    labels[inverse] = y_true
    return names, labels, mean


def per_group(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray) -> dict[str, dict]:
    """The figures of each group's samples (groups with an empty name are left out)."""
    return {str(g): {**classification_metrics(y_true[groups == g], prob[groups == g]), "samples": int((groups == g).sum())}
            for g in sorted(set(groups.tolist())) if g}


def collapsed(uar_value: float, n_classes: int, margin: float) -> bool:
    """A model whose UAR is within `margin` of chance (1 / classes) has learnt nothing usable."""
    return uar_value < 1.0 / n_classes + margin


def interval(values: list[float | None], n_train: float, n_test: float, confidence: float,
             bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Mean, standard deviation and the `confidence` interval of a figure over P partitions.

    Repeated random partitions share samples, so their figures are correlated and the plain t interval
    is too narrow; the corrected resampled t interval (Nadeau & Bengio 2003) scales the variance of
    the mean by (1/P + n_test/n_train), and is clipped to the figure's range (`bounds`). With one
    partition there is no spread (std and ci are None)."""
    vals = np.array([v for v in values if v is not None], float)
    if not len(vals):
        return {"mean": None, "std": None, "ci": None, "values": values}
    mean = float(vals.mean())
    if len(vals) < 2:
        return {"mean": round(mean, 4), "std": None, "ci": None, "values": values}
    std = float(vals.std(ddof=1))
    half = st.t.ppf((1 + confidence) / 2, len(vals) - 1) * np.sqrt((1 / len(vals) + n_test / n_train) * std ** 2)
    lo, hi = max(mean - half, bounds[0]), min(mean + half, bounds[1])
    return {"mean": round(mean, 4), "std": round(std, 4), "ci": [round(lo, 4), round(hi, 4)],
            "values": [None if v is None else round(v, 4) for v in values]}


def bootstrap(y_true: np.ndarray, preds: dict[str, np.ndarray], units: np.ndarray, n_classes: int, *,
              resamples: int, confidence: float, seed: int, reference: str | None = None) -> dict[str, dict]:
    """Accuracy and UAR of several prediction vectors on one test split, each with a percentile interval
    from resampling whole units (subjects or time blocks) with replacement; with `reference`, also the
    paired interval of each one's difference to it (the same resamples for all)."""
    names, inverse = np.unique(units, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(resamples, len(names)))          # (B, U) units drawn
    weights = np.stack([np.bincount(d, minlength=len(names)) for d in draws])  # (B, U) times each unit drawn
    w = weights[:, inverse].astype(float)                                      # (B, N) per-sample weight
    onehot = np.eye(n_classes)[y_true]                                         # (N, K)
    class_w = w @ onehot                                                       # (B, K)
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    figures = {}
    for name, pred in preds.items():
        correct = (pred == y_true).astype(float)
        acc = (w @ correct) / w.sum(1)
        recall = (w @ (onehot * correct[:, None])) / np.where(class_w > 0, class_w, np.nan)
        uar_b = np.nanmean(recall, axis=1)
        figures[name] = {"accuracy": acc, "uar": uar_b}
    out = {}
    for name, pred in preds.items():
        point = {"accuracy": float((pred == y_true).mean()), "uar": uar(y_true, pred, n_classes)}
        out[name] = {k: {"value": round(point[k], 4),
                         "ci": [round(float(np.percentile(figures[name][k], lo)), 4),
                                round(float(np.percentile(figures[name][k], hi)), 4)]} for k in point}
        if reference is not None and name != reference:
            for k in point:
                diff = figures[name][k] - figures[reference][k]
                out[name][k]["diff"] = round(point[k] - float(np.mean(preds[reference] == y_true) if k == "accuracy"
                                                               else uar(y_true, preds[reference], n_classes)), 4)
                out[name][k]["diff_ci"] = [round(float(np.percentile(diff, lo)), 4), round(float(np.percentile(diff, hi)), 4)]
    return out


def headline(*, uar: dict | None = None, acc: dict | None = None, auc: dict | None = None,
             kib: float | None = None, ms: float | None = None) -> dict:
    """One row of `dvc metrics show`: the same few keys for every model, variant and artifact, so the table
    stays narrow (a figure with `mean`/`std`/`ci` from the partitions, or `value`/`ci` from a bootstrap)."""
    row = {}
    for key, f in (("uar", uar), ("acc", acc), ("auc", auc)):
        if not f or f.get("mean", f.get("value")) is None:
            continue
        row[key] = f.get("mean", f.get("value"))
        if f.get("std") is not None:
            row[f"{key}_std"] = f["std"]
        if f.get("ci") and key != "auc":
            row[f"{key}_lo"], row[f"{key}_hi"] = f["ci"]
    if kib is not None:
        row["kib"] = kib
    if ms is not None:
        row["ms"] = ms
    return row
