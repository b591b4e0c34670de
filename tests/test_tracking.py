"""MLflow tracking on a real SQLite store: run names, descriptions and links, and a stage that fails,
is terminated or is killed never leaves its runs RUNNING."""
import json
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import mlflow
import pytest

from conftest import venv_env
from tinym2net import tracking

# A stage as pipelines/<stage>.py runs it: a parent run, two child runs, then `BEHAVIOUR`.
STAGE = """
import os, sys, time
from pathlib import Path
from tinym2net import tracking
with tracking.stage_run("quantize", "demo", Path(sys.argv[1])) as parent:
    for name in ("fp32", "mp"):
        with tracking.child_run(parent, name):
            pass
    print("started", flush=True)
    if sys.argv[2] == "raise":
        raise RuntimeError("the stage failed")
    time.sleep(60)
"""


def all_runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("tinym2net-demo").experiment_id])


def runs_by_name(uri: str) -> dict:
    return {r.info.run_name: r for r in all_runs(uri)}


def parent_statuses(uri: str) -> list[str]:
    return sorted(r.info.status for r in all_runs(uri) if r.info.run_name == "demo/quantize")


def start_stage(tmp_path: Path, behaviour: str, uri: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STAGE, str(tmp_path), behaviour], env=venv_env(MLFLOW_TRACKING_URI=uri),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started", proc.stderr.read()[-3000:]
    return proc


def test_runs_are_named_described_and_linked(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(tracking.MLFLOW_UI_ENV, "http://mlflow.example:5000")
    monkeypatch.setenv(tracking.FLOW_RUN_ENV, "1234-abcd")
    monkeypatch.setenv(tracking.FLOW_RUN_URL_ENV, "http://prefect.example:4200/runs/flow-run/1234-abcd")
    with tracking.stage_run("quantize", "demo", tmp_path) as parent:
        for name in ("fp32", "w8a8", "mp"):
            with tracking.child_run(parent, name):
                mlflow.log_metric("accuracy", 0.5)
    runs = runs_by_name(uri)
    assert set(runs) == {"demo/quantize", "demo/quantize/fp32", "demo/quantize/w8a8", "demo/quantize/mp"}
    parent = runs["demo/quantize"]
    children = [r for n, r in runs.items() if n != "demo/quantize"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.data.tags["prefect.flow_run_id"] == "1234-abcd" for r in runs.values())
    note = parent.data.tags["mlflow.note.content"]
    assert "[Prefect flow run 1234-abcd](http://prefect.example:4200/runs/flow-run/1234-abcd)" in note
    # exactly one compare link, naming every child (in the order they ran) and nothing else
    (link,) = [part for part in note.split("(") if part.startswith("http://mlflow.example:5000/#/compare-runs?")]
    query = urllib.parse.parse_qs(link.rstrip(")").split("?", 1)[1])
    experiment_id = parent.info.experiment_id
    assert json.loads(query["runs"][0]) == [runs[f"demo/quantize/{n}"].info.run_id for n in ("fp32", "w8a8", "mp")]
    assert json.loads(query["experiments"][0]) == [experiment_id]
    assert f"/#/experiments/{experiment_id}/runs/{parent.info.run_id}" in runs["demo/quantize/mp"].data.tags["mlflow.note.content"]
    experiment = mlflow.MlflowClient(uri).get_experiment(experiment_id)
    assert "`demo/quantize/mp`" in experiment.tags["mlflow.note.content"]


def test_a_stage_that_raises_ends_its_runs_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_stage(tmp_path, "raise", uri)
    assert proc.wait(timeout=60) == 1 and "the stage failed" in proc.stderr.read()
    runs = runs_by_name(uri)
    assert runs["demo/quantize"].info.status == "FAILED"
    assert {r.info.status for n, r in runs.items() if n != "demo/quantize"} == {"FINISHED"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_stage_ends_its_run_failed(tmp_path, sig):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_stage(tmp_path, "sleep", uri)
    assert runs_by_name(uri)["demo/quantize"].info.status == "RUNNING"
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig
    assert runs_by_name(uri)["demo/quantize"].info.status == "FAILED"


def test_runs_of_a_killed_stage_are_ended_failed_by_the_next_stage(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_stage(tmp_path, "sleep", uri)
    proc.kill()  # SIGKILL: nothing in the process runs, its run stays RUNNING ...
    proc.wait(timeout=30)
    assert runs_by_name(uri)["demo/quantize"].info.status == "RUNNING"
    alive = start_stage(tmp_path, "sleep", uri)  # ... until the next stage of the case starts
    try:
        assert parent_statuses(uri) == ["FAILED", "RUNNING"]  # the live stage's own run is left alone
    finally:
        alive.terminate()
        alive.wait(timeout=60)
    assert parent_statuses(uri) == ["FAILED", "FAILED"]
