"""Stage `quantize`: FP32 / W8A8 / mixed (ILP) / W4A4 variants and a lambda sweep of the deployed model
(partition 0's), each post-training (PTQ) and after quantization-aware fine-tuning (QAT), scored on the test
split with a subject-level bootstrap interval; and the ablation of the allocation at the MP budget
(the ILP's, the reverse of the sensitivity order, random ones; PTQ)
-> metrics/<case>/quantize.json, metrics/<case>/quantize/, models/<case>/quantized/."""
import csv
import tempfile
from pathlib import Path

import numpy as np
import torch

from tinym2net import ilp, tracking
from tinym2net.bitpack import FLOAT_BITS
from tinym2net.io import Outputs, file_md5, read_json, write_json
from tinym2net.metrics import bootstrap, headline
from tinym2net.params import Params
from tinym2net.plots import bits_png, confusion_png
from tinym2net.quant import packed_size_bytes, qat_finetune, quantize_model
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model, predict

OUTPUTS = ["models/{case}/quantized", "metrics/{case}/quantize.json", "metrics/{case}/quantize",
           "metrics/{case}/headline/variants"]
PARTITION = 0  # the deployed model is partition 0's


def variants(params: Params, sens: dict, mp_bits: dict, latency: dict | None = None) -> dict[str, tuple[dict | None, float | None]]:
    """Variant name -> (bits per layer or None for float, ILP size lambda or None)."""
    names = [l["name"] for l in sens["layers"]]
    widths = [b for b in params.ilp.bit_choices if b != FLOAT_BITS]
    hi, lo = max(widths), min(widths)
    out = {"fp32": (None, None), f"w{hi}a{hi}": ({n: hi for n in names}, 1.0 if hi == 8 else None),
           "mp": (mp_bits, params.ilp.size_lambda), f"w{lo}a{lo}": ({n: lo for n in names}, None)}
    for lam in params.quantize.sweep:
        out[f"mp-lambda{lam:g}"] = (ilp.allocate(params.ilp, sens, size_lambda=lam, latency_table=latency,
                                                      profile=params.profile())["bits"], lam)
    return out


def ablation(params: Params, sens: dict, mp: dict, seed: int) -> dict[str, dict]:
    """Allocations at the MP variant's size budget: the ILP's (size only, quantized widths), the reverse of
    the sensitivity order (the
    same ILP with the layers' sensitivities mirrored by rank, so the least sensitive layers get the high
    widths), and `quantize.ablation.random` random ones (groups raised to a random higher width in random
    order while the budget holds), all under the same pins and ties."""
    layers, choices = sens["layers"], sorted(b for b in params.ilp.bit_choices if b != FLOAT_BITS)
    pins = ilp.pins(layers, params.ilp.pin_bits)
    limit = mp["size_limit"]
    if limit is None:  # no size budget: nothing to compare at
        return {}
    low = str(choices[0])
    rank = sorted(range(len(layers)), key=lambda i: layers[i]["omega"][low])        # least to most sensitive
    mirror = {rank[k]: rank[len(rank) - 1 - k] for k in range(len(rank))}
    reverse = {**sens, "layers": [{**l, "omega": layers[mirror[i]]["omega"]} for i, l in enumerate(layers)]}
    # the quantized widths only, and the size limit only: the ablation compares orderings at one size
    out = {"ilp": ilp.solve(sens, choices, size_limit=limit, pins=pins)["bits"],
           "reverse": ilp.solve(reverse, choices, size_limit=limit, pins=pins)["bits"]}
    names = [l["name"] for l in layers]
    groups = ilp.tie_groups(names, sens.get("ties", []))
    rng = np.random.default_rng(seed)
    for k in range(params.quantize.ablation.random):
        bits = {n: pins.get(n, choices[0]) for n in names}
        for g in rng.permutation(len(groups)):
            members = [names[i] for i in groups[g]]
            if any(n in pins for n in members):
                continue
            for b in rng.permutation([c for c in choices if c > choices[0]]):
                trial = {**bits, **{n: int(b) for n in members}}
                if ilp.totals(layers, trial)[0] <= limit:
                    bits = trial
                    break
        out[f"random-{k + 1}"] = bits
    return out


def _objective(sens: dict, bits: dict) -> float:
    return float(sum(l["omega"][str(bits[l["name"]])] for l in sens["layers"]))


