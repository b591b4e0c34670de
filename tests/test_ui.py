"""`make ui` on a fresh copy of the project brings up the Prefect server (with the deployments of
prefect.yaml and a worker) and the MLflow UI; beyond loopback both require a login and no flow run
can make the worker run a command of its own; Ctrl-C (through a real terminal) or SIGTERM stops
everything within 5 s, quietly, and `make` exits 0."""
import base64
import fcntl
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.slow

PROJECT_FILES = ["Makefile", "dvc.yaml", "params.yaml", "pipelines", "src", "pyproject.toml", "constraints.txt",
                 ".dvcignore", ".gitignore", "prefect.yaml", "scripts"]
STOP_SECONDS = 5


def request(url: str, body=None, method: str | None = None, headers: dict | None = None):
    """(status, JSON answer) of an HTTP request; errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")


def basic_auth(credentials: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


class Prefect:
    """A client of the Prefect REST API with optional basic auth and CSRF token, as Prefect's own client does."""

    def __init__(self, api: str, auth: str | None = None):
        self.api, self.headers = api, {}
        if auth:
            self.headers |= basic_auth(auth)
            status, token = request(f"{api}/csrf-token?client=test-ui", headers=self.headers)
            assert status == 200, token
            self.headers |= {"Prefect-Csrf-Token": token["token"], "Prefect-Csrf-Client": "test-ui"}

    def __call__(self, path: str, body=None, method: str | None = None):
        for attempt in range(5):  # a 503 (SQLite busy) is retried, as Prefect's own client does
            status, answer = request(f"{self.api}{path}", body, method, self.headers)
            if status != 503:
                break
            time.sleep(2 * (attempt + 1))
        return status, answer

    def ok(self, path: str, body=None, method: str | None = None):
        status, answer = self(path, body, method)
        assert status in (200, 201, 204), (path, status, answer)
        return answer


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


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


