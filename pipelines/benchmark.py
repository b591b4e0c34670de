"""Stage `benchmark`: latency, throughput, load time, memory, size, accuracy (and power, given a meter) of
every exported artifact, here (`benchmark.runner: local`) or on a Raspberry Pi through a Prefect worker
(`pi`) -> metrics/<case>/benchmark.json."""
import tempfile
from pathlib import Path

from tinym2net import bench, tracking
from tinym2net.errors import ModelFileError
from tinym2net.io import Outputs, file_md5, ordered_stems
from tinym2net.params import Params
from tinym2net.stage import log, run_stage
from tinym2net.training import Features

OUTPUTS = ["metrics/{case}/benchmark.json"]
PARTITION = 0  # the deployed model is partition 0's


def artifact_names(root: Path, case: str) -> list[str]:
    """The exported variants, in the export stage's order."""
    folder = root / "models" / case / "artifacts"
    found = ordered_stems(folder, ".tm2", root / "metrics" / case / "export.json")
    if not found:
        raise ModelFileError(f"{folder}: no .tm2 artifacts (run the export stage first)")
    return found


def write_testset(root: Path, case: str, modalities: list[str], path: Path) -> int:
    """The test split's inputs and labels as one npz for the runtime; returns its sample count."""
    data = Features(root / "data" / "features" / case / "features.npz", modalities, PARTITION)
    test = data.rows("test")
    bench.save_testset(path, {m: x.numpy() for m, x in data.batch(test, modalities).items()}, data.y[test].numpy())
    return int(len(test))


def benchmark(params: Params, case: str, root: Path = Path(".")) -> None:
    import mlflow

    from tinym2net import pi_runner, runtime

    root = Path(root)
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    cfg = params.benchmark.model_dump()
    runner = cfg["runner"]
    settings = bench.settings_from_params(cfg)
    if runner == "pi":
        pi_runner.preflight(cfg["pi"])  # no Prefect server or no key: fail before any work
    folder = root / "models" / case / "artifacts"
    names = artifact_names(root, case)
    modalities = list(runtime.read_artifact(folder / f"{names[0]}.tm2").header["inputs"])
    uri = tracking.tracking_uri(root)
    results, flow_run = {}, None
    with tracking.stage_run("benchmark", case, root) as parent, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({"runner": runner, **{k: v for k, v in settings.items() if k != "power"}})
        testset = Path(tmp) / "testset.npz"
        n_test = write_testset(root, case, modalities, testset)
        if runner == "local":
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
               {"features": file_md5(root / "data" / "features" / case / "features.npz"), "runner": runner, "host": host, "test_samples": n_test, "settings": settings,
                **({"flow_run": flow_run} if flow_run else {}),
                "variants": {name: {k: v for k, v in r.items() if k not in ("host", "bits", "variant", "test_samples")}
                             for name, r in results.items()}})
    log.info("benchmark %s: %d variants on %s (%s); wrote metrics/%s/benchmark.json", case, len(results),
             host["cpu"], runner, case)


if __name__ == "__main__":
    run_stage("benchmark", benchmark)
