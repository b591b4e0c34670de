"""Stage `export`: every quantized variant as a deployable artifact -> models/<case>/artifacts/<variant>.tm2,
checked against its fake-quantized model on the test split -> metrics/<case>/export.json."""
from pathlib import Path

import numpy as np

from tinym2net import runtime, tracking
from tinym2net.errors import ModelFileError, ParamsError
from tinym2net.export import export as export_model
from tinym2net.export import load_variant, weight_payload_bytes
from tinym2net.io import Outputs, file_md5, ordered_stems
from tinym2net.params import Params
from tinym2net.quant import packed_size_bytes
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, predict

OUTPUTS = ["models/{case}/artifacts", "metrics/{case}/export.json"]
PARTITION = 0  # the deployed model is partition 0's


def variant_names(root: Path, case: str, wanted) -> list[str]:
    """The variants to export: `export.variants`, or every one the quantize stage wrote (in its order)."""
    qdir = root / "models" / case / "quantized"
    found = ordered_stems(qdir, ".pt", root / "metrics" / case / "quantize.json")
    if not found:
        raise ModelFileError(f"{qdir}: no quantized models (run the quantize stage first)")
    if wanted is None:
        return found
    missing = [v for v in wanted if v not in found]
    if missing:
        raise ParamsError(f"params.yaml: export.variants names {missing[0]!r}, which the quantize stage did not write "
                          f"(choose from {', '.join(found)})")
    return list(wanted)


def export(params: Params, case: str, root: Path = Path(".")) -> None:
    import mlflow

    root = Path(root)
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    min_agreement = params.export.min_agreement
    info = params.cases[case]
    fp32_path = root / "models" / case / "trained" / f"p{PARTITION}" / f"{info.models[0]}.pt"
    names = variant_names(root, case, params.export.variants)
    features = root / "data" / "features" / case / "features.npz"
    data = None
    results = {}
    with tracking.stage_run("export", case, root) as parent, outs.directory(f"models/{case}/artifacts") as folder:
        tmp = folder.root
        for name in names:
            model, bits = load_variant(fp32_path, root / "models" / case / "quantized" / f"{name}.pt")
            if data is None:
                data = Features(features, model.modalities, PARTITION)
                test = data.rows("test")
            path = tmp / f"{name}.tm2"
            size = export_model(model, path, case=case, variant=name, classes=info.classes,
                                input_shapes=data.input_shapes(), bits=bits)
            deployed = runtime.load(path, threads=None)
            expected = predict(model, data, test).argmax(1)                             # (N,)
            got = np.concatenate([deployed.predict({m: x.numpy() for m, x in data.batch(test[i:i + 256], model.modalities).items()})
                                  for i in range(0, len(test), 256)])
            agreement = float((got == expected).mean())
            if agreement < min_agreement:
                raise ModelFileError(f"models/{case}/artifacts/{name}.tm2: predictions agree with the fake-quantized "
                                     f"model on {agreement:.1%} of the test split (export.min_agreement: {min_agreement:g})")
            payload, counted = weight_payload_bytes(model, bits), packed_size_bytes(model, bits or {})
            results[name] = {"size_bytes": size, "size_kib": round(size / 1024, 2), "weights_bytes": payload,
                             "overhead": round(size / counted - 1, 4), "agreement": round(agreement, 4),
                             "accuracy": round(float((got == data.y[test].numpy()).mean()), 4)}
            with tracking.child_run(parent, name):
                mlflow.log_params({"variant": name, "format": f"tm2 v{runtime.VERSION}"})
                mlflow.log_metrics({k: v for k, v in results[name].items() if isinstance(v, (int, float))})
                mlflow.log_artifact(str(path))
            log.info("export %s/%s: %.1f KiB (%+.1f%% over the counted size), agreement %.2f%%", case, name,
                     size / 1024, 100 * results[name]["overhead"], 100 * agreement)
    outs.write_json(f"metrics/{case}/export.json", {"features": file_md5(features), "format": f"tm2 v{runtime.VERSION}",
                                                   "test_samples": int(len(test)), "variants": results})
    log.info("export %s: %d artifacts in models/%s/artifacts", case, len(results), case)


if __name__ == "__main__":
    run_stage("export", export)
