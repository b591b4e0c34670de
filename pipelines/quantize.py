"""Stage `quantize`: FP32 / W8A8 / mixed (ILP) / W4A4 variants and a lambda sweep, fake-quantized,
fine-tuned (QAT) and scored on the test split -> metrics/<case>/quantize.json, models/<case>/quantized/."""
import csv
import tempfile
from pathlib import Path

import torch

from pipelines.ilp import allocate, latency_table
from pipelines.sensitivity import train_batches
from tinym2net import tracking
from tinym2net.config import positive, section
from tinym2net.io import atomic_dir, read_json, write_json
from tinym2net.metrics import classification_metrics
from tinym2net.bitpack import FLOAT_BITS
from tinym2net.plots import bits_png, confusion_png
from tinym2net.quant import packed_size_bytes, qat_finetune, quantize_model
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model, predict


def pareto(points: list[dict]) -> list[dict]:
    """The points no other point beats on both size (smaller) and accuracy (higher), by size."""
    front = [p for p in points if not any(
        q["size_kib"] <= p["size_kib"] and q["accuracy"] >= p["accuracy"]
        and (q["size_kib"], q["accuracy"]) != (p["size_kib"], p["accuracy"]) for q in points)]
    return sorted(front, key=lambda p: p["size_kib"])


def variants(params: dict, sens: dict, mp_bits: dict, latency: dict | None = None) -> dict[str, tuple[dict | None, float | None]]:
    """Variant name -> (bits per layer or None for float, ILP size lambda or None)."""
    names = [l["name"] for l in sens["layers"]]
    widths = [b for b in params["ilp"]["bit_choices"] if b != FLOAT_BITS]
    hi, lo = max(widths), min(widths)
    out = {"fp32": (None, None), f"w{hi}a{hi}": ({n: hi for n in names}, 1.0 if hi == 8 else None),
           "mp": (mp_bits, params["ilp"].get("size_lambda")), f"w{lo}a{lo}": ({n: lo for n in names}, None)}
    for lam in params["quantize"]["sweep"]:
        out[f"mp-lambda{lam:g}"] = (allocate(params, sens, size_lambda=lam, latency_table=latency)["bits"], lam)
    return out


def quantize(params: dict, case: str, root: Path = Path(".")) -> None:
    import mlflow

    cfg = section(params, "quantize")
    info = params["cases"][case]
    fp32 = load_model(root / "models" / case / "fp32" / "fused.pt")
    sens = read_json(root / "models" / case / "sensitivity.json")
    mp = read_json(root / "models" / case / "bits.json")
    data = Features(root / "data" / "features" / case / "features.npz", fp32.modalities)
    bs = positive(cfg, "batch_size", integer=True)
    calib = train_batches(data, fp32.modalities, bs, positive(cfg, "calibration_batches", integer=True), params["seed"])
    train = train_batches(data, fp32.modalities, bs, 0, params["seed"] + 1)
    qat_epochs = positive(cfg, "qat.epochs", integer=True, allow_zero=True)
    test = data.rows("test")
    y = data.y[test].numpy()
    macs = {l["name"]: l["macs"] for l in sens["layers"]}
    fp32_size = packed_size_bytes(fp32, {})
    results, models, figures = {}, {}, {}
    with tracking.stage_run("quantize", case, root) as parent, tempfile.TemporaryDirectory() as tmp:
        for name, (bits, lam) in variants(params, sens, mp["bits"], latency_table(params, root, case)).items():
            qmodel = fp32 if bits is None else quantize_model(fp32, bits, calib)
            if bits is not None and qat_epochs:
                torch.manual_seed(params["seed"])
                qat_finetune(qmodel, train, qat_epochs, positive(cfg, "qat.lr"), params["seed"])
            prob = predict(qmodel, data, test, bs)
            size = fp32_size if bits is None else packed_size_bytes(fp32, bits)
            widths = bits or {n: 32 for n in macs}
            results[name] = {**classification_metrics(y, prob), "size_kib": round(size / 1024, 2),
                             "bops": int(sum(macs[n] * widths[n] ** 2 for n in macs)),
                             "compression": round(fp32_size / size, 2), "lambda": lam, "bits": bits}
            models[name] = {"bits": bits, "state_dict": qmodel.state_dict()}
            with tracking.child_run(parent, name):
                mlflow.log_params({"variant": name, "lambda": lam, "qat_epochs": qat_epochs if bits else 0,
                                   **{f"bits.{n}": w for n, w in widths.items()}})
                mlflow.log_metrics({k: v for k, v in results[name].items()
                                    if isinstance(v, (int, float)) and v is not None and k != "lambda"})
                for fig, draw in (("bits.png", lambda p: bits_png(sens["layers"], bits, p, f"{case} {name}")),
                                  ("confusion.png", lambda p: confusion_png(y, prob.argmax(1), info["classes"], p,
                                                                            f"{case} {name}, test split"))):
                    path = Path(tmp) / name / fig
                    path.parent.mkdir(exist_ok=True)
                    draw(path)
                    mlflow.log_artifact(str(path))
                torch.save(models[name], Path(tmp) / name / "model.pt")
                mlflow.log_artifact(str(Path(tmp) / name / "model.pt"))
            log.info("quantize %s/%s: accuracy %.3f, %.1f KiB (x%.1f)", case, name, results[name]["accuracy"],
                     results[name]["size_kib"], results[name]["compression"])
    points = [{"variant": n, "size_kib": r["size_kib"], "accuracy": r["accuracy"]} for n, r in results.items()]
    with atomic_dir(root / "models" / case / "quantized") as tmp:
        for name, blob in models.items():
            torch.save(blob, tmp / f"{name}.pt")
    with atomic_dir(root / "metrics" / case / "quantize") as tmp:
        for fname, rows in (("pareto.csv", pareto(points)), ("points.csv", points),
                            ("bits.csv", [{"layer": l["name"], "bits": mp["bits"][l["name"]],
                                           "omega_low": l["omega"][str(min(params["ilp"]["bit_choices"]))]}
                                          for l in sens["layers"]])):
            with open(tmp / fname, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    write_json(root / "metrics" / case / "quantize.json",
               {"variants": results, "pareto": pareto(points), "qat_epochs": qat_epochs,
                "test_samples": int(len(test))})
    log.info("quantize %s: %d variants; wrote metrics/%s/quantize.json and models/%s/quantized", case,
             len(results), case, case)


if __name__ == "__main__":
    run_stage("quantize", quantize)
