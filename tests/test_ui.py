"""`make ui` on a fresh copy of the project brings up the Prefect server (with the deployments of
prefect.yaml and a worker) and the MLflow UI on loopback, and Ctrl-C (SIGTERM) stops all of them."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.slow

PROJECT_FILES = ["Makefile", "dvc.yaml", "params.yaml", "pipelines", "src", "pyproject.toml", "constraints.txt",
                 ".dvcignore", ".gitignore", "prefect.yaml", "scripts"]


def get_json(url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def clone(tmp_path, repo_root) -> Path:
    """The project's files in a new directory, with the test interpreter's environment as its .venv
    (a fresh clone plus `make setup`, without the download)."""
    path = tmp_path / "tinym2net"
    path.mkdir()
    for name in PROJECT_FILES:
        src = repo_root / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, path / name)
    (path / ".venv").symlink_to(Path(sys.executable).parents[1])
    return path


def test_make_ui_serves_prefect_deployments_and_mlflow(clone):
    prefect_port, mlflow_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"HOST": "127.0.0.1", "PREFECT_PORT": str(prefect_port), "MLFLOW_PORT": str(mlflow_port)}
    out = open(clone.parent / "make-ui.log", "w")
    # `-o .venv/.installed`: the environment is already set up (no network here).
    proc = subprocess.Popen(["make", "-o", ".venv/.installed", "ui"], cwd=clone, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log = lambda: (clone.parent / "make-ui.log").read_text()[-3000:]  # noqa: E731
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops" not in log():
            assert proc.poll() is None, f"make ui exited ({proc.returncode}):\n{log()}"
            assert time.monotonic() < deadline, f"make ui not ready in 240 s:\n{log()}"
            time.sleep(1)
        assert f"Prefect UI  http://127.0.0.1:{prefect_port}" in log() and f"MLflow UI   http://127.0.0.1:{mlflow_port}" in log()

        deployments = get_json(f"http://127.0.0.1:{prefect_port}/api/deployments/filter", {"limit": 50, "offset": 0})
        assert {d["name"] for d in deployments} == {"nightly", "weekly-benchmark", "grid"}
        assert all(d["work_pool_name"] == "local" for d in deployments)
        for _ in range(60):  # the worker reports to the server once it has started
            workers = get_json(f"http://127.0.0.1:{prefect_port}/api/work_pools/local/workers/filter",
                               {"limit": 10, "offset": 0})
            if workers:
                break
            time.sleep(1)
        assert workers and workers[0]["status"] == "ONLINE", f"no worker of the pool `local` online:\n{log()}"
        with urllib.request.urlopen(f"http://127.0.0.1:{prefect_port}/", timeout=10) as resp:
            assert b"<html" in resp.read().lower()

        experiments = get_json(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=10")
        assert "Default" in {e["name"] for e in experiments["experiments"]}
        assert (clone / "mlflow.db").is_file() and (clone / ".cache" / "prefect").is_dir()
    finally:
        pgids = [int(p) for p in (clone / ".cache" / "ui" / "pgids").read_text().split()] \
            if (clone / ".cache" / "ui" / "pgids").exists() else []
        kill_group(proc.pid, signal.SIGTERM)  # make and scripts/ui.sh, as Ctrl-C would
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        deadline = time.monotonic() + 90  # scripts/ui.sh stops its children, then removes the list
        while (clone / ".cache" / "ui" / "pgids").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        stragglers = []
        for pgid in pgids:  # the server, the worker and MLflow, each in its own process group
            try:
                os.killpg(pgid, 0)
                stragglers.append(pgid)
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.close()
    assert not stragglers, f"make ui left process groups {stragglers} running"
    assert not listening(prefect_port) and not listening(mlflow_port)
