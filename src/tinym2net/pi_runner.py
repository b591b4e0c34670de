"""Benchmark on a Raspberry Pi: the `benchmark` Prefect flow, run by a process worker on the device.

The benchmark stage (runner `pi`) logs each artifact and the test split into MLflow, deploys this
flow to the work pool (`benchmark.pi.work_pool`, default `pi`) and waits for its run. The worker on the
Pi fetches the artifacts from the MLflow artifact store, checks their digests, measures them with
`bench.py` (in a fresh interpreter per variant) and logs the figures into each variant's MLflow run,
where the stage reads them back. The worker needs `tinym2net[runtime]`, prefect and mlflow-skinny;
nothing here imports torch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger, task

from . import bench
from .errors import DataError, ModelFileError, ParamsError

log = logging.getLogger(__name__)

FLOW_NAME = "benchmark"
ENTRYPOINT = "tinym2net.pi_runner.benchmark"  # a module path: the worker imports the installed package
RESULT_FILE = "benchmark.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def log_result(tracking_uri: str, run_id: str, result: dict) -> None:
    """A variant's figures into its MLflow run: metrics, host params, and the whole result as benchmark.json."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    lat, host, power = result["latency_ms"], result["host"], result["power"]
    metrics = {"size_kib": result["size_kib"], "load_seconds": result["load_seconds"],
               "latency_p50_ms": lat["p50"], "latency_p95_ms": lat["p95"], "latency_p99_ms": lat["p99"],
               "throughput_sps": result["throughput_sps"], "peak_rss_mib": result["peak_rss_mib"],
               "model_rss_mib": result["model_rss_mib"], "accuracy": result["accuracy"]}
    if isinstance(power, dict):
        metrics.update(power_idle_w=power["idle_w"], power_inference_w=power["inference_w"], power_delta_w=power["delta_w"])
    now = int(time.time() * 1000)
    from mlflow.entities import Metric, Param, RunTag
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(f"host.{k}", str(v)) for k, v in host.items() if k != "hostname"],
                     tags=[RunTag("power", "measured" if isinstance(power, dict) else bench.NOT_MEASURED)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / RESULT_FILE
        path.write_text(json.dumps(result, indent=2))
        client.log_artifact(run_id, str(path))


def read_result(tracking_uri: str, run_id: str) -> dict:
    """The benchmark.json a worker logged into `run_id`."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RESULT_FILE, dst_path=tmp,
                                                       tracking_uri=tracking_uri)
        except Exception as exc:
            raise DataError(f"MLflow run {run_id}: no {RESULT_FILE} from the worker ({type(exc).__name__})") from None
        return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------------------
# the flow (runs on the worker)

@task(name="fetch-artifact", retries=2, retry_delay_seconds=5)
def fetch(tracking_uri: str, run_id: str, path: str, dest: str, digest: str | None) -> str:
    """Download one artifact of `run_id` from the MLflow artifact store and check its sha256."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dest,
                                                tracking_uri=tracking_uri)
    if digest and sha256(Path(local)) != digest:
        raise ModelFileError(f"{path} fetched from MLflow run {run_id} differs from the exported file (sha256 mismatch)")
    return local


@task(name="measure")
def measure(artifact: str, testset: str, settings: dict) -> dict:
    return bench.run_isolated(Path(artifact), Path(testset), settings)


@task(name="log-to-mlflow", retries=2, retry_delay_seconds=5)
def record(tracking_uri: str, run_id: str, result: dict) -> None:
    log_result(tracking_uri, run_id, result)