def quantize(params: Params, case: str, root: Path = Path(".")) -> None:
    cfg, info = params.quantize, params.cases[case]
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    fp32 = load_model(Path(root) / "models" / case / "trained" / f"p{PARTITION}" / f"{info.models[0]}.pt")
    sens = read_json(Path(root) / "models" / case / "sensitivity.json")
    mp = read_json(Path(root) / "models" / case / "bits.json")
    features = Path(root) / "data" / "features" / case / "features.npz"
    data = Features(features, fp32.modalities, PARTITION)
    seed = params.seed.train
    calib = data.batches("train", fp32.modalities, cfg.batch_size, cfg.calibration_batches, seed)
    train = data.batches("train", fp32.modalities, cfg.batch_size, 0, seed + 1)
    test = data.rows("test")
    y = data.y[test].numpy()
    macs = {l["name"]: l["macs"] for l in sens["layers"]}
    fp32_size = packed_size_bytes(fp32, {})
    latency = ilp.read_table(Path(root) / "models" / case / "latency.json") if ilp.needs_latency(params.ilp) else None
    preds, sizes, models, allocations = {}, {}, {}, variants(params, sens, mp["bits"], latency)
    for name, (bits, lam) in allocations.items():
        if bits is None:
            preds[f"{name}/ptq"] = preds[f"{name}/qat"] = predict(fp32, data, test, cfg.batch_size).argmax(1)
            models[name] = {"bits": None, "state_dict": fp32.state_dict()}
        else:
            qmodel = quantize_model(fp32, bits, calib)
            preds[f"{name}/ptq"] = predict(qmodel, data, test, cfg.batch_size).argmax(1)
            if cfg.qat.epochs:
                torch.manual_seed(seed)
                qat_finetune(qmodel, train, cfg.qat.epochs, cfg.qat.lr, seed)
            preds[f"{name}/qat"] = predict(qmodel, data, test, cfg.batch_size).argmax(1)
            models[name] = {"bits": bits, "state_dict": qmodel.state_dict()}
        sizes[name] = fp32_size if bits is None else packed_size_bytes(fp32, bits)
        log.info("quantize %s/%s: PTQ accuracy %.3f, QAT %.3f, %.1f KiB", case, name,
                 (preds[f"{name}/ptq"] == y).mean(), (preds[f"{name}/qat"] == y).mean(), sizes[name] / 1024)
    ablations = ablation(params, sens, mp, seed)
    for name, bits in ablations.items():
        preds[f"ablation/{name}"] = predict(quantize_model(fp32, bits, calib), data, test, cfg.batch_size).argmax(1)
    figures = bootstrap(y, preds, data.unit[test], len(info.classes), resamples=params.evaluate.bootstrap,
                        confidence=params.evaluate.confidence, seed=seed, reference="fp32/ptq")
    results = {}
    for name, (bits, lam) in allocations.items():
        widths = bits or {}
        results[name] = {"lambda": lam, "weights_kib": round(sizes[name] / 1024, 2),
                         "compression": round(fp32_size / sizes[name], 2),
                         "bops_g": round(sum(macs[n] * widths.get(n, 32) ** 2 for n in macs) / 1e9, 4),
                         "layers_at": {str(b): sum(1 for v in widths.values() if v == b) for b in params.ilp.bit_choices},
                         "ptq": figures[f"{name}/ptq"], "qat": figures[f"{name}/qat"]}
    ablated = {name: {"objective": _objective(sens, bits), "weights_kib": round(packed_size_bytes(fp32, bits) / 1024, 2),
                      **figures[f"ablation/{name}"]} for name, bits in ablations.items()}
    summary = {"features": file_md5(features), "partition": PARTITION, "qat_epochs": cfg.qat.epochs,
               "sensitivity": {"iterations": sens["iterations"], "converged": sens["converged"]},
               "test_samples": int(len(test)), "test_units": int(len(set(data.unit[test].tolist()))),
               "spread": f"bootstrap of the test split's {params.evaluate.bootstrap} resamples of whole units "
                         f"(subjects or time blocks), {100 * params.evaluate.confidence:g}% percentile interval; "
                         f"differences to fp32 paired",
               "variants": results, "ablation": {"size_limit_bytes": mp["size_limit"], "allocations": ablated}}
    with outs.directory(f"models/{case}/quantized") as out:
        for name, blob in models.items():
            torch.save(blob, out.path(f"{name}.pt"))
    with outs.directory(f"metrics/{case}/quantize") as out:
        order = [l["name"] for l in sens["layers"]]
        bit_rows = [{"layer": n, "order": i, **{v: (allocations[v][0] or {}).get(n, 32) for v in allocations}}
                    for i, n in enumerate(order)]
        with open(out.path("bits.csv"), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(bit_rows[0]))
            writer.writeheader()
            writer.writerows(bit_rows)
    outs.write_json(f"metrics/{case}/quantize.json", summary)
    with outs.directory(f"metrics/{case}/headline/variants") as out:   # `dvc metrics show`: one row per figure
        for name, r in results.items():
            for stage in ("ptq", "qat"):
                write_json(out.path(f"{name}-{stage}.json"), headline(uar=r[stage]["uar"], acc=r[stage]["accuracy"],
                                                                      kib=r["weights_kib"]))
        for name, a in ablated.items():
            write_json(out.path(f"ablation-{name}.json"), headline(uar=a["uar"], acc=a["accuracy"], kib=a["weights_kib"]))
    _track(case, root, allocations, results, sens, preds, y, info.classes, models)
    log.info("quantize %s: %d variants, %d ablation allocations; wrote metrics/%s/quantize.json", case,
             len(results), len(ablated), case)


def _track(case, root, allocations, results, sens, preds, y, classes, models) -> None:
    """The quantize run in MLflow: one child run per variant with its figures, bits and model."""
    import mlflow

    with tracking.stage_run("quantize", case, root) as parent, tempfile.TemporaryDirectory() as tmp:
        for name, (bits, lam) in allocations.items():
            r = results[name]
            with tracking.child_run(parent, name):
                mlflow.log_params({"variant": name, "lambda": lam, **{f"bits.{n}": w for n, w in (bits or {}).items()}})
                mlflow.log_metrics({"weights_kib": r["weights_kib"], "compression": r["compression"], "bops_g": r["bops_g"],
                                    **{f"{stage}_{k}": r[stage][k]["value"] for stage in ("ptq", "qat")
                                       for k in ("accuracy", "uar")}})
                folder = Path(tmp) / name
                folder.mkdir()
                bits_png(sens["layers"], bits, folder / "bits.png", f"{case} {name}")
                confusion_png(y, preds[f"{name}/qat"], classes, folder / "confusion.png", f"{case} {name}, test split")
                torch.save(models[name], folder / "model.pt")
                for f in ("bits.png", "confusion.png", "model.pt"):
                    mlflow.log_artifact(str(folder / f))


if __name__ == "__main__":
    run_stage("quantize", quantize)
