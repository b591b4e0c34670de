"""Stage `train` (one instance per case and partition): the fused model and one baseline per modality (or
the single-branch model of a one-modality case) -> models/<case>/trained/p<k>/, metrics/<case>/train/p<k>.json,
curves."""
import csv
from pathlib import Path

import torch

from tinym2net import cost, tracking
from tinym2net.io import Outputs, file_md5, read_json
from tinym2net.model import build
from tinym2net.params import Params
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, fit, save_model

OUTPUTS = ["models/{case}/trained/p{partition}", "metrics/{case}/train/p{partition}.json",
           "metrics/{case}/curves/p{partition}"]


def train(params: Params, case: str, partition: int, root: Path = Path(".")) -> None:
    import mlflow

    info, cfg = params.cases[case], params.train[case]
    outs = Outputs(root, [o.format(case=case, partition=partition) for o in OUTPUTS])
    features = Path(root) / "data" / "features" / case / "features.npz"
    data = Features(features, list(info.modalities), partition)
    shapes, seed = data.input_shapes(), params.seed.train + partition
    spec = cfg.model_dump()
    # the branches the scale stage chose (with scale.profile null: train's own, unchanged)
    spec["branches"] = read_json(Path(root) / "models" / case / "architecture.json")["branches"]
    trained, summary, curves = {}, {}, {}
    with tracking.stage_run("train", case, root, partition) as parent:
        mlflow.log_params({"case": case, "partition": partition, "seed": seed, "modalities": ",".join(info.modalities),
                           **{k: v for k, v in spec.items() if not isinstance(v, (dict, list))},
                           **{f"branch.{m}": b.get("type", "dscnn") for m, b in spec["branches"].items()}})
        for name in info.models:
            modalities = list(info.modalities) if name == "fused" else [name]
            torch.manual_seed(seed)
            model = build(spec, shapes, len(info.classes), modalities, f"train.{case}")
            with tracking.child_run(parent, name):
                mlflow.log_params({"model": name, "modalities": ",".join(modalities), "params": model.param_count()})
                history, how = fit(model, data, cfg, len(info.classes), seed, f"{case}/p{partition}/{name}")
                for h in history:
                    mlflow.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
            best = history[how["best_epoch"] - 1]
            trained[name], curves[name] = (model, modalities), history
            costs = cost.analyse(model.eval(), {m: shapes[m] for m in modalities}, case, "fp32", list(info.classes))
            summary[name] = {"params": model.param_count(), "flatten": model.flatten_sizes(), "epochs": len(history),
                             "fp32_cost": {"flash_bytes": costs.flash_bytes(), "peak_ram_bytes": costs.peak_ram_bytes(),
                                           "macs": costs.macs(), "bops": costs.bops()},
                             **how, **{k: round(best[k], 4) for k in ("val_loss", "val_accuracy", "val_uar")}}
            log.info("train %s/p%d/%s: %d params, best val UAR %.3f (accuracy %.3f) at epoch %d%s", case, partition,
                     name, model.param_count(), best["val_uar"], best["val_accuracy"], how["best_epoch"],
                     ", class-weighted" if how["class_weights"] else "")
    with outs.directory(f"models/{case}/trained/p{partition}") as out:
        for name, (model, modalities) in trained.items():
            save_model(out.path(f"{name}.pt"), model, modalities, {m: shapes[m] for m in modalities},
                       len(info.classes), spec)
    with outs.directory(f"metrics/{case}/curves/p{partition}") as out:
        for name, history in curves.items():
            with open(out.path(f"{name}.csv"), "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)
    outs.write_json(f"metrics/{case}/train/p{partition}.json",
                    {"features": file_md5(features), "partition": partition, "seed": seed, "models": summary})
    log.info("train %s/p%d: wrote models/%s/trained/p%d", case, partition, case, partition)


if __name__ == "__main__":
    run_stage("train", train, partitioned=True)