@flow(name=FLOW_NAME, description="Benchmark exported tinym2net artifacts on this worker's machine, log to MLflow.")
def benchmark(case: str, tracking_uri: str, testset: dict, variants: dict, settings: dict) -> dict:
    """Fetch each variant's artifact (`variants`: name -> {run_id, path, sha256}) and the test split
    (`testset`: {run_id, path, sha256}) from MLflow, benchmark them here, log into each variant's run."""
    logger = get_run_logger()
    results = {}
    with tempfile.TemporaryDirectory(prefix="tinym2net-bench-") as tmp:
        test_path = fetch(tracking_uri, testset["run_id"], testset["path"], tmp, testset.get("sha256"))
        for name, v in variants.items():
            artifact = fetch(tracking_uri, v["run_id"], v["path"], tmp, v.get("sha256"))
            results[name] = measure(artifact, test_path, settings)
            record(tracking_uri, v["run_id"], results[name])
            lat = results[name]["latency_ms"]
            logger.info("%s/%s on %s: p50 %.3f ms, accuracy %.3f", case, name, results[name]["host"]["cpu"],
                        lat["p50"], results[name]["accuracy"])
    return {name: {"latency_p50_ms": r["latency_ms"]["p50"], "accuracy": r["accuracy"]} for name, r in results.items()}


# ---------------------------------------------------------------------------------------------
# the stage side: deploy, run, wait

def api_url(pi_cfg: dict) -> str:
    """The Prefect server the worker polls: `benchmark.pi.api_url`, else $PREFECT_API_URL."""
    url = pi_cfg.get("api_url") or os.environ.get("PREFECT_API_URL")
    if not url:
        raise ParamsError("params.yaml: benchmark.runner is pi but no Prefect server is named: set PREFECT_API_URL "
                          "(or benchmark.pi.api_url) to the server the Pi's worker polls")
    return url


def deploy(client, pool: str, name: str) -> str:
    """Create (or update) the deployment of the `benchmark` flow on work pool `pool`; returns `flow/deployment`."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.utilities.callables import parameter_schema
    from prefect.workers.process import ProcessWorker

    try:
        client.read_work_pool(pool)
    except ObjectNotFound:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
            log.info("created Prefect work pool %r (type process)", pool)
        except ObjectAlreadyExists:  # a worker starting at the same moment created it
            pass
    flow_id = client.create_flow_from_name(FLOW_NAME)
    client.create_deployment(flow_id=flow_id, name=name, work_pool_name=pool, entrypoint=ENTRYPOINT, path=None,
                             pull_steps=[], parameter_openapi_schema=parameter_schema(benchmark).model_dump(exclude_unset=True),
                             description="tinym2net benchmark on the device (created by the benchmark stage)")
    return f"{FLOW_NAME}/{name}"


def run_on_worker(parameters: dict, pi_cfg: dict) -> dict:
    """Run the flow through its deployment and wait (bounded by `benchmark.pi.timeout_seconds`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelled

    url, pool, timeout = api_url(pi_cfg), pi_cfg["work_pool"], float(pi_cfg["timeout_seconds"])
    with temporary_settings({PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            if client.api_healthcheck() is not None:
                raise DataError(f"benchmark.runner pi: cannot reach the Prefect server at {url}")
            name = deploy(client, pool, pi_cfg["deployment"])
            log.info("running %s on work pool %r (waiting up to %g s)", name, pool, timeout)
            run = run_deployment(name, parameters=parameters, timeout=timeout, as_subflow=False,
                                 poll_interval=float(pi_cfg.get("poll_seconds", 2)))
            state = run.state
            if state is None or not state.is_final():
                client.set_flow_run_state(run.id, Cancelled(message="the benchmark stage stopped waiting"), force=True)
                started = state is not None and state.type == StateType.RUNNING
                raise DataError(f"benchmark.runner pi: flow run {run.name} is still {state.name if state else 'unknown'} "
                                f"after {timeout:g} s" + ("" if started else
                                f"; no worker took it: is `prefect worker start --pool {pool}` running on the Pi?"))
            if state.type != StateType.COMPLETED:
                raise DataError(f"benchmark.runner pi: flow run {run.name} ended {state.name}: {state.message}")
            log.info("flow run %s completed", run.name)
            return {"id": str(run.id), "name": run.name, "deployment": name, "work_pool": pool}
