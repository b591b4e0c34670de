"""Stage `export`: every quantized variant of partition 0's model as a deployable artifact ->
models/<case>/artifacts/<variant>.tm2, checked against its fake-quantized model on the test split in every
runtime backend, with the deployed accuracy's bootstrap interval -> metrics/<case>/export.json."""
from pathlib import Path

import numpy as np

from tinym2net import cost, runtime, tm2, tracking
from tinym2net.errors import ModelFileError, ParamsError
from tinym2net.export import export as export_model
from tinym2net.export import load_variant, weight_payload_bytes
from tinym2net.io import Outputs, file_md5, ordered_stems
from tinym2net.metrics import bootstrap
from tinym2net.params import Params
from tinym2net.quant import packed_size_bytes
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, predict

OUTPUTS = ["models/{case}/artifacts", "metrics/{case}/export.json"]
PARTITION = 0  # the deployed model is partition 0's


def paths(root: Path, case: str, primary: str) -> dict[str, Path]:
    """Where this stage reads (the one place its paths are built)."""
    return {"fp32": root / "models" / case / "trained" / f"p{PARTITION}" / f"{primary}.pt",
            "quantized": root / "models" / case / "quantized", "quantize_json": root / "metrics" / case / "quantize.json",
            "features": root / "data" / "features" / case / "features.npz"}


def variant_names(p: dict[str, Path], wanted) -> list[str]:
    """The variants to export: `export.variants`, or every one the quantize stage wrote (in its order)."""
    found = ordered_stems(p["quantized"], ".pt", p["quantize_json"])
    if not found:
        raise ModelFileError(f"{p['quantized']}: no quantized models (run the quantize stage first)")
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
    cfg, info = params.export, params.cases[case]
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    backends, limits = cfg.backends, tm2.Limits(**cfg.tm2_limits.model_dump())
    p = paths(root, case, info.models[0])
    names = variant_names(p, cfg.variants)
    profile = params.profile()
    data, preds = None, {}
    results = {}
    with tracking.stage_run("export", case, root) as parent, outs.directory(f"models/{case}/artifacts") as folder:
        for name in names:
            model, bits = load_variant(p["fp32"], p["quantized"] / f"{name}.pt")
            if data is None:
                data = Features(p["features"], model.modalities, PARTITION)
                test = data.rows("test")
                y = data.y[test].numpy()
                batches = [{m: x.numpy() for m, x in data.batch(test[i:i + 256], model.modalities).items()}
                           for i in range(0, len(test), 256)]
            path = folder.path(f"{name}.tm2")
            size = export_model(model, path, case=case, variant=name, classes=info.classes,
                                input_shapes=data.input_shapes(), bits=bits)
            expected = predict(model, data, test).argmax(1)                             # (N,)
            got = {}
            for backend in backends:  # each runtime on its own: the deployed one and an independent check
                deployed = runtime.load(path, threads=None, backend=backend, limits=limits)
                got[backend] = np.concatenate([deployed.predict(b) for b in batches])
                agreement = float((got[backend] == expected).mean())
                if agreement < cfg.min_agreement:
                    raise ModelFileError(f"models/{case}/artifacts/{name}.tm2: {backend} predictions agree with the "
                                         f"fake-quantized model on {agreement:.1%} of the test split "
                                         f"(export.min_agreement: {cfg.min_agreement:g})")
            first = preds[name] = got[backends[0]]
            costs = cost.from_header(deployed.artifact.header, deployed.artifact.tensors)   # the file's own graph
            storage = profile.activation_storage if profile else "packed"
            device = {"flash_bytes": size, "peak_ram_bytes": costs.peak_ram_bytes(bits, storage),
                      "peak_ram_int8_bytes": costs.peak_ram_bytes(bits, "int8"), "macs": costs.macs(),
                      "bops": costs.bops(bits)}
            if profile:
                device["fits_profile"] = bool(size <= profile.flash_bytes and device["peak_ram_bytes"] <= profile.ram_bytes
                                              and (profile.macs is None or device["macs"] <= profile.macs)
                                              and (profile.bops is None or device["bops"] <= profile.bops))
            payload, counted = weight_payload_bytes(model, bits), packed_size_bytes(model, bits or {})
            results[name] = {"file_bytes": size, "file_kib": round(size / 1024, 2), "weights_bytes": payload,
                             "overhead": round(size / counted - 1, 4),
                             "agreement": round(float((first == expected).mean()), 4),
                             "accuracy": round(float((first == y).mean()), 4),
                             "fake_quant_accuracy": round(float((expected == y).mean()), 4),
                             "backends": {b: {"agreement": round(float((g == expected).mean()), 4),
                                              "agreement_with_" + backends[0]: round(float((g == first).mean()), 4)}
                                          for b, g in got.items()}, **device}
            with tracking.child_run(parent, name):
                mlflow.log_params({"variant": name, "format": f"tm2 v{tm2.VERSION}", "backend": backends[0]})
                mlflow.log_metrics({k: v for k, v in results[name].items()
                                    if isinstance(v, (int, float)) and k != "file_bytes"})
                mlflow.log_artifact(str(path))
            log.info("export %s/%s: %.1f KiB (%+.1f%% over the counted size), agreement %s", case, name,
                     size / 1024, 100 * results[name]["overhead"],
                     ", ".join(f"{b} {100 * r['agreement']:.2f}%" for b, r in results[name]["backends"].items()))
    spread = bootstrap(y, preds, data.unit[test], len(info.classes), resamples=params.evaluate.bootstrap,
                       confidence=params.evaluate.confidence, seed=params.seed.train,
                       reference="fp32" if "fp32" in preds else None)
    for name, r in results.items():
        r["deployed"] = spread[name]   # accuracy and UAR of the artifact, with intervals (and paired to fp32)
    outs.write_json(f"metrics/{case}/export.json", {
        "features": file_md5(p["features"]), "format": f"tm2 v{tm2.VERSION}", "backends": backends,
        "profile": {"name": params.scale.profile, **profile.model_dump()} if profile else None,
        "test_samples": int(len(test)), "variants": results})
    log.info("export %s: %d artifacts in models/%s/artifacts", case, len(results), case)


if __name__ == "__main__":
    run_stage("export", export)
