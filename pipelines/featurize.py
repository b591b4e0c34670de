"""Stage `featurize`: segments -> normalized model inputs -> data/features/<case>/features.npz."""
import csv
from pathlib import Path

import numpy as np

from tinym2net.config import positive, section
from tinym2net.errors import DataError
from tinym2net.features import featurize_modality, normalization, stats_axes
from tinym2net.io import atomic_dir, write_json
from tinym2net.stage import log, run_stage


def featurize(params: dict, case: str, root: Path = Path(".")) -> None:
    info = params["cases"][case]
    batch = positive(params, f"featurize.{case}.batch_size", integer=True)
    sr = positive(params, f"slice.{case}.sample_rate", integer=True)
    interim, out = root / "data" / "interim" / case, root / "data" / "features" / case
    with open(interim / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    segments = np.load(interim / "segments.npz")
    split = np.array([r["split"] for r in rows])
    if not (split == "train").any():
        raise DataError(f"{interim / 'manifest.csv'}: no sample in the train split")
    arrays = {"y": np.array([info["classes"].index(r["label"]) for r in rows]), "split": split,
              "subject": np.array([r["subject_id"] for r in rows])}
    stats = {}
    for m in info["modalities"]:
        x = featurize_modality(segments[m], section(params, f"featurize.{case}.{m}"), sr, batch)  # (N_m, C, H, W)
        idx = np.array([int(r[m]) for r in rows])
        train_rows = np.unique(idx[split == "train"])                     # segments seen in training
        mean, std = normalization(x[train_rows], stats_axes(params["featurize"][case][m]["type"]))
        arrays[f"x_{m}"] = (x - mean) / std
        arrays[f"idx_{m}"] = idx
        stats[m] = {"shape": list(x.shape[1:]), "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}
        log.info("featurize %s: %s %s -> %s", case, m, segments[m].shape, x.shape)
    with atomic_dir(out) as tmp:
        np.savez(tmp / "features.npz", **arrays)
        write_json(tmp / "stats.json", stats)
    log.info("featurize %s: read %s, wrote %s", case, interim, out)


if __name__ == "__main__":
    run_stage("featurize", featurize)
