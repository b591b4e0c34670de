"""Stage `train`: the fused model and one baseline per modality -> models/<case>/, curves, train.json."""
import csv
from pathlib import Path

import torch

from tinym2net import tracking
from tinym2net.config import positive
from tinym2net.io import atomic_dir, write_json
from tinym2net.model import build
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, fit, save_model


def train(params: dict, case: str, root: Path = Path(".")) -> None:
    import mlflow

    info, cfg = params["cases"][case], params["train"][case]
    for key in ("epochs", "patience", "batch_size"):
        positive(params, f"train.{case}.{key}", integer=True)
    positive(params, f"train.{case}.lr")
    features = root / "data" / "features" / case / "features.npz"
    data = Features(features, info["modalities"])
    shapes = data.input_shapes()
    # the fused model first, then one unimodal baseline per modality
    variants = {"fused": info["modalities"], **{m: [m] for m in info["modalities"]}}
    trained, summary, curves = {}, {}, {}
    with tracking.stage_run("train", case, root) as parent:
        mlflow.log_params({"case": case, "seed": params["seed"], "modalities": ",".join(info["modalities"]),
                           **{k: v for k, v in cfg.items() if not isinstance(v, (dict, list))}})
        for name, modalities in variants.items():
            torch.manual_seed(params["seed"])
            model = build(cfg, shapes, len(info["classes"]), modalities, f"train.{case}")
            with tracking.child_run(parent, name):
                mlflow.log_params({"model": name, "modalities": ",".join(modalities),
                                   "params": model.param_count()})
                history = fit(model, data, cfg, params["seed"], f"{case}/{name}")
                for h in history:
                    mlflow.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
                mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                         pip_requirements=["torch==2.13.0"])
            best = min(history, key=lambda h: h["val_loss"])
            trained[name], curves[name] = (model, modalities), history
            summary[name] = {"params": model.param_count(), "flatten": model.flatten_sizes(),
                             "epochs": len(history), "best_epoch": best["epoch"],
                             "val_loss": round(best["val_loss"], 4), "val_accuracy": round(best["val_accuracy"], 4)}
            log.info("train %s/%s: %d params, best val acc %.3f at epoch %d", case, name,
                     model.param_count(), best["val_accuracy"], best["epoch"])
    with atomic_dir(root / "models" / case / "fp32") as tmp:
        for name, (model, modalities) in trained.items():
            save_model(tmp / f"{name}.pt", model, modalities, {m: shapes[m] for m in modalities},
                       len(info["classes"]), cfg)
    with atomic_dir(root / "metrics" / case / "curves") as tmp:
        for name, history in curves.items():
            with open(tmp / f"{name}.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)
    write_json(root / "metrics" / case / "train.json", summary)
    log.info("train %s: read %s, wrote models/%s/fp32 and metrics/%s", case, features, case, case)


if __name__ == "__main__":
    run_stage("train", train)
