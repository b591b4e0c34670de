"""Stage `evaluate`: every model of every partition on its test split -> metrics/<case>/evaluate.json (each
figure's mean, std and interval over the partitions; per subject and per group; the multimodal gain; models
collapsed to chance flagged), reports/<case>/ (the confusion matrix over all partitions: PNG and counts)."""
from pathlib import Path

import numpy as np

from tinym2net import cost, metrics, tracking
from tinym2net.io import Outputs, file_md5, read_json, write_json
from tinym2net.params import Params
from tinym2net.plots import confusion_csv, confusion_png
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model, predict

OUTPUTS = ["metrics/{case}/evaluate.json", "metrics/{case}/headline/models", "reports/{case}/confusion.png",
           "reports/{case}/confusion.csv"]


def evaluate_partition(params: Params, case: str, p: int, root: Path) -> dict:
    """Test-split figures of every model trained on partition p, and the primary model's predictions."""
    info = params.cases[case]
    data = Features(Path(root) / "data" / "features" / case / "features.npz", list(info.modalities), p)
    test, train = data.rows("test"), data.rows("train")
    y = data.y[test].numpy()
    out = {"test_samples": int(len(test)), "train_samples": int(len(train)),
           "test_units": int(len(set(data.unit[test].tolist()))), "models": {}}
    for name in info.models:
        model = load_model(Path(root) / "models" / case / "trained" / f"p{p}" / f"{name}.pt")
        prob = predict(model, data, test, params.evaluate.batch_size)
        figures = {**metrics.classification_metrics(y, prob), "params": model.param_count()}
        subjects, y_s, prob_s = metrics.by_subject(y, prob, data.subject[test])
        figures["subject"] = {**metrics.classification_metrics(y_s, prob_s), "subjects": int(len(subjects))}
        figures["groups"] = metrics.per_group(y, prob, data.group[test])
        out["models"][name] = figures
        if name == info.models[0]:
            out["predictions"] = (y, prob.argmax(1))
    return out


def summarize(params: Params, case: str, parts: list[dict]) -> dict:
    """Mean, std and interval of every figure over the partitions; the gain of fusion; collapse flags."""
    info, cfg = params.cases[case], params.evaluate
    n_train = float(np.mean([p["train_samples"] for p in parts]))
    n_test = float(np.mean([p["test_samples"] for p in parts]))

    def spread(values, bounds=(0.0, 1.0)):
        return metrics.interval(values, n_train, n_test, cfg.confidence, bounds)

    models, warnings = {}, []
    for name in info.models:
        per = [p["models"][name] for p in parts]
        figures = {k: spread([m.get(k) for m in per]) for k in metrics.FIGURES if k in per[0]}
        figures["subject"] = {k: spread([m["subject"].get(k) for m in per]) for k in metrics.FIGURES
                              if k in per[0]["subject"]}
        groups = sorted({g for m in per for g in m["groups"]})
        figures["groups"] = {g: {k: spread([m["groups"].get(g, {}).get(k) for m in per]) for k in ("accuracy", "uar")}
                             for g in groups}
        chance = [i for i, m in enumerate(per) if metrics.collapsed(m["uar"], len(info.classes), cfg.chance_margin)]
        figures["collapsed"] = bool(figures["uar"]["mean"] is not None and metrics.collapsed(
            figures["uar"]["mean"], len(info.classes), cfg.chance_margin))
        figures["collapsed_partitions"] = chance
        figures["params"] = per[0]["params"]
        if figures["collapsed"]:
            warnings.append(f"{name}: COLLAPSED to chance (UAR {figures['uar']['mean']:.3f}, chance "
                            f"{1 / len(info.classes):.3f}: it predicts the majority class or guesses); "
                            f"its accuracy is not a result")
        models[name] = figures
    gain = {}
    if "fused" in info.models:
        for m in info.modalities:
            gain[m] = {k: spread([p["models"]["fused"][k] - p["models"][m][k] for p in parts], (-1.0, 1.0))
                       for k in ("accuracy", "uar")}
    return {"models": models, "gain": gain, "warnings": warnings}


def evaluate(params: Params, case: str, root: Path = Path(".")) -> None:
    import mlflow

    info = params.cases[case]
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    split = read_json(Path(root) / "data" / "interim" / case / "split.json")
    parts = [evaluate_partition(params, case, p, root) for p in params.partitions]
    result = summarize(params, case, parts)
    for name in info.models:  # what each model costs on a device at FP32 (cost.py; the same in every partition)
        model = load_model(Path(root) / "models" / case / "trained" / f"p{params.partitions[0]}" / f"{name}.pt")
        costs = cost.analyse(model.eval(), {m: params.input_shape(case, m) for m in model.modalities})
        result["models"][name]["fp32_cost"] = {"flash_bytes": costs.flash_bytes(), "peak_ram_bytes": costs.peak_ram_bytes(),
                                               "macs": costs.macs(), "bops": costs.bops()}
    leaky = " (LEAKY: " + ("the given split" if split["strategy"] == "given" else "random split") + ")" \
        if split["leaky"] else ""
    result = {
        "features": file_md5(Path(root) / "data" / "features" / case / "features.npz"),
        "protocol": {"strategy": split["strategy"], "leaky": split["leaky"], "unit": split["unit"],
                     "partitions": len(parts), "confidence": params.evaluate.confidence,
                     "interval": "corrected resampled t (Nadeau & Bengio 2003) over the partitions",
                     "test_samples": [p["test_samples"] for p in parts], "test_units": [p["test_units"] for p in parts]},
        **result,
    }
    y = np.concatenate([p["predictions"][0] for p in parts])
    pred = np.concatenate([p["predictions"][1] for p in parts])
    with outs.file(f"reports/{case}/confusion.png", "wb") as fh:
        confusion_png(y, pred, info.classes, fh,
                      f"{case} {info.models[0]}, test splits of {len(parts)} partitions ({split['strategy']}{leaky})")
    with outs.file(f"reports/{case}/confusion.csv", newline="") as fh:
        confusion_csv(y, pred, info.classes, fh)
    outs.write_json(f"metrics/{case}/evaluate.json", result)
    with outs.directory(f"metrics/{case}/headline/models") as out:   # `dvc metrics show`: one row per model
        for name, m in result["models"].items():
            write_json(out.path(f"{name}.json"), metrics.headline(uar=m["uar"], acc=m["accuracy"], auc=m.get("roc_auc")))
            write_json(out.path(f"{name}-per-subject.json"),
                       metrics.headline(uar=m["subject"]["uar"], acc=m["subject"]["accuracy"], auc=m["subject"].get("roc_auc")))
    with tracking.stage_run("evaluate", case, root):
        mlflow.log_params({"split_strategy": split["strategy"], "leaky": split["leaky"], "partitions": len(parts)})
        mlflow.log_metrics({f"{name}_{k}": v["mean"] for name, m in result["models"].items()
                            for k, v in m.items() if isinstance(v, dict) and v.get("mean") is not None})
        mlflow.log_artifact(str(outs.path(f"reports/{case}/confusion.png")))
    for name, m in result["models"].items():
        ci = m["uar"]["ci"] or [m["uar"]["mean"]] * 2
        log.info("evaluate %s/%s: UAR %.3f [%.3f, %.3f], accuracy %.3f over %d partitions%s%s", case, name,
                 m["uar"]["mean"], ci[0], ci[1], m["accuracy"]["mean"], len(parts), leaky,
                 " COLLAPSED" if m["collapsed"] else "")
    for w in result["warnings"]:
        log.warning("evaluate %s: %s", case, w)


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
