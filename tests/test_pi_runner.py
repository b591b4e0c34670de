"""The benchmark stage: the local runner, the power hook, and the `pi` runner end to end against a real
Prefect server on loopback with a real process worker (standing in for the Pi), results in metrics/ and MLflow."""
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from conftest import free_port, stop_process, venv_env
from tinym2net import bench
from tinym2net.config import merge
from tinym2net.errors import ParamsError
from tinym2net.export import export
from tinym2net.model import build
from tinym2net.quant import quantizable_layers, quantize_model

CASE = "demo"
CFG = {"branches": {"a": {"padding": "same", "layers": [["conv", 4, 3], ["sepconv", 6, 3], ["maxpool", 2]], "dense": 8},
                    "b": {"padding": "valid", "layers": [["conv", 4, 3]], "dense": 6}},
       "head": [8], "dropout": 0.0}
SHAPES = {"a": (1, 8, 8), "b": (2, 5, 4)}
CLASSES = ["x", "y", "z"]
FAST = {"warmup": 2, "runs": 20, "throughput_batch": 8, "throughput_runs": 2,
        "power": {"idle_seconds": 0.3, "seconds": 0.3, "interval_seconds": 0.1}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A case as the export stage leaves it: artifacts (fp32, mp) and the features with a test split."""
    root = tmp_path_factory.mktemp("bench-root")
    torch.manual_seed(0)
    model = build(CFG, SHAPES, len(CLASSES)).eval()
    g = torch.Generator().manual_seed(1)
    n = 48
    x = {m: torch.randn(n, *s, generator=g) for m, s in SHAPES.items()}
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    bits = {name: 8 if name.endswith("conv1.conv") else 4 for name in quantizable_layers(model)}
    qmodel = quantize_model(model, bits, [(x, y)])
    for name, (m, b) in {"fp32": (model, None), "mp": (qmodel, bits)}.items():
        export(m, root / "models" / CASE / "artifacts" / f"{name}.tm2", case=CASE, variant=name, classes=CLASSES,
               input_shapes=SHAPES, bits=b)
    (root / "data" / "features" / CASE).mkdir(parents=True)
    split = np.array(["train"] * 16 + ["test"] * (n - 16))
    np.savez(root / "data" / "features" / CASE / "features.npz", y=y.numpy(), split=split,
             subject=np.array(["s"] * n), **{f"x_{m}": v.numpy() for m, v in x.items()},
             **{f"idx_{m}": np.arange(n) for m in x})
    with torch.no_grad():
        expected = (qmodel(x).argmax(1) == y).numpy()[16:].mean()
    return root, expected


def stage_params(small_params, **benchmark) -> dict:
    params = merge(small_params, {"cases": {CASE: {"kind": "video", "modalities": ["a", "b"], "classes": CLASSES}},
                                  "benchmark": merge(FAST, benchmark)})
    return params


def run_local(root, params):
    from pipelines.benchmark import benchmark
    benchmark(params, CASE, root)
    return json.loads((root / "metrics" / CASE / "benchmark.json").read_text())


def test_local_runner_measures_every_artifact(project, small_params):
    root, expected_accuracy = project
    result = run_local(root, stage_params(small_params, runner="local"))
    assert result["runner"] == "local" and list(result["variants"]) == ["fp32", "mp"]
    assert result["host"]["cpu"] and result["host"]["threads"] == 1 and result["host"]["cores"] >= 1
    assert result["backend"] == "litert" and result["host"]["runtime"].startswith("ai-edge-litert")
    versus = result["versus_fp32"]["variants"]  # batch-1 latency against fp32, interleaved in one process
    assert set(versus) == {"fp32", "mp"} and versus["fp32"]["speedup_vs_fp32"] == 1.0
    assert versus["mp"]["q25_us"] <= versus["mp"]["median_us"] <= versus["mp"]["q75_us"] and versus["mp"]["rounds"] == 5
    for name, r in result["variants"].items():
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and lat["runs"] == 20
        assert r["throughput_sps"] > 0 and r["load_seconds"] > 0 and r["peak_rss_mib"] > 10
        assert r["size_bytes"] == (root / "models" / CASE / "artifacts" / f"{name}.tm2").stat().st_size
        assert r["power"] == "not measured"
    assert abs(result["variants"]["mp"]["accuracy"] - expected_accuracy) <= 1 / 32
    assert result["variants"]["mp"]["size_bytes"] < result["variants"]["fp32"]["size_bytes"]
    runs = mlflow.search_runs(experiment_names=[f"tinym2net-{CASE}"], output_format="list")
    mp = next(r for r in runs if r.info.run_name == "mp")
    assert mp.data.metrics["latency_p50_ms"] == result["variants"]["mp"]["latency_ms"]["p50"]
    assert mp.data.tags["power"] == "not measured" and "power_delta_w" not in mp.data.metrics


def test_power_hook_reports_the_meter_difference(project, small_params, tmp_path):
    root, _ = project
    # a "meter" that reads 2.5 W, or 4.0 W while the flag file exists (created once inference starts)
    flag = tmp_path / "busy"
    meter = tmp_path / "meter.py"
    meter.write_text(f"import os\nprint(4.0 if os.path.exists({str(flag)!r}) else 2.5)\n")
    meter_cmd = f"{sys.executable} {meter}"
    settings = bench.settings_from_params(merge(small_params["benchmark"], {**FAST, "power_command": meter_cmd}))
    power = bench.measure_power(bench.PowerMeter(meter_cmd), lambda: flag.touch(), 0.3, 0.3, 0.05)
    assert power["idle_w"] == 2.5 and power["delta_w"] > 0 and power["inferences"] > 0
    flag.unlink()
    result = bench.run(root / "models" / CASE / "artifacts" / "mp.tm2", _testset(root, tmp_path), settings)
    assert result["power"]["idle_w"] == result["power"]["inference_w"] == 2.5  # this meter reads a constant here
    with pytest.raises(ParamsError, match="power_command") as err:
        bench.PowerMeter("echo not-a-number").read()
    assert "\n" not in str(err.value)


def _testset(root: Path, tmp_path: Path) -> Path:
    from pipelines.benchmark import write_testset
    path = tmp_path / "test.npz"
    write_testset(root, CASE, ["a", "b"], path)
    return path


def test_pi_runner_needs_a_prefect_server(project, small_params, monkeypatch):
    root, _ = project
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ParamsError, match="PREFECT_API_URL"):
        run_local(root, stage_params(small_params, runner="pi"))


def wait_for(predicate, timeout: float, what: str, log_path: Path, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready in {timeout} s:\n{log_path.read_text()[-3000:]}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return json.loads(resp.read()) is True
    except OSError:
        return False


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server on loopback; its API URL."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = venv_env(PREFECT_HOME=str(home / "server"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_UI_ENABLED="false")
    log = open(home / "server.log", "w")
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: healthy(url), 120, "prefect server", home / "server.log", server)
        yield url, home
    finally:
        stop_process(server)
        log.close()


def test_pi_runner_end_to_end_through_a_process_worker(project, small_params, prefect_server, tmp_path):
    root, expected_accuracy = project
    url, home = prefect_server
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (root / "params.yaml").write_text(yaml.safe_dump(stage_params(
        small_params, runner="pi", pi={"timeout_seconds": 150, "poll_seconds": 1}), sort_keys=False))
    env = venv_env(PREFECT_API_URL=url, PREFECT_HOME=str(home / "client"), MLFLOW_TRACKING_URI=uri,
                   PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    worker_env = venv_env(PREFECT_API_URL=url, PREFECT_HOME=str(home / "worker"), PREFECT_WORKER_QUERY_SECONDS="1",
                          PREFECT_WORKER_PREFETCH_SECONDS="1")
    worker_env.pop("MLFLOW_TRACKING_URI", None)  # the worker learns the store from the flow's parameters
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "pi", "--type", "process", "--name", "test-pi"],
                              env=worker_env, stdout=worker_log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        stage = subprocess.run([sys.executable, "-m", "pipelines.benchmark", "--case", CASE], cwd=root, env=env,
                               capture_output=True, text=True, timeout=200)
        assert stage.returncode == 0, f"{stage.stderr[-3000:]}\n--- worker ---\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    finally:
        stop_process(worker)
        worker_log.close()
    result = json.loads((root / "metrics" / CASE / "benchmark.json").read_text())
    assert result["runner"] == "pi" and result["flow_run"]["work_pool"] == "pi"
    assert list(result["variants"]) == ["fp32", "mp"]
    for r in result["variants"].values():
        assert r["latency_ms"]["p50"] > 0 and r["throughput_sps"] > 0 and r["power"] == "not measured"
    assert abs(result["variants"]["mp"]["accuracy"] - expected_accuracy) <= 1 / 32
    # the worker ran the flow: Prefect has a completed run of the deployment on pool `pi`
    with urllib.request.urlopen(urllib.request.Request(
            f"{url}/flow_runs/{result['flow_run']['id']}", headers={"Accept": "application/json"}), timeout=10) as resp:
        flow_run = json.loads(resp.read())
    assert flow_run["state"]["type"] == "COMPLETED" and flow_run["work_pool_name"] == "pi"
    # ... and logged into each variant's MLflow run, from which the stage read the figures back
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[f"tinym2net-{CASE}"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == f"benchmark-{CASE}")
    assert parent.data.tags["prefect.flow_run_id"] == result["flow_run"]["id"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"fp32", "mp"}
    for name, child in children.items():
        assert child.info.status == "FINISHED"
        assert child.data.metrics["latency_p50_ms"] == result["variants"][name]["latency_ms"]["p50"]
        assert child.data.params["host.architecture"] == result["host"]["architecture"]
        artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(child.info.run_id)}
        assert {f"{name}.tm2", "benchmark.json"} <= artifacts


def test_pi_runner_without_a_worker_gives_up_in_time(project, small_params, prefect_server, tmp_path):
    root, _ = project
    url, home = prefect_server
    params = stage_params(small_params, runner="pi", pi={"work_pool": "nobody", "timeout_seconds": 3, "poll_seconds": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = venv_env(PREFECT_API_URL=url, PREFECT_HOME=str(home / "client"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}",
                   PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    stage = subprocess.run([sys.executable, "-m", "pipelines.benchmark", "--case", CASE], cwd=root, env=env,
                           capture_output=True, text=True, timeout=120)
    assert stage.returncode == 1
    message = stage.stderr.strip().splitlines()[-1]
    assert message.startswith("error: benchmark.runner pi: flow run") and "prefect worker start --pool nobody" in message
