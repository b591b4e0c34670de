"""Prefect orchestration on loopback: a real Prefect server, the deployments of prefect.yaml, a real
process worker running the pipeline flow on the reduced configuration in a temporary git+DVC
repository (reused stages visibly `Reused`), and the sweep flow's DVC experiments landing in MLflow,
named after their params, with the flow-run link."""
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

import mlflow
import pytest
import yaml

from conftest import free_port, make_dvc_repo, run, stop_process, venv_env

pytestmark = pytest.mark.slow

# Both cases' fetch and featurize (side by side on the task runner), then the covid chain to quantize.
TARGETS = ["featurize@battlefield", "quantize@covid"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def api(url: str, body=None, retries: int = 4):
    """JSON from the Prefect REST API (POST when there is a body); a 503 (SQLite busy) is retried,
    as Prefect's own client does."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == retries:
                raise
            print(f"{url}: 503 {exc.read()[:300]!r}, retrying")
            time.sleep(2 * (attempt + 1))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, repo_root, small_params):
    """A fresh git+DVC repository holding the project (with prefect.yaml) and the reduced params."""
    path = tmp_path_factory.mktemp("repo")
    make_dvc_repo(path, small_params, venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{path / 'mlflow.db'}"))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, repo):
    """A Prefect server on a free loopback port; yields (API URL, environment for its clients)."""
    home = tmp_path_factory.mktemp("prefect")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = venv_env(PREFECT_HOME=str(home), PREFECT_API_URL=url, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_UI_ENABLED="false", PREFECT_WORKER_QUERY_SECONDS="2",
                   MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}", TINYM2NET_MLFLOW_UI="http://127.0.0.1:5999")
    log = open(home / "server.log", "w")
    port = url.split(":")[-1].split("/")[0]
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if api(f"{url}/health") is True:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield url, env
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def deployments(repo, server):
    """The deployments of prefect.yaml, registered from the repository (name -> deployment)."""
    url, env = server
    run(["python", "scripts/deploy.py"], repo, env)  # creates the work pool `local` too
    return {d["name"]: d for d in api(f"{url}/deployments/filter", {"limit": 50, "offset": 0})}


@pytest.fixture(scope="module")
def worker(repo, server, deployments, tmp_path_factory):
    """A process worker of the pool `local`, started and stopped here; yields its log file."""
    _, env = server
    path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = open(path, "w")
    proc = subprocess.Popen(["prefect", "worker", "start", "--pool", "local", "--type", "process"],
                            cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield path
    finally:
        stop_process(proc)
        log.close()


def run_deployment(url: str, deployment: dict, parameters: dict, worker_log, timeout: float) -> dict:
    """Create a flow run of the deployment and wait (at most `timeout` s) for the worker to finish it."""
    flow_run = api(f"{url}/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})
    deadline = time.monotonic() + timeout
    while True:
        flow_run = api(f"{url}/flow_runs/{flow_run['id']}")
        if flow_run["state"]["type"] in TERMINAL:
            break
        assert time.monotonic() < deadline, f"flow run not done in {timeout} s:\n{worker_log.read_text()[-3000:]}"
        time.sleep(2)
    assert flow_run["state"]["type"] == "COMPLETED", \
        f"{flow_run['state']}\n{flow_logs(url, flow_run['id'], until='')[-4000:]}\n{worker_log.read_text()[-3000:]}"
    return flow_run


def flow_logs(url: str, flow_run_id: str, until: str = "done:") -> str:
    """The flow run's log messages, once `until` has arrived (logs are shipped in batches, at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        logs = api(f"{url}/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200,
                                           "offset": 0, "sort": "TIMESTAMP_ASC"})
        text = "\n".join(entry["message"] for entry in logs)
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(1)


def task_states(url: str, flow_run_id: str) -> dict[str, str]:
    """Task run name -> the name of its final state."""
    runs = api(f"{url}/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": 0})
    return {r["name"]: r["state"]["name"] for r in runs}


def compare_link(note: str) -> list[str]:
    """The run ids of the one compare-runs link in an MLflow description."""
    (link,) = [part.split(")")[0] for part in note.split("(") if "/#/compare-runs?" in part]
    return json.loads(urllib.parse.parse_qs(link.split("?", 1)[1])["runs"][0])


def tagged_runs(repo, experiment: str, flow_run_id: str) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")


def test_deployments_are_registered_with_their_schedules(repo, server, deployments):
    url, _ = server
    assert set(deployments) == {"nightly", "weekly-benchmark", "grid"}
    flows = {name: api(f"{url}/flows/{d['flow_id']}")["name"] for name, d in deployments.items()}
    assert flows == {"nightly": "pipeline", "weekly-benchmark": "pipeline", "grid": "sweep"}
    schedules = {name: [s["schedule"] for s in d["schedules"] if s["active"]] for name, d in deployments.items()}
    assert schedules["nightly"] == [{"cron": "0 2 * * *", "timezone": "UTC", "day_or": True}]
    assert schedules["weekly-benchmark"] == [{"cron": "0 4 * * 1", "timezone": "UTC", "day_or": True}]
    assert schedules["grid"] == []
    assert deployments["nightly"]["parameters"] == {"targets": None, "force": False, "fetch_retries": 2}
    assert deployments["weekly-benchmark"]["parameters"] == {"targets": ["benchmark"], "rerun": ["benchmark"]}
    for d in deployments.values():
        assert d["work_pool_name"] == "local"
        assert d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(repo)}}]


