"""Stage `evaluate`: test-split metrics of every model -> metrics/<case>/evaluate.json, confusion matrix."""
from pathlib import Path

from tinym2net import tracking
from tinym2net.io import atomic_dir, read_json, write_json
from tinym2net.metrics import classification_metrics
from tinym2net.plots import confusion_csv, confusion_png
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model, predict


def evaluate(params: dict, case: str, root: Path = Path(".")) -> None:
    import mlflow

    info = params["cases"][case]
    classes = info["classes"]
    data = Features(root / "data" / "features" / case / "features.npz", info["modalities"])
    split = read_json(root / "data" / "interim" / case / "split.json")
    test = data.rows("test")
    y = data.y[test].numpy()
    models = {}
    for name in ["fused", *info["modalities"]]:
        model = load_model(root / "models" / case / "fp32" / f"{name}.pt")
        prob = predict(model, data, test, params["evaluate"]["batch_size"])
        models[name] = {**classification_metrics(y, prob), "params": model.param_count()}
        if name == "fused":
            fused_pred = prob.argmax(1)
    leaky = " (LEAKY: random split)" if split["leaky"] else ""
    result = {
        "split": {"strategy": split["strategy"], "leaky": split["leaky"], "test_samples": int(len(test)),
                  "test_subjects": int(len(set(data.subject[test].tolist())))},
        "models": models,
        "fused_gain": {m: round(models["fused"]["accuracy"] - models[m]["accuracy"], 4) for m in info["modalities"]},
    }
    out = root / "reports" / case
    with atomic_dir(out) as tmp:
        confusion_png(y, fused_pred, classes, tmp / "confusion.png",
                      f"{case} fused, test split ({split['strategy']}{leaky})")
        confusion_csv(y, fused_pred, classes, tmp / "confusion.csv")
    write_json(root / "metrics" / case / "evaluate.json", result)
    with tracking.stage_run("evaluate", case, root):
        mlflow.log_params({"split_strategy": split["strategy"], "leaky": split["leaky"]})
        mlflow.log_metrics({f"{name}_{k}": v for name, m in models.items() for k, v in m.items() if v is not None})
        mlflow.log_artifact(str(out / "confusion.png"))
    for name, m in models.items():
        log.info("evaluate %s/%s: accuracy %.3f, UAR %.3f, macro-F1 %.3f%s", case, name, m["accuracy"], m["uar"],
                 m["macro_f1"], leaky)


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
