"""Stage `featurize`: segments -> model inputs (MFCCs, pictures) and each partition's normalization
statistics (train split only) -> data/features/<case>/features.npz, stats.json."""
import csv
from pathlib import Path

import numpy as np

from tinym2net.errors import DataError
from tinym2net.features import check_finite, featurize_modality, normalization, stats_axes
from tinym2net.io import Outputs, write_json
from tinym2net.params import Params
from tinym2net.stage import log, run_stage

OUTPUTS = ["data/features/{case}"]


def featurize(params: Params, case: str, root: Path = Path(".")) -> None:
    info, cfg = params.cases[case], params.featurize[case]
    interim = Path(root) / "data" / "interim" / case
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    with open(interim / "samples.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{interim / 'samples.csv'}: no samples (run the slice stage first)")
    segments = np.load(interim / "segments.npz")
    split = np.array([[r[f"split_{p}"] for r in rows] for p in params.partitions])   # (P, N)
    arrays = {"y": np.array([info.classes.index(r["label"]) for r in rows]), "split": split,
              "subject": np.array([r["subject_id"] for r in rows]), "unit": np.array([r["unit"] for r in rows]),
              "group": np.array([r["group"] for r in rows])}
    stats: list[dict] = [{} for _ in params.partitions]
    for m in info.modalities:
        spec = cfg.spec(m)
        x = featurize_modality(segments[m], spec, params.slice[case].sample_rate, cfg.batch_size, m)  # (N_m, C, H, W)
        idx = np.array([int(r[m]) for r in rows])
        first_use = {int(i): n for n, i in reversed(list(enumerate(idx)))}
        check_finite(x, m, lambda seg: f"subject {rows[first_use.get(seg, 0)]['subject_id']} at "
                                       f"{rows[first_use.get(seg, 0)][f'{m}_time']} s")
        for p in params.partitions:
            train_rows = np.unique(idx[split[p] == "train"])                     # segments seen in training
            mean, std = normalization(x[train_rows], stats_axes(spec.type))
            stats[p][m] = {"shape": list(x.shape[1:]), "stat_shape": list(mean.shape[1:]),
                           "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}
        arrays[f"x_{m}"], arrays[f"idx_{m}"] = x, idx
        log.info("featurize %s: %s %s -> %s", case, m, segments[m].shape, x.shape)
    with outs.directory(f"data/features/{case}") as out:
        np.savez(out.path("features.npz"), **arrays)
        write_json(out.path("stats.json"), {"partitions": stats})
    log.info("featurize %s: read %s, wrote data/features/%s", case, interim, case)


if __name__ == "__main__":
    run_stage("featurize", featurize)