class MakeUi:
    """`make ui` in `clone`, in a session of its own whose controlling terminal is a pseudo-terminal
    (so that Ctrl-C is what a user's Ctrl-C is: the terminal's interrupt character)."""

    def __init__(self, clone: Path, **env):
        self.clone, self.output, self.recorded, self.closed = clone, b"", [], False
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        environ |= {"PREFECT_PORT": str(self.prefect_port), "MLFLOW_PORT": str(self.mlflow_port),
                    "PREFECT_WORKER_QUERY_SECONDS": "2", **env}
        self.master, slave = pty.openpty()
        # `-o .venv/.installed`: the environment is already set up (no network here).
        self.proc = subprocess.Popen(["make", "-o", ".venv/.installed", "ui"], cwd=clone, env=environ, stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the terminal's last user is gone
                return
            if not chunk:
                return
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops" not in self.text:
            assert self.proc.poll() is None, f"make ui exited ({self.proc.returncode}):\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"make ui not ready in {timeout} s:\n{self.text[-3000:]}"
            time.sleep(0.5)

    def pgids(self) -> list[int]:
        """The process groups scripts/ui.py records (server, worker, MLflow), remembered for cleanup."""
        path = self.clone / ".cache" / "ui" / "pgids"
        self.recorded = [int(p) for p in path.read_text().split()] if path.exists() else self.recorded
        return self.recorded

    def stop(self, how) -> tuple[int | None, float]:
        """Stop with `how()`; (make's exit status, seconds until it exited), or (None, ...) if it did not in time."""
        start = time.monotonic()
        how()
        try:
            status = self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            status = None
        return status, time.monotonic() - start

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the terminal's interrupt character: SIGINT to its foreground group

    def sigterm_ui(self) -> None:
        """SIGTERM to the ui process (what `make` itself sends it when make receives SIGTERM)."""
        os.kill(int((self.clone / ".cache" / "ui" / "pid").read_text()), signal.SIGTERM)

    def cleanup(self) -> list[int]:
        """Kill whatever is left (make's group, the recorded groups); the groups that were still alive."""
        if self.closed:
            return []
        self.closed = True
        stragglers = [g for g in self.recorded if group_alive(g)]
        for g in [self.proc.pid, *stragglers]:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.reader.join(timeout=5)
        os.close(self.master)
        return stragglers


@pytest.fixture
def make_ui(clone):
    """Start `make ui` in the clone (MakeUi); whatever a failed test leaves running is killed."""
    started = []

    def start(**env) -> MakeUi:
        started.append(MakeUi(clone, **env))
        return started[-1]

    yield start
    for ui in started:
        ui.pgids()
        ui.cleanup()


def job_from(template: dict, api: str):
    """What Prefect's process worker would start for a flow run whose job variables (its own merged with
    its deployment's) name a command, an environment and a working directory of their own."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessJobConfiguration

    async def build():
        async with get_client() as client:
            return await ProcessJobConfiguration.from_template_and_values(
                template, {"command": "touch /tmp/pwned", "env": {"LD_PRELOAD": "/tmp/x.so"}, "working_dir": "/tmp"},
                client=client)

    with temporary_settings({PREFECT_API_URL: api}):
        config = asyncio.run(build())
    assert config.env == {} and config.working_dir is None
    return config


def assert_stopped_quietly(ui: MakeUi, status, seconds) -> None:
    stragglers = ui.cleanup()
    tail = ui.text[-3000:]
    assert status == 0, f"make ui: exit {status} after {seconds:.1f} s:\n{tail}"
    assert seconds < STOP_SECONDS, tail
    assert "Killed" not in ui.text and "make: ***" not in ui.text and "Traceback" not in ui.text, tail
    assert not stragglers, f"make ui left process groups {stragglers} running"
    assert not listening(ui.prefect_port) and not listening(ui.mlflow_port)
    assert not (ui.clone / ".cache" / "ui" / "pgids").exists()


def test_make_ui_on_loopback_serves_prefect_and_mlflow_and_stops_on_sigterm(clone, make_ui):
    ui = make_ui(HOST="127.0.0.1")
    ui.wait_ready()
    ui.pgids()
    assert f"Prefect UI  http://127.0.0.1:{ui.prefect_port}" in ui.text
    assert f"MLflow UI   http://127.0.0.1:{ui.mlflow_port}" in ui.text
    prefect = Prefect(f"http://127.0.0.1:{ui.prefect_port}/api")
    deployments = prefect.ok("/deployments/filter", {"limit": 50, "offset": 0})
    assert {d["name"] for d in deployments} == {"nightly", "weekly-benchmark", "grid"}
    assert all(d["work_pool_name"] == "local" for d in deployments)
    pool = prefect.ok("/work_pools/local")
    assert job_from(pool["base_job_template"], prefect.api).command is None
    for _ in range(60):  # the worker reports to the server once it has started
        workers = prefect.ok("/work_pools/local/workers/filter", {"limit": 10, "offset": 0})
        if workers:
            break
        time.sleep(1)
    assert workers and workers[0]["status"] == "ONLINE", f"no worker of the pool `local` online:\n{ui.text}"
    with urllib.request.urlopen(f"http://127.0.0.1:{ui.prefect_port}/", timeout=10) as resp:
        assert b"<html" in resp.read().lower()
    status, experiments = request(f"http://127.0.0.1:{ui.mlflow_port}/api/2.0/mlflow/experiments/search?max_results=10")
    assert status == 200 and "Default" in {e["name"] for e in experiments["experiments"]}
    assert (clone / "mlflow.db").is_file() and (clone / ".cache" / "prefect").is_dir()
    assert not (clone / ".cache" / "ui" / "credentials").exists()  # loopback: no login
    status, seconds = ui.stop(ui.sigterm_ui)
    assert_stopped_quietly(ui, status, seconds)


def test_make_ui_beyond_loopback_requires_a_login_runs_no_foreign_command_and_stops_on_ctrl_c(make_ui, clone, tmp_path):
    marker = tmp_path / "pwned"
    ui = make_ui(HOST="0.0.0.0", PUBLIC_HOST="127.0.0.1")
    ui.wait_ready()
    ui.pgids()
    credentials = clone / ".cache" / "ui" / "credentials"
    assert credentials.stat().st_mode & 0o777 == 0o600
    auth = credentials.read_text().strip()
    api = f"http://127.0.0.1:{ui.prefect_port}/api"
    assert f"the line user:password of {credentials}" in ui.text

    # Without the login the API refuses everything but its health check, including a flow run with a command.
    anonymous = Prefect(api)
    nightly_id = Prefect(api, auth).ok("/deployments/name/pipeline/nightly")["id"]
    foreign = {"job_variables": {"command": f"touch {marker}"}}
    assert anonymous("/health")[0] == 200
    assert anonymous(f"/deployments/{nightly_id}")[0] == 401
    assert anonymous("/csrf-token?client=x")[0] == 401
    assert anonymous(f"/deployments/{nightly_id}/create_flow_run", foreign)[0] in (401, 403)
    assert request(f"{api}/deployments/{nightly_id}", headers=basic_auth("tinym2net:guess"))[0] == 401
    # With the login but without a CSRF token (a page of another site posting through the browser): refused.
    assert request(f"{api}/deployments/{nightly_id}/create_flow_run", {}, headers=basic_auth(auth))[0] == 403

    # With the login and the token: the work pool's template has no `command` variable, so the server
    # refuses a flow run that sets one ...
    prefect = Prefect(api, auth)
    status, answer = prefect(f"/deployments/{nightly_id}/create_flow_run", foreign)
    assert status in (409, 422) and "command" in json.dumps(answer), (status, answer)
    # ... and where one still reaches the worker (deployment variables are not validated when updated; the
    # worker merges them into every run of the deployment), the worker starts Prefect's engine, not the command.
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    run = prefect.ok(f"/deployments/{nightly_id}/create_flow_run",
                     {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}})
    prefect.ok(f"/deployments/{nightly_id}", {"job_variables": {
        "command": f"touch {marker}", "env": {"PYTHONSTARTUP": str(marker)}, "working_dir": str(tmp_path)}}, "PATCH")
    assert prefect.ok(f"/deployments/{nightly_id}")["job_variables"]["command"] == f"touch {marker}"
    now = datetime.now(timezone.utc).isoformat()
    prefect.ok(f"/flow_runs/{run['id']}/set_state",
               {"state": {"type": "SCHEDULED", "state_details": {"scheduled_time": now}}, "force": True})
    deadline = time.monotonic() + 180
    while (state := prefect.ok(f"/flow_runs/{run['id']}")["state"]["type"]) not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, f"flow run still {state}:\n{(clone / '.cache/ui/worker.log').read_text()[-3000:]}"
        time.sleep(1)
    text, deadline = "", time.monotonic() + 30  # logs are shipped in batches
    while "Beginning flow run" not in text and time.monotonic() < deadline:
        time.sleep(1)
        logs = prefect.ok("/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200, "offset": 0})
        text = "\n".join(entry["message"] for entry in logs)
    assert "Beginning flow run" in text, text[-3000:]  # the engine ran the `pipeline` flow (which fails here:
    assert not marker.exists()                        # the copy is no DVC repository), the command never ran

    # MLflow: basic auth, the same credentials.
    mlflow_api = f"http://127.0.0.1:{ui.mlflow_port}/api/2.0/mlflow/experiments/search?max_results=10"
    assert request(mlflow_api)[0] == 401
    status, experiments = request(mlflow_api, headers=basic_auth(auth))
    assert status == 200 and "Default" in {e["name"] for e in experiments["experiments"]}
    status, seconds = ui.stop(ui.ctrl_c)
    assert_stopped_quietly(ui, status, seconds)
    assert not marker.exists()
