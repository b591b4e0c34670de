"""Stage `benchmark`: latency, throughput, load time, memory, size, accuracy (and power, given a meter) of
every exported artifact, here (`benchmark.runner: local`) or on a Raspberry Pi through a Prefect worker
(`pi`) -> metrics/<case>/benchmark.json."""
import tempfile
from pathlib import Path

from tinym2net import bench, tm2, tracking
from tinym2net.errors import ModelFileError
from tinym2net.io import Outputs, file_md5, ordered_stems
from tinym2net.params import Params
from tinym2net.stage import log, run_stage
from tinym2net.training import Features


OUTPUTS = ["metrics/{case}/benchmark.json"]
PARTITION = 0  # the deployed model is partition 0's


def paths(root: Path, case: str) -> dict[str, Path]:
    """Where this stage reads (the one place its paths are built)."""
    return {"artifacts": root / "models" / case / "artifacts", "export_json": root / "metrics" / case / "export.json",
            "features": root / "data" / "features" / case / "features.npz"}


def artifact_names(p: dict[str, Path]) -> list[str]:
    """The exported variants, in the export stage's order."""
    found = ordered_stems(p["artifacts"], ".tm2", p["export_json"])
    if not found:
        raise ModelFileError(f"{p['artifacts']}: no .tm2 artifacts (run the export stage first)")
    return found


def write_testset(root: Path, case: str, modalities: list[str], path: Path) -> int:
    """The test split's inputs and labels as one npz for the runtime; returns its sample count."""
    data = Features(paths(root, case)["features"], modalities, PARTITION)
    test = data.rows("test")
    bench.save_testset(path, {m: x.numpy() for m, x in data.batch(test, modalities).items()}, data.y[test].numpy())
    return int(len(test))


def benchmark(params: Params, case: str, root: Path = Path(".")) -> None:
    import mlflow

    from tinym2net import pi_runner

    root = Path(root)
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    cfg = params.benchmark.model_dump()
    runner = cfg["runner"]
    settings = bench.settings_from_params(cfg)
    limits = tm2.Limits(**params.export.tm2_limits.model_dump())
    settings["tm2_limits"] = dict(vars(limits))
    if runner == "pi":
        pi_runner.preflight(cfg["pi"])  # no Prefect server or no key: fail before any work
    p = paths(root, case)
    folder = p["artifacts"]
    names = artifact_names(p)
    modalities = list(tm2.read(folder / f"{names[0]}.tm2", limits).header["inputs"])
    uri = tracking.tracking_uri(root)
    results, flow_run, versus = {}, None, None
    with tracking.stage_run("benchmark", case, root) as parent, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({"runner": runner, **{k: v for k, v in settings.items() if k != "power"}})
        testset = Path(tmp) / "testset.npz"
        n_test = write_testset(root, case, modalities, testset)
        if runner == "local":
            if "fp32" in names and len(names) > 1:  # int8 variants against the fp32 artifact, interleaved
                versus = bench.run_isolated(folder / "fp32.tm2", testset, settings,
                                            others={n: folder / f"{n}.tm2" for n in names if n != "fp32"})
                log.info("benchmark %s (%s): batch-1 speed-up over fp32: %s", case, versus["runtime"],
                         ", ".join(f"{n} {v['speedup_vs_fp32']:.2f}x" for n, v in versus["variants"].items()))
            for name in names:
                with tracking.child_run(parent, name) as run:
                    mlflow.log_param("variant", name)
                    results[name] = bench.run_isolated(folder / f"{name}.tm2", testset, settings)
                    pi_runner.log_result(uri, run.info.run_id, results[name])
                log.info("benchmark %s/%s: p50 %.3f ms, %.0f samples/s, accuracy %.3f", case, name,
                         results[name]["latency_ms"]["p50"], results[name]["throughput_sps"], results[name]["accuracy"])
        else:
            pi_cfg = cfg["pi"]
            client = mlflow.MlflowClient(uri)
            mlflow.log_artifact(str(testset))
            variants = {}
            for name in names:
                child = client.create_run(parent.info.experiment_id, run_name=tracking.child_name(parent, name),
                                          tags={"mlflow.parentRunId": parent.info.run_id, "runner": "pi"})
                client.log_param(child.info.run_id, "variant", name)
                client.log_artifact(child.info.run_id, str(folder / f"{name}.tm2"))
                variants[name] = {"run_id": child.info.run_id, "path": f"{name}.tm2",
                                  "sha256": pi_runner.sha256(folder / f"{name}.tm2")}
            status = "FAILED"
            try:
                flow_run = pi_runner.run_on_worker(
                    {"case": case, "tracking_uri": pi_cfg.get("tracking_uri") or uri, "variants": variants,
                     "settings": settings, "testset": {"run_id": parent.info.run_id, "path": testset.name,
                                                       "sha256": pi_runner.sha256(testset)}}, pi_cfg)
                results = {name: pi_runner.read_result(uri, v["run_id"]) for name, v in variants.items()}
                status = "FINISHED"
            finally:
                for v in variants.values():
                    client.set_terminated(v["run_id"], status)
            mlflow.set_tags({"prefect.flow_run_id": flow_run["id"], "prefect.flow_run_name": flow_run["name"]})
    host = next(iter(results.values()))["host"]
    outs.write_json(f"metrics/{case}/benchmark.json",
               {"features": file_md5(p["features"]), "runner": runner, "backend": settings["backend"], "host": host, "test_samples": n_test,
                "settings": settings, **({"flow_run": flow_run} if flow_run else {}),
                **({"versus_fp32": versus} if versus else {}),
                "variants": {name: {k: v for k, v in r.items() if k not in ("host", "bits", "variant", "test_samples")}
                             for name, r in results.items()}})
    log.info("benchmark %s: %d variants on %s (%s); wrote metrics/%s/benchmark.json", case, len(results),
             host["cpu"], runner, case)


if __name__ == "__main__":
    run_stage("benchmark", benchmark)
