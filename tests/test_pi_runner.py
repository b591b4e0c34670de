"""The benchmark stage: the local runner, the power hook, and the `pi` runner end to end against a real
Prefect server on loopback (with API authentication and CSRF protection, as `make ui HOST=0.0.0.0`
serves it) with a real process worker (standing in for the Pi), results in metrics/ and MLflow; and the
worker refusing flow parameters the stage did not sign, artifacts whose sha256 the stage did not
compute, another tracking server and a power command from the parameters."""
import json
import os
import secrets
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
from tinym2net import bench, pi_runner
from tinym2net.errors import DataError, ParamsError
from tinym2net.params import merge, validate
from tinym2net.export import export
from tinym2net.model import build
from tinym2net.quant import quantizable_layers, quantize_model

CASE = "battlefield"  # a case of params.yaml (so that the params validate); its data here are this file's
CFG = {"branches": {"a": {"padding": "same", "layers": [["conv", 4, 3], ["sepconv", 6, 3], ["maxpool", 2]], "dense": 8},
                    "b": {"padding": "valid", "layers": [["conv", 4, 3]], "dense": 6}},
       "head": [8], "dropout": 0.0}
SHAPES = {"a": (1, 8, 8), "b": (2, 5, 4)}
CLASSES = ["x", "y", "z"]
FAST = {"warmup": 2, "runs": 20, "throughput_batch": 8, "throughput_runs": 2, "backend": "litert", "threads": 1,
        "compare_rounds": 5, "compare_calls": 5,
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
    features = root / "data" / "features" / CASE
    features.mkdir(parents=True)
    split = np.array([["train"] * 16 + ["test"] * (n - 16)])  # (partitions, N): one partition
    np.savez(features / "features.npz", y=y.numpy(), split=split, subject=np.array(["s"] * n),
             unit=np.array(["u"] * n), group=np.array(["g"] * n), **{f"x_{m}": v.numpy() for m, v in x.items()},
             **{f"idx_{m}": np.arange(n) for m in x})
    identity = {"stat_shape": [1, 1, 1], "mean": [0.0], "std": [1.0]}  # inputs used as they are
    (features / "stats.json").write_text(json.dumps({"partitions": [{m: identity for m in SHAPES}]}))
    with torch.no_grad():
        expected = (qmodel(x).argmax(1) == y).numpy()[16:].mean()
    return root, expected


def stage_params(small_params, **benchmark) -> dict:
    return merge(small_params, {"benchmark": merge(FAST, benchmark)})


def run_local(root, params):
    from pipelines.benchmark import benchmark
    benchmark(validate(params), CASE, root)
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
        assert r["file_bytes"] == (root / "models" / CASE / "artifacts" / f"{name}.tm2").stat().st_size
        assert r["power"] == "not measured"
    assert abs(result["variants"]["mp"]["accuracy"] - expected_accuracy) <= 1 / 32
    assert result["variants"]["mp"]["file_bytes"] < result["variants"]["fp32"]["file_bytes"]
    runs = mlflow.search_runs(experiment_names=[f"tinym2net-{CASE}"], output_format="list")
    mp = next(r for r in runs if r.info.run_name == f"{CASE}/benchmark/mp")
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
def pi(tmp_path_factory):
    """A real Prefect server on loopback requiring a login and CSRF tokens, the MLflow store the device is
    configured with, and the key host and device share: {url, home, auth, uri, key, env(...)}."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    auth = f"pi-test:{secrets.token_urlsafe(16)}"
    env = venv_env(PREFECT_HOME=str(home / "server"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_UI_ENABLED="false", PREFECT_SERVER_API_AUTH_STRING=auth,
                   PREFECT_SERVER_CSRF_PROTECTION_ENABLED="true")
    log = open(home / "server.log", "w")
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: healthy(url), 120, "prefect server", home / "server.log", server)
        key, uri = secrets.token_hex(32), f"sqlite:///{home / 'mlflow.db'}"

        def client_env(name: str, **extra) -> dict:
            """A host's or device's environment: this server with its login, the shared key, no config file."""
            return venv_env(PREFECT_API_URL=url, PREFECT_API_AUTH_STRING=auth, PREFECT_HOME=str(home / name),
                            TINYM2NET_PI_KEY=key, TINYM2NET_PI_CONFIG=str(home / "absent.toml"), **extra)

        yield dict(url=url, home=home, auth=auth, uri=uri, key=key, env=client_env)
    finally:
        stop_process(server)
        log.close()


@pytest.fixture(scope="module")
def device(pi, tmp_path_factory):
    """A process worker of the pool `pi` standing in for the Raspberry Pi, configured with the key and
    its tracking server; yields its log file."""
    path = tmp_path_factory.mktemp("device")
    env = pi["env"]("worker", MLFLOW_TRACKING_URI=pi["uri"], PREFECT_WORKER_QUERY_SECONDS="1",
                    PREFECT_WORKER_PREFETCH_SECONDS="1")
    env.pop("TINYM2NET_POWER_COMMAND", None)
    log = open(path / "worker.log", "w")
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "pi", "--type", "process", "--name", "test-pi"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, cwd=path)
    try:
        yield path / "worker.log"
    finally:
        stop_process(worker)
        log.close()


def run_stage(root: Path, env: dict, timeout: float = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.benchmark", "--case", CASE], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_pi_runner_end_to_end_through_a_process_worker(project, small_params, pi, device):
    root, expected_accuracy = project
    uri = pi["uri"]
    (root / "params.yaml").write_text(yaml.safe_dump(stage_params(
        small_params, runner="pi", pi={"timeout_seconds": 150, "poll_seconds": 1}), sort_keys=False))
    stage = run_stage(root, pi["env"]("client", MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    assert stage.returncode == 0, f"{stage.stderr[-3000:]}\n--- worker ---\n{device.read_text()[-3000:]}"
    result = json.loads((root / "metrics" / CASE / "benchmark.json").read_text())
    assert result["runner"] == "pi" and result["flow_run"]["work_pool"] == "pi"
    assert list(result["variants"]) == ["fp32", "mp"]
    for r in result["variants"].values():
        assert r["latency_ms"]["p50"] > 0 and r["throughput_sps"] > 0 and r["power"] == "not measured"
    assert abs(result["variants"]["mp"]["accuracy"] - expected_accuracy) <= 1 / 32
    # the worker ran the flow: Prefect has a completed run of the deployment on pool `pi`
    flow_run = api(pi, f"/flow_runs/{result['flow_run']['id']}")
    assert flow_run["state"]["type"] == "COMPLETED" and flow_run["work_pool_name"] == "pi"
    assert len(flow_run["parameters"]["signature"]) == 64
    # ... whose job template lets no flow run give the worker a command
    assert "command" not in api(pi, "/work_pools/pi")["base_job_template"]["job_configuration"]
    # ... and logged into each variant's MLflow run, from which the stage read the figures back
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[f"tinym2net-{CASE}"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == f"{CASE}/benchmark")
    assert parent.data.tags["prefect.flow_run_id"] == result["flow_run"]["id"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {f"{CASE}/benchmark/fp32", f"{CASE}/benchmark/mp"}
    for name, child in children.items():
        variant = name.rsplit("/", 1)[1]
        assert child.info.status == "FINISHED"
        assert child.data.metrics["latency_p50_ms"] == result["variants"][variant]["latency_ms"]["p50"]
        assert child.data.params["host.architecture"] == result["host"]["architecture"]
        artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(child.info.run_id)}
        assert {f"{variant}.tm2", "benchmark.json"} <= artifacts


def api(pi: dict, path: str):
    """GET from the Prefect API with the login."""
    import base64
    request = urllib.request.Request(f"{pi['url']}{path}", headers={
        "Accept": "application/json", "Authorization": "Basic " + base64.b64encode(pi["auth"].encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def run_on_device(pi: dict, parameters: dict, timeout: float = 150):
    """Start the `benchmark` flow on the pool `pi` with exactly these parameters, as anyone with the
    Prefect login could; its final state."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: pi["url"], PREFECT_API_AUTH_STRING: pi["auth"]}):
        with get_client(sync_client=True) as client:
            name = pi_runner.deploy(client, "pi", "tinym2net-pi")
        run = run_deployment(name, parameters=parameters, timeout=timeout, as_subflow=False, poll_interval=1)
    assert run.state is not None and run.state.is_final(), run.state
    return run.state


def artifact_run(pi: dict, files: dict[str, Path]) -> tuple[str, Path]:
    """An MLflow run in the device's store holding `files` (name -> path); (run id, its artifact folder)."""
    client = mlflow.MlflowClient(pi["uri"])
    experiment = client.get_experiment_by_name("tinym2net-attack") or client.get_experiment(client.create_experiment(
        "tinym2net-attack", artifact_location=(pi["home"] / "attack-artifacts").as_uri()))
    run = client.create_run(experiment.experiment_id)
    for name, path in files.items():
        client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id, Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))


