"""Class balance: on a heavily imbalanced train split, unweighted cross-entropy collapses to the majority
class (UAR 0.5) and the class-weighted loss does not; early stopping follows the chosen val figure."""
import json

import numpy as np
import pytest
import torch

from tinym2net.metrics import classification_metrics
from tinym2net.model import build
from tinym2net.params import Train
from tinym2net.training import Features, class_weights, fit, predict

pytestmark = pytest.mark.usefixtures("one_thread")

BRANCHES = {"x": {"padding": "same", "layers": [["conv", 4, 3], ["maxpool", 2]], "dense": 8}}


def features(tmp_path, positive_share: float, n: int = 2000, seed: int = 0):
    """A features.npz (and stats.json) of one modality: positives carry a shift of 0.35 in one corner of an
    8x8 map of unit noise; train holds `positive_share` positives, val and test are balanced."""
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n // 4))
    y = np.zeros(n, int)
    train = np.flatnonzero(split == "train")
    y[train[: int(positive_share * len(train))]] = 1
    for part in ("val", "test"):
        rows = np.flatnonzero(split == part)
        y[rows[: len(rows) // 2]] = 1
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    x[y == 1, 0, :4, :4] += 0.35
    path = tmp_path / "features.npz"
    np.savez(path, x_x=x, idx_x=np.arange(n), y=y, split=split[None], subject=np.arange(n).astype(str),
             unit=np.arange(n).astype(str), group=np.array([""] * n))
    (tmp_path / "stats.json").write_text(json.dumps({"partitions": [{"x": {
        "shape": [1, 8, 8], "stat_shape": [1, 1, 1], "mean": [0.0], "std": [1.0]}}]}))
    return Features(path, ["x"], 0)


def train_cfg(class_weight: str, early_stopping: str = "uar") -> Train:
    return Train(epochs=8, patience=8, batch_size=64, lr=0.003, dropout=0.0, class_weight=class_weight,
                 early_stopping=early_stopping, branches=BRANCHES, head=[])


def test_class_weighting_moves_uar_off_chance_where_unweighted_training_stays_at_it(tmp_path):
    data = features(tmp_path, positive_share=0.03)
    test = data.rows("test")
    result = {}
    for mode in ("none", "auto"):
        torch.manual_seed(0)
        model = build(train_cfg(mode).model_dump(), data.input_shapes(), 2)
        _, how = fit(model, data, train_cfg(mode, early_stopping="loss"), 2, seed=0, name=mode)
        result[mode] = (classification_metrics(data.y[test].numpy(), predict(model, data, test)), how)
    unweighted, weighted = result["none"][0], result["auto"][0]
    assert result["none"][1]["class_weights"] is None and result["auto"][1]["class_weights"][1] > 10
    assert unweighted["uar"] == 0.5                          # always "negative": accuracy 0.5 on a balanced test
    assert weighted["uar"] > 0.6, weighted


def test_auto_weights_only_an_imbalanced_split():
    assert class_weights(np.array([0] * 60 + [1] * 40), 2, "auto") is None
    w = class_weights(np.array([0] * 90 + [1] * 10), 2, "auto")
    assert w.tolist() == pytest.approx([100 / 180, 100 / 20])
    assert class_weights(np.array([0] * 60 + [1] * 40), 2, "balanced").tolist() == pytest.approx([100 / 120, 100 / 80])


def test_history_records_val_uar_and_the_best_epoch_is_kept(tmp_path):
    data = features(tmp_path, positive_share=0.5, n=800)
    torch.manual_seed(0)
    model = build(train_cfg("none").model_dump(), data.input_shapes(), 2)
    history, how = fit(model, data, train_cfg("none"), 2, seed=0, name="balanced")
    assert {"train_loss", "val_loss", "val_accuracy", "val_uar"} <= set(history[0])
    best = max(history, key=lambda h: (h["val_uar"], -h["val_loss"]))
    assert how["best_epoch"] == best["epoch"] and how["early_stopping"] == "uar"
    val = data.rows("val")
    assert classification_metrics(data.y[val].numpy(), predict(model, data, val))["uar"] == pytest.approx(best["val_uar"])
