"""Benchmark on a Raspberry Pi: the `benchmark` Prefect flow, run by a process worker on the device.

The benchmark stage (runner `pi`) logs each artifact and the test split into MLflow, deploys this
flow to the work pool (`benchmark.pi.work_pool`, default `pi`) and waits for its run. The worker on the
Pi fetches the artifacts from the MLflow artifact store, checks their digests, measures them with
`bench.py` (in a fresh interpreter per variant) and logs the figures into each variant's MLflow run,
where the stage reads them back. The worker needs `tinym2net[runtime]`, prefect and mlflow-skinny;
nothing here imports torch.

The device trusts nothing in the flow's parameters that the stage did not vouch for: the stage signs
them (HMAC-SHA256) with a key that the host and the device share in their own configuration
(`~/.config/tinym2net/pi.toml` or the environment), so the sha256 of every artifact is the one the
stage computed; artifacts come only from the tracking server the device is configured with; and the
power meter's command is the device's own, never a parameter.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import time
import tomllib
from pathlib import Path

from prefect import flow, get_run_logger, task

from . import bench
from .errors import DataError, ModelFileError, ParamsError

log = logging.getLogger(__name__)

FLOW_NAME = "benchmark"
ENTRYPOINT = "tinym2net.pi_runner.benchmark"  # a module path: the worker imports the installed package
RESULT_FILE = "benchmark.json"

CONFIG_ENV = "TINYM2NET_PI_CONFIG"              # the configuration file (default ~/.config/tinym2net/pi.toml)
DEFAULT_CONFIG = "~/.config/tinym2net/pi.toml"
ENV_KEYS = {"key": "TINYM2NET_PI_KEY", "tracking_uri": "MLFLOW_TRACKING_URI",
            "power_command": "TINYM2NET_POWER_COMMAND"}  # each overrides the file's key of that name
MIN_KEY_CHARS = 32
SIGNED = ("case", "tracking_uri", "testset", "variants", "settings")  # every parameter but the signature
CONFIG_MAX_BYTES = 64 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# this machine's configuration and the signature of the flow's parameters

def local_config() -> dict[str, str]:
    """This machine's Pi-runner settings (`key`, `tracking_uri`, `power_command`): the TOML file named
    by $TINYM2NET_PI_CONFIG (default ~/.config/tinym2net/pi.toml, which must be private: it holds the
    key), each overridden by its environment variable (ENV_KEYS)."""
    path = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()
    cfg: dict = {}
    if path.is_file():
        if path.stat().st_mode & 0o077:
            raise ParamsError(f"{path}: readable by other users, and it holds the key: chmod 600 {path}")
        if path.stat().st_size > CONFIG_MAX_BYTES:
            raise ParamsError(f"{path}: over {CONFIG_MAX_BYTES // 1024} KiB, not a Pi-runner configuration")
        try:
            cfg = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ParamsError(f"{path}: not valid TOML ({exc})") from None
        unknown = sorted(set(cfg) - set(ENV_KEYS))
        if unknown:
            raise ParamsError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(ENV_KEYS)})")
        bad = [k for k, v in cfg.items() if not isinstance(v, str)]
        if bad:
            raise ParamsError(f"{path}: {bad[0]} must be a string")
    cfg |= {k: os.environ[env] for k, env in ENV_KEYS.items() if os.environ.get(env)}
    return cfg


def shared_key(cfg: dict[str, str]) -> bytes:
    key = cfg.get("key") or ""
    if len(key) < MIN_KEY_CHARS:
        where = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
        raise ParamsError(f"benchmark.runner pi: no key of at least {MIN_KEY_CHARS} characters in {where} (`key`) or "
                          f"${ENV_KEYS['key']}; give the host and the Pi the same one, e.g. from "
                          "`python -c 'import secrets; print(secrets.token_hex(32))'`")
    return key.encode()


def signature(parameters: dict, key: bytes) -> str:
    """HMAC-SHA256 of the signed parameters as canonical JSON."""
    payload = json.dumps({k: parameters.get(k) for k in SIGNED}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def check_artifact(what: str, ref) -> None:
    """An artifact reference {run_id, path, sha256}: an MLflow run id, a plain file name, a sha256."""
    if not (isinstance(ref, dict) and isinstance(ref.get("run_id"), str) and re.fullmatch(r"[0-9a-f]{32}", ref["run_id"])
            and isinstance(ref.get("path"), str) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", ref["path"])
            and isinstance(ref.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", ref["sha256"])):
        raise DataError(f"benchmark flow: {what} must be {{run_id, path (a file name), sha256}}: refused")


def checked_settings(parameters: dict, given: str, cfg: dict[str, str]) -> dict:
    """Refuse parameters the benchmark stage did not sign with this device's key, from another
    tracking server than the device's, or naming a power command; the settings to measure with
    (the power command from the device's own configuration)."""
    if not hmac.compare_digest(signature(parameters, shared_key(cfg)), given or ""):
        raise DataError("benchmark flow: its parameters are not signed with this device's key (the benchmark stage "
                        "signs them with the key it shares with the device): refused")
    configured = (cfg.get("tracking_uri") or "").rstrip("/")
    if not configured:
        raise ParamsError(f"benchmark flow: this device names no MLflow tracking server (`tracking_uri` in "
                          f"{os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG} or ${ENV_KEYS['tracking_uri']})")
    if str(parameters["tracking_uri"]).rstrip("/") != configured:
        raise DataError(f"benchmark flow: artifacts from {parameters['tracking_uri']}, not this device's tracking "
                        f"server {configured}: refused")
    for name, ref in {"testset": parameters["testset"], **{f"variant {k!r}": v for k, v in parameters["variants"].items()}}.items():
        check_artifact(name, ref)
    settings = dict(parameters["settings"])
    if settings.get("power_command"):
        raise DataError("benchmark flow: a power_command in the flow's parameters: refused (the device's own "
                        f"configuration names it: `power_command` in its pi.toml or ${ENV_KEYS['power_command']})")
    settings["power_command"] = cfg.get("power_command")
    return settings


def log_result(tracking_uri: str, run_id: str, result: dict) -> None:
    """A variant's figures into its MLflow run: metrics, host params, and the whole result as benchmark.json."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    lat, host, power = result["latency_ms"], result["host"], result["power"]
    metrics = {"file_kib": result["file_kib"], "load_seconds": result["load_seconds"],
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
def download(tracking_uri: str, run_id: str, path: str, dest: str) -> str:
    """Download one artifact of `run_id` from the MLflow artifact store."""
    import mlflow

    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dest,
                                               tracking_uri=tracking_uri)


def fetch(tracking_uri: str, ref: dict, dest: str) -> str:
    """An artifact ({run_id, path, sha256}) downloaded into `dest`, if it has the sha256 the stage computed."""
    local = download(tracking_uri, ref["run_id"], ref["path"], dest)
    if sha256(Path(local)) != ref["sha256"]:
        Path(local).unlink()
        raise ModelFileError(f"{ref['path']} fetched from MLflow run {ref['run_id']} is not the file the benchmark "
                             "stage exported (sha256 mismatch): refused")
    return local


@task(name="measure")
def measure(artifact: str, testset: str, settings: dict) -> dict:
    return bench.run_isolated(Path(artifact), Path(testset), settings)


@task(name="log-to-mlflow", retries=2, retry_delay_seconds=5)
def record(tracking_uri: str, run_id: str, result: dict) -> None:
    log_result(tracking_uri, run_id, result)


@flow(name=FLOW_NAME, description="Benchmark exported tinym2net artifacts on this worker's machine, log to MLflow.")
def benchmark(case: str, tracking_uri: str, testset: dict, variants: dict, settings: dict, signature: str = "") -> dict:
    """Fetch each variant's artifact (`variants`: name -> {run_id, path, sha256}) and the test split
    (`testset`: {run_id, path, sha256}) from MLflow, benchmark them here, log into each variant's run;
    only if the benchmark stage signed these parameters with the key this device is configured with."""
    logger = get_run_logger()
    settings = checked_settings(dict(case=case, tracking_uri=tracking_uri, testset=testset, variants=variants,
                                     settings=settings), signature, local_config())
    results = {}
    with tempfile.TemporaryDirectory(prefix="tinym2net-bench-") as tmp:
        test_path = fetch(tracking_uri, testset, tmp)
        for name, v in variants.items():
            artifact = fetch(tracking_uri, v, tmp)
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


def preflight(pi_cfg: dict) -> None:
    """Fail before any work without a Prefect server to name or a key to sign with."""
    api_url(pi_cfg)
    shared_key(local_config())


def deploy(client, pool: str, name: str) -> str:
    """Create (or update) the deployment of the `benchmark` flow on work pool `pool` (a process pool whose
    job template no flow run can change, `workpool.py`); returns `flow/deployment`."""
    from prefect.utilities.callables import parameter_schema

    from . import workpool

    workpool.ensure(client, pool)
    flow_id = client.create_flow_from_name(FLOW_NAME)
    client.create_deployment(flow_id=flow_id, name=name, work_pool_name=pool, entrypoint=ENTRYPOINT, path=None,
                             pull_steps=[], parameter_openapi_schema=parameter_schema(benchmark).model_dump(exclude_unset=True),
                             description="tinym2net benchmark on the device (created by the benchmark stage)")
    return f"{FLOW_NAME}/{name}"


def signed(parameters: dict) -> dict:
    """The flow's parameters without a power command (the device names its own), signed with this
    machine's key."""
    settings = parameters["settings"]
    if settings.get("power_command"):
        log.warning("benchmark.power_command is not sent to the Pi: set `power_command` in the device's pi.toml "
                    "(or $%s there)", ENV_KEYS["power_command"])
    parameters = {**parameters, "settings": {**settings, "power_command": None}}
    return parameters | {"signature": signature(parameters, shared_key(local_config()))}


def run_on_worker(parameters: dict, pi_cfg: dict) -> dict:
    """Run the flow through its deployment with `parameters`, signed, and wait (bounded by
    `benchmark.pi.timeout_seconds`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelled

    url, pool, timeout = api_url(pi_cfg), pi_cfg["work_pool"], float(pi_cfg["timeout_seconds"])
    parameters = signed(parameters)
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