def test_device_refuses_what_the_stage_did_not_vouch_for(project, pi, device, tmp_path):
    root, _ = project
    marker = tmp_path / "power-command-ran"
    testset = _testset(root, tmp_path)
    fp32, mp = (root / "models" / CASE / "artifacts" / f"{n}.tm2" for n in ("fp32", "mp"))
    run_id, folder = artifact_run(pi, {"mp.tm2": mp, testset.name: testset})
    settings = {**bench.settings_from_params(merge(FAST, {"power_command": None})), "power_command": None}
    parameters = {"case": CASE, "tracking_uri": pi["uri"], "settings": settings,
                  "testset": {"run_id": run_id, "path": testset.name, "sha256": pi_runner.sha256(testset)},
                  "variants": {"mp": {"run_id": run_id, "path": "mp.tm2", "sha256": pi_runner.sha256(mp)}}}

    # 1. Parameters not from the stage (no signature, or one made with another key), with the digest of
    #    the artifact they bring and a power command: the device refuses them before fetching anything.
    foreign = {**parameters, "settings": {**settings, "power_command": f"touch {marker}"}}
    for signature in ("", pi_runner.signature(foreign, secrets.token_hex(32).encode())):
        state = run_on_device(pi, {**foreign, "signature": signature})
        assert state.type.value == "FAILED" and "not signed with this device's key" in state.message, state.message
    assert not marker.exists()

    # 2. Signed by the stage, but the artifact in the store is no longer the one it exported: the
    #    device refuses the file whose sha256 it was not given, and measures nothing.
    os.environ["TINYM2NET_PI_KEY"] = pi["key"]
    try:
        signed = pi_runner.signed(parameters)
    finally:
        del os.environ["TINYM2NET_PI_KEY"]
    (folder / "mp.tm2").write_bytes(fp32.read_bytes())
    state = run_on_device(pi, signed)
    assert state.type.value == "FAILED" and "mp.tm2 fetched from MLflow run" in state.message, state.message
    assert "sha256 mismatch" in state.message
    assert "benchmark.json" not in {a.path for a in mlflow.MlflowClient(pi["uri"]).list_artifacts(run_id)}


