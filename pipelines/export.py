"""Stage `export`: every quantized variant as a deployable artifact -> models/<case>/artifacts/<variant>.tm2,
checked against its fake-quantized model on the test split in every runtime backend -> metrics/<case>/export.json."""
from pathlib import Path

import numpy as np

from tinym2net import runtime, tm2, tracking
from tinym2net.config import get, section
from tinym2net.errors import ModelFileError, ParamsError
from tinym2net.export import export as export_model
from tinym2net.export import load_variant, weight_payload_bytes
from tinym2net.io import atomic_dir, ordered_stems, write_json
from tinym2net.quant import packed_size_bytes
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, predict


def paths(root: Path, case: str) -> dict[str, Path]:
    """Where this stage reads and writes (the one place its paths are built)."""
    return {"fp32": root / "models" / case / "fp32" / "fused.pt", "quantized": root / "models" / case / "quantized",
            "quantize_json": root / "metrics" / case / "quantize.json",
            "features": root / "data" / "features" / case / "features.npz",
            "artifacts": root / "models" / case / "artifacts", "metrics": root / "metrics" / case / "export.json"}


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


def export(params: dict, case: str, root: Path = Path(".")) -> None:
    import mlflow

    cfg = section(params, "export")
    min_agreement = get(cfg, "min_agreement")
    if isinstance(min_agreement, bool) or not isinstance(min_agreement, (int, float)) or not 0 <= min_agreement <= 1:
        raise ParamsError(f"params.yaml: export.min_agreement must be a fraction in [0, 1] (got {min_agreement!r})")
    backends = get(cfg, "backends")
    if not isinstance(backends, list) or not backends or any(b not in runtime.BACKENDS for b in backends):
        raise ParamsError(f"params.yaml: export.backends must list runtime backends from {', '.join(runtime.BACKENDS)} "
                          f"(got {backends!r})")
    limits = tm2.Limits.from_dict(get(params, "export.tm2_limits"))
    info = params["cases"][case]
    p = paths(root, case)
    names = variant_names(p, cfg.get("variants"))
    data = None
    results = {}
    with tracking.stage_run("export", case, root) as parent, atomic_dir(p["artifacts"]) as tmp:
        for name in names:
            model, bits = load_variant(p["fp32"], p["quantized"] / f"{name}.pt")
            if data is None:
                data = Features(p["features"], model.modalities)
                test = data.rows("test")
                batches = [{m: x.numpy() for m, x in data.batch(test[i:i + 256], model.modalities).items()}
                           for i in range(0, len(test), 256)]
            path = tmp / f"{name}.tm2"
            size = export_model(model, path, case=case, variant=name, classes=info["classes"],
                                input_shapes=data.input_shapes(), bits=bits)
            expected = predict(model, data, test).argmax(1)                             # (N,)
            got = {}
            for backend in backends:  # each runtime on its own: the deployed one and an independent check
                deployed = runtime.load(path, threads=None, backend=backend, limits=limits)
                got[backend] = np.concatenate([deployed.predict(b) for b in batches])
                agreement = float((got[backend] == expected).mean())
                if agreement < min_agreement:
                    raise ModelFileError(f"models/{case}/artifacts/{name}.tm2: {backend} predictions agree with the "
                                         f"fake-quantized model on {agreement:.1%} of the test split "
                                         f"(export.min_agreement: {min_agreement:g})")
            first = got[backends[0]]
            payload, counted = weight_payload_bytes(model, bits), packed_size_bytes(model, bits or {})
            results[name] = {"size_bytes": size, "size_kib": round(size / 1024, 2), "weights_bytes": payload,
                             "overhead": round(size / counted - 1, 4),
                             "agreement": round(float((first == expected).mean()), 4),
                             "accuracy": round(float((first == data.y[test].numpy()).mean()), 4),
                             "fake_quant_accuracy": round(float((expected == data.y[test].numpy()).mean()), 4),
                             "backends": {b: {"agreement": round(float((g == expected).mean()), 4),
                                              "agreement_with_" + backends[0]: round(float((g == first).mean()), 4)}
                                          for b, g in got.items()}}
            with tracking.child_run(parent, name):
                mlflow.log_params({"variant": name, "format": f"tm2 v{tm2.VERSION}"})
                mlflow.log_metrics({k: v for k, v in results[name].items() if isinstance(v, (int, float))})
                mlflow.log_artifact(str(path))
            log.info("export %s/%s: %.1f KiB (%+.1f%% over the counted size), agreement %s", case, name,
                     size / 1024, 100 * results[name]["overhead"],
                     ", ".join(f"{b} {100 * r['agreement']:.2f}%" for b, r in results[name]["backends"].items()))
    write_json(p["metrics"], {"format": f"tm2 v{tm2.VERSION}", "backends": backends, "test_samples": int(len(test)),
                              "variants": results})
    log.info("export %s: %d artifacts in %s", case, len(results), p["artifacts"])


if __name__ == "__main__":
    run_stage("export", export)
