"""Training with class balance and early stopping on a validation figure, and batched prediction."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import DataError, ModelFileError
from .io import read_json
from .model import build

log = logging.getLogger(__name__)

IMBALANCE = 1.5  # `class_weight: auto` balances the loss when the largest train class is this much the smallest


class Features:
    """The arrays of `data/features/<case>/features.npz` for one partition: inputs normalized with that
    partition's train-split statistics (stats.json), as tensors indexable by sample rows."""

    def __init__(self, path: Path, modalities: list[str], partition: int = 0):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: not found (run the featurize stage first)")
        stats = read_json(path.parent / "stats.json")["partitions"]
        if not 0 <= partition < len(stats):
            raise DataError(f"{path}: no partition {partition} (the featurize stage wrote {len(stats)})")
        with np.load(path) as z:
            self.x = {}
            for m in modalities:
                s = stats[partition][m]
                shape = (1, *s["stat_shape"])
                x = (z[f"x_{m}"] - np.reshape(s["mean"], shape)) / np.reshape(s["std"], shape)
                self.x[m] = torch.from_numpy(x.astype(np.float32))                     # (N_m, C, H, W)
            self.idx = {m: torch.from_numpy(z[f"idx_{m}"]) for m in modalities}
            self.y = torch.from_numpy(z["y"]).long()
            self.split = z["split"][partition]
            self.subject, self.unit, self.group = z["subject"], z["unit"], z["group"]
        self.modalities, self.partition = modalities, partition

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def input_shapes(self) -> dict[str, tuple]:
        return {m: tuple(self.x[m].shape[1:]) for m in self.modalities}

    def batch(self, rows, modalities) -> dict[str, torch.Tensor]:
        """Inputs of the given sample rows, channels-last (2.5x faster convolutions on CPU)."""
        return {m: self.x[m][self.idx[m][rows]].contiguous(memory_format=torch.channels_last)
                for m in modalities}

    def batches(self, split: str, modalities, batch_size: int, count: int, seed: int) -> list:
        """`count` shuffled (inputs, targets) batches of a split (all of it if count is 0)."""
        rows = np.random.default_rng(seed).permutation(self.rows(split))
        out = [(self.batch(rows[i:i + batch_size], modalities), self.y[rows[i:i + batch_size]])
               for i in range(0, len(rows), batch_size)]
        return out[:count] if count else out


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> torch.Tensor | None:
    """Balanced cross-entropy weights n / (k n_c), or None (`none`, or `auto` on a balanced split)."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    if mode == "none" or (mode == "auto" and counts.max() <= IMBALANCE * max(counts.min(), 1)):
        return None
    return torch.tensor(counts.sum() / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)


def _evaluate(model, data: Features, rows, batch_size: int, loss_fn, n_classes: int) -> dict:
    """Loss, accuracy and UAR (unweighted average recall) on the given rows."""
    model.eval()
    total, preds = 0.0, []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            logits = model(data.batch(r, model.modalities))
            total += loss_fn(logits, data.y[r]).item() * len(r)
            preds.append(logits.argmax(1))
    y, pred = data.y[rows], torch.cat(preds)
    recalls = [(pred[y == c] == c).float().mean().item() for c in range(n_classes) if (y == c).any()]
    return {"loss": total / len(rows), "accuracy": (pred == y).float().mean().item(), "uar": float(np.mean(recalls))}


def fit(model: nn.Module, data: Features, cfg, n_classes: int, seed: int, name: str) -> tuple[list[dict], dict]:
    """Adam on (class-weighted) cross-entropy of logits; keep the weights of the best epoch by
    `cfg.early_stopping` on the val split, stop after `patience` epochs without improvement.
    Returns the per-epoch history and what was done (class weights, best epoch)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(memory_format=torch.channels_last)
    train, val = data.rows("train"), data.rows("val")
    if len(val) == 0:
        raise DataError("features: the val split is empty (early stopping needs it; raise slice.<case>.split.val)")
    weights = class_weights(data.y[train].numpy(), n_classes, cfg.class_weight)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    key, sign = cfg.early_stopping, (-1.0 if cfg.early_stopping == "loss" else 1.0)
    best, best_state, best_epoch, waited, history = -np.inf, None, 0, 0, []
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {name}", unit="epoch")
    for epoch in bar:
        model.train()
        order = rng.permutation(train)
        running = 0.0
        for i in range(0, len(order), cfg.batch_size):
            r = order[i:i + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(data.batch(r, model.modalities)), data.y[r])
            loss.backward()
            opt.step()
            running += loss.item() * len(r)
        v = _evaluate(model, data, val, cfg.batch_size, loss_fn, n_classes)
        history.append({"epoch": epoch, "train_loss": running / len(train), "val_loss": v["loss"],
                        "val_accuracy": v["accuracy"], "val_uar": v["uar"]})
        bar.set_postfix(val_loss=f"{v['loss']:.3f}", **{f"val_{key}": f"{v[key]:.3f}"} if key != "loss" else {})
        # better on the chosen figure; ties (common for UAR on small val splits) go to the lower val loss
        score = (sign * v[key], -v["loss"])
        if best_state is None or score > best:
            best, best_state, best_epoch, waited = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= cfg.patience:
                log.info("%s: early stop at epoch %d (best val %s at epoch %d)", name, epoch, key, best_epoch)
                break
    model.load_state_dict(best_state)
    return history, {"class_weights": None if weights is None else [round(w, 4) for w in weights.tolist()],
                     "best_epoch": best_epoch, "early_stopping": key}


def predict(model: nn.Module, data: Features, rows, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, n_classes) for the given sample rows."""
    model.eval().to(memory_format=torch.channels_last)
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            out.append(torch.softmax(model(data.batch(rows[i:i + batch_size], model.modalities)), 1))
    return torch.cat(out).numpy()


def save_model(path: Path, model, modalities, input_shapes, n_classes, train_cfg: dict) -> None:
    torch.save({"state_dict": model.state_dict(), "modalities": list(modalities),
                "input_shapes": {m: list(s) for m, s in input_shapes.items()},
                "n_classes": n_classes, "train_cfg": train_cfg}, path)


def load_model(path: Path):
    """Rebuild a model saved by `save_model`."""
    try:
        ckpt = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: not found (run the train stage first)") from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelFileError(f"{path}: cannot be read as a model ({type(exc).__name__})") from None
    model = build(ckpt["train_cfg"], {m: tuple(s) for m, s in ckpt["input_shapes"].items()},
                  ckpt["n_classes"], ckpt["modalities"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