def test_device_checks_its_own_configuration(pi, tmp_path, monkeypatch):
    """What the worker checks before any download, as a function (no server needed)."""
    monkeypatch.setenv("TINYM2NET_PI_CONFIG", str(tmp_path / "pi.toml"))
    monkeypatch.delenv("TINYM2NET_PI_KEY", raising=False)
    monkeypatch.delenv("TINYM2NET_POWER_COMMAND", raising=False)
    (tmp_path / "pi.toml").write_text(f'key = "{pi["key"]}"\ntracking_uri = "http://host:5000/"\n'
                                      'power_command = "echo 2.5"\n')
    (tmp_path / "pi.toml").chmod(0o644)
    with pytest.raises(ParamsError, match="readable by other users"):
        pi_runner.local_config()
    (tmp_path / "pi.toml").chmod(0o600)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://host:5000")
    cfg = pi_runner.local_config()
    ref = {"run_id": "0" * 32, "path": "mp.tm2", "sha256": "a" * 64}
    parameters = {"case": CASE, "tracking_uri": "http://host:5000", "testset": ref, "variants": {"mp": ref},
                  "settings": {"power_command": None, "runs": 5}}
    key = pi["key"].encode()
    settings = pi_runner.checked_settings(parameters, pi_runner.signature(parameters, key), cfg)
    assert settings == {"power_command": "echo 2.5", "runs": 5}  # the device's own meter
    for change, message in (({"tracking_uri": "http://elsewhere:5000"}, "not this device's tracking server"),
                            ({"settings": {"power_command": "rm -rf ~", "runs": 5}}, "power_command"),
                            ({"variants": {"mp": {**ref, "path": "../../.bashrc"}}}, "variant 'mp' must be"),
                            ({"testset": {**ref, "sha256": None}}, "testset must be")):
        changed = {**parameters, **change}
        with pytest.raises(DataError, match=message) as err:
            pi_runner.checked_settings(changed, pi_runner.signature(changed, key), cfg)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="not signed"):  # any change after signing
        pi_runner.checked_settings({**parameters, "case": "other"}, pi_runner.signature(parameters, key), cfg)
    monkeypatch.setenv("TINYM2NET_PI_KEY", "short")
    with pytest.raises(ParamsError, match="at least 32 characters"):
        pi_runner.checked_settings(parameters, "", pi_runner.local_config())


def test_pi_runner_without_a_worker_gives_up_in_time(project, small_params, pi, tmp_path):
    root, _ = project
    params = stage_params(small_params, runner="pi", pi={"work_pool": "nobody", "timeout_seconds": 3, "poll_seconds": 1})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = pi["env"]("client", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}",
                    PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    stage = run_stage(root, env, timeout=120)
    assert stage.returncode == 1
    message = stage.stderr.strip().splitlines()[-1]
    assert message.startswith("error: benchmark.runner pi: flow run") and "prefect worker start --pool nobody" in message


def test_pi_runner_without_a_key_fails_before_any_work(project, small_params, pi, tmp_path):
    root, _ = project
    (root / "params.yaml").write_text(yaml.safe_dump(stage_params(small_params, runner="pi"), sort_keys=False))
    env = pi["env"]("client", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'm.db'}",
                    PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    del env["TINYM2NET_PI_KEY"]
    stage = run_stage(root, env, timeout=120)
    assert stage.returncode == 1
    message = stage.stderr.strip().splitlines()[-1]
    assert message.startswith("error: benchmark.runner pi: no key of at least 32 characters"), stage.stderr[-2000:]
    assert not (tmp_path / "m.db").exists()  # nothing logged, nothing deployed