def test_server_turns_the_crons_into_scheduled_runs(server, deployments):
    """What the server's scheduler does every minute, asked for now: nightly at 02:00 UTC, weekly
    on Mondays at 04:00 UTC. (prefect 3.8.8 fails here under SQLAlchemy 2.1: see the message.)"""
    url, _ = server
    for name, weekday, hour in (("nightly", None, "02:00:00"), ("weekly-benchmark", 0, "04:00:00")):
        try:  # a 503 (SQLite busy while the server's own scheduler writes) is retried by api()
            api(f"{url}/deployments/{deployments[name]['id']}/schedule", {"min_runs": 3, "max_runs": 3}, retries=8)
        except urllib.error.HTTPError as exc:
            import sqlalchemy
            pytest.fail(f"the Prefect server cannot schedule runs (HTTP {exc.code}: {exc.read()[:300]!r}) with "
                        f"SQLAlchemy {sqlalchemy.__version__}: prefect 3.8.8 needs SQLAlchemy 2.0.x (2.0.54 is pinned)")
        runs = api(f"{url}/flow_runs/filter", {"limit": 10, "offset": 0, "flow_runs": {
            "deployment_id": {"any_": [deployments[name]["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}})
        starts = [datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs]
        assert len(starts) >= 3 and all(t.strftime("%H:%M:%S") == hour for t in starts), starts
        assert weekday is None or all(t.weekday() == weekday for t in starts)


def test_pipeline_deployment_runs_on_a_process_worker(repo, server, deployments, worker):
    url, env = server
    flow_run = run_deployment(url, deployments["nightly"], {"targets": TARGETS}, worker, timeout=420)
    logs = flow_logs(url, flow_run["id"])
    # Independent stages of a step ran side by side, then DVC recorded them; the rest through dvc repro.
    for case in ("covid", "battlefield"):
        assert f"fetch@{case}: ran its command beside the other stages" in logs
        assert f"featurize@{case}: ran its command beside the other stages" in logs
    assert "dvc commit recorded fetch@covid, fetch@battlefield in dvc.lock" in logs
    for stage in ("slice@battlefield", "train@covid-0", "sensitivity@covid", "ilp@covid", "quantize@covid"):
        assert f"{stage}: DVC ran the stage" in logs
    assert "train@battlefield" not in logs and "report:" not in logs
    # DVC is the source of truth: it sees every target and its upstream stages as up to date.
    assert "up to date" in run(["dvc", "status", "--with-deps", *TARGETS], repo, env)
    assert {"fetch@battlefield", "featurize@battlefield", "quantize@covid"} <= set(
        yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert set(task_states(url, flow_run["id"]).values()) == {"Completed"}  # every stage ran
    # Each stage's MLflow run carries the flow-run id and links to the flow run; the flow run's artifact links to them.
    runs = {r.info.run_name: r for r in tagged_runs(repo, "tinym2net-covid", flow_run["id"])}
    assert {"covid-0/train", "covid/quantize", "covid/quantize/mp", "covid-0/train/fused"} <= set(runs)
    prefect_ui = url.removesuffix("/api")
    train, quantize = runs["covid-0/train"], runs["covid/quantize"]
    assert f"]({prefect_ui}/runs/flow-run/{flow_run['id']})" in train.data.tags["mlflow.note.content"]
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == quantize.info.run_id]
    assert sorted(compare_link(quantize.data.tags["mlflow.note.content"])) == sorted(r.info.run_id for r in children)
    artifacts = api(f"{url}/artifacts/filter", {"limit": 10, "offset": 0,
                                                "artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    markdown = next(a["data"] for a in artifacts if a["key"] == "pipeline-run")
    assert f"http://127.0.0.1:5999/#/experiments/{train.info.experiment_id}/runs/{train.info.run_id}" in markdown
    assert "| covid | mp (quantized) |" in markdown and "| `quantize@covid` | **ran** | DVC ran the stage |" in markdown


def test_second_run_reuses_what_did_not_change(repo, server, deployments, worker):
    """Nothing changed: DVC reuses every stage but the one named in `rerun`."""
    url, _ = server
    flow_run = run_deployment(url, deployments["nightly"], {"targets": ["ilp@covid"], "rerun": ["ilp"]},
                              worker, timeout=240)
    logs = flow_logs(url, flow_run["id"])
    for stage in ("fetch@covid", "slice@covid", "featurize@covid", "scale@covid", "train@covid-0", "sensitivity@covid",
                  "latency@covid"):
        assert f"{stage}: unchanged, DVC reused its outputs" in logs
    assert "ilp@covid: DVC ran the stage" in logs and "done: 1 stages ran (ilp@covid), 7 reused" in logs
    assert tagged_runs(repo, "tinym2net-covid", flow_run["id"]) == []  # no stage here logs to MLflow
    # In the Prefect UI a reused stage is not a plain `Completed`, in the task list and in the run's artifact.
    states = task_states(url, flow_run["id"])
    assert states == {"fetch@covid": "Reused", "slice@covid": "Reused", "featurize@covid": "Reused",
                      "scale@covid": "Reused", "train@covid-0": "Reused", "sensitivity@covid": "Reused", "latency@covid": "Reused",
                      "ilp@covid": "Completed"}
    artifacts = api(f"{url}/artifacts/filter", {"limit": 10, "offset": 0,
                                                "artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    markdown = next(a["data"] for a in artifacts if a["key"] == "pipeline-run")
    assert "| `train@covid-0` | Reused | unchanged, DVC reused its outputs |" in markdown
    assert "| `ilp@covid` | **ran** |" in markdown


def test_sweep_logs_each_dvc_experiment_to_mlflow(repo, server, deployments, worker):
    url, env = server
    # The baseline commit: dvc.lock, plus the outputs DVC does not cache (`cache: false`), which git
    # must carry for an experiment's copy to have them (the project's .gitignore leaves models/*/ out).
    run(["git", "add", "-A"], repo, env)
    run(["git", "add", "-f", "models/covid/sensitivity.json", "models/covid/bits.json"], repo, env)
    run(["git", "commit", "-q", "-m", "baseline: pipeline reproduced"], repo, env)
    grid = {"ilp.size_lambda": [0.3, 0.6], "quantize.qat.epochs": [0]}
    flow_run = run_deployment(url, deployments["grid"], {"grid": grid, "targets": ["quantize@covid"], "jobs": 2,
                                                         "timeout_minutes": 6}, worker, timeout=420)
    runs = tagged_runs(repo, "tinym2net-sweep", flow_run["id"])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    # named after their params, holding only the targeted case's metrics, compared from the parent
    assert {r.info.run_name for r in children} == {"size_lambda=0.3 epochs=0", "size_lambda=0.6 epochs=0"}
    assert all(k.startswith("covid/") for r in children for k in r.data.metrics)
    assert sorted(compare_link(parent.data.tags["mlflow.note.content"])) == sorted(r.info.run_id for r in children)
    assert all(f"/runs/flow-run/{flow_run['id']})" in r.data.tags["mlflow.note.content"] for r in runs)
    assert {r.data.params["ilp.size_lambda"] for r in children} == {"0.3", "0.6"}
    assert {r.data.params["quantize.qat.epochs"] for r in children} == {"0"}
    exp_revs = {rev["rev"] for base in json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
                for exp in base.get("experiments") or [] for rev in exp["revs"]}
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["dvc.exp_rev"] in exp_revs
        # The experiment's own result (its headline metrics, as `dvc metrics show` lists them): the
        # mixed-precision variant allocated at the swept lambda.
        assert {"covid/headline/variants/mp-qat/kib", "covid/headline/variants/mp-qat/uar"} <= set(child.data.metrics)
    small, large = sorted(children, key=lambda r: float(r.data.params["ilp.size_lambda"]))
    assert small.data.metrics["covid/headline/variants/mp-qat/kib"] <= large.data.metrics["covid/headline/variants/mp-qat/kib"]
    # The stages that ran inside DVC's temporary experiment copies were tagged with the flow run too.
    stage_runs = [r for r in tagged_runs(repo, "tinym2net-covid", flow_run["id"]) if r.info.run_name == "covid/quantize"]
    assert len(stage_runs) == 2


def test_run_artifacts_and_sweep_runs_hold_only_the_targeted_cases(tmp_path):
    from pipelines.flows import flat_metrics, point_name, read_metrics, stage_cases

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"cases": {"covid": {}, "battlefield": {}, "my-case": {}}}))
    assert stage_cases(["fetch@covid", "train@battlefield-1", "report"], tmp_path) == {"covid", "battlefield"}
    assert stage_cases(["train@my-case-0", "fetch@my-case"], tmp_path) == {"my-case"}

    for case in ("covid", "battlefield"):
        (tmp_path / "metrics" / case).mkdir(parents=True)
        (tmp_path / "metrics" / case / "quantize.json").write_text(json.dumps({"variants": {"mp": {"accuracy": 0.9}}}))
    assert set(read_metrics(tmp_path, {"covid"})) == {"covid"}
    shown = {f"metrics/{case}/quantize.json": {"data": {"variants": {"mp": {"accuracy": 0.9, "bits": {"a": 4}}}}}
             for case in ("covid", "battlefield")}
    assert flat_metrics(shown, {"battlefield"}) == {"battlefield/quantize/variants/mp/accuracy": 0.9}
    assert len(flat_metrics(shown)) == 2
    # names from params: each key by its shortest unique suffix, so two points never share a name
    assert point_name({"ilp.bit_choices": [4, 8], "quantize.bit_choices": [2], "ilp.size_lambda": 0.5}) == \
        "ilp.bit_choices=[4,8] quantize.bit_choices=[2] size_lambda=0.5"
