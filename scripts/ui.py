"""`make ui`: a Prefect server (SQLite under .cache/prefect), the deployments of prefect.yaml on a
locked process work pool, a worker of that pool, and the MLflow UI on the project's store (mlflow.db).
Prints their URLs and runs until Ctrl-C or SIGTERM, which stop all of them within a few seconds
(exit 0). Logs: .cache/ui/*.log.

    make ui                                       # on 127.0.0.1 only
    HOST=0.0.0.0 make ui                          # every interface (links use `hostname`, or PUBLIC_HOST)
    PREFECT_PORT=4300 MLFLOW_PORT=5001 make ui    # other ports (defaults 4200 and 5000)

Beyond loopback both servers require a login: Prefect's API authentication and CSRF protection,
MLflow's basic-auth app. The user and password are the line `user:password` of
.cache/ui/credentials, created private with a random password on first use (write your own there to
choose them). Needs prefect, mlflow and python on PATH (`make ui` puts .venv/bin first).
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".cache" / "ui"
CREDENTIALS = LOGS / "credentials"
POOL = "local"
GRACE_SECONDS = 2.5   # each process's time to stop after SIGTERM, before SIGKILL
READY_SECONDS = 180
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

log = logging.getLogger("ui")


class Stop(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP: stop everything and exit 0."""


class Failed(Exception):
    """Something did not start or exited: stop everything and exit 1."""


def on_signal(signum, frame):
    raise Stop(signal.Signals(signum).name)


class Processes:
    """Background processes, each in its own process group (so that stopping one stops its children)."""

    def __init__(self):
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        with open(LOGS / f"{name}.log", "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, process_group=0)
        self.running[name] = proc
        self.record()
        return proc

    def record(self) -> None:
        """.cache/ui/pgids: the process groups, for whoever must check that they are gone."""
        (LOGS / "pgids").write_text("".join(f"{p.pid}\n" for p in self.running.values()))

    def finish(self, name: str) -> int:
        """Wait for a process that ends by itself (while the others keep running); its exit status."""
        proc = self.running[name]
        while proc.poll() is None:
            self.check(skip=name)
            time.sleep(0.2)
        del self.running[name]
        self.record()
        return proc.returncode

    def check(self, skip: str | None = None) -> None:
        for name, proc in self.running.items():
            if name != skip and proc.poll() is not None:
                raise Failed(f"{name} exited ({proc.returncode}); see {LOGS / name}.log:\n{tail(name)}")

    def stop(self) -> None:
        """SIGTERM to every group at once (and to the groups of their descendants: a worker starts each
        flow run in a session of its own); SIGKILL to what is left after GRACE_SECONDS."""
        groups = [p.pid for p in self.running.values()]
        groups += sorted({pgid for pgid in descendant_groups(groups) if pgid not in groups})
        for pgid in groups:
            signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any(group_alive(g, self.running) for g in groups):
            time.sleep(0.05)
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        for proc in self.running.values():
            proc.wait()
        (LOGS / "pgids").unlink(missing_ok=True)


def descendant_groups(pids: list[int]) -> set[int]:
    """The process groups of every descendant of `pids` (Linux: from /proc)."""
    children: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        groups[pid] = int(fields[2])
    found, todo = set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(groups[child])
            todo.append(child)
    return found


def signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int, running: dict[str, subprocess.Popen]) -> bool:
    for proc in running.values():
        if proc.pid == pgid:
            proc.poll()  # reap the leader, so that a zombie does not count
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def tail(name: str, lines: int = 20) -> str:
    path = LOGS / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def wait_for(url: str, name: str, processes: Processes) -> None:
    """Until `url` answers (at most READY_SECONDS), or Failed if a process exits."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            processes.check()
            time.sleep(0.5)
    raise Failed(f"{name} did not answer at {url} within {READY_SECONDS} s; see {LOGS / name}.log")


# ---------------------------------------------------------------------------------------------
# the terminal: Ctrl-C reaches this process only, not `make`

def take_terminal():
    """Make this process's own group the terminal's foreground group, so that Ctrl-C reaches this
    process alone (`make` would otherwise die of it and exit 130); (tty fd, previous group) or None."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        return None  # no terminal (a service, a test): signals come by `kill`
    try:
        previous = os.tcgetpgrp(fd)
        if previous != os.getpgrp():  # started in the background: leave the terminal alone
            raise OSError
        os.setpgid(0, 0)
        handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(fd, os.getpgrp())
        signal.signal(signal.SIGTTOU, handler)
        return fd, previous
    except OSError:
        os.close(fd)
        return None


def give_back_terminal(taken) -> None:
    if taken:
        fd, previous = taken
        handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(fd, previous)
        except OSError:
            pass  # `make` is gone
        signal.signal(signal.SIGTTOU, handler)
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# credentials (beyond loopback)

def credentials() -> tuple[str, str]:
    """(user, password) from .cache/ui/credentials, created private with a random password if absent."""
    if not CREDENTIALS.exists():
        tmp = CREDENTIALS.with_name(".credentials.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"tinym2net:{secrets.token_urlsafe(24)}\n")
        tmp.rename(CREDENTIALS)
        log.info("created %s (user tinym2net, a random password)", CREDENTIALS)
    if CREDENTIALS.stat().st_mode & 0o077:
        raise Failed(f"{CREDENTIALS}: readable by other users: chmod 600 {CREDENTIALS}")
    user, _, password = CREDENTIALS.read_text().strip().partition(":")
    if not user or ":" in user or len(password) < 12 or any(c.isspace() for c in user + password):
        raise Failed(f"{CREDENTIALS}: expected one line `user:password` (a password of at least 12 characters, "
                     "no spaces)")
    return user, password


# Run apart (importing MLflow here would slow this process's exit by seconds): the admin user of the
# auth store gets the password of the credentials file (read from stdin: not visible in `ps`), which
# stays the one source; prints MLflow's default allowed Host headers.
MLFLOW_AUTH_SETUP = """
import sys
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
from mlflow.server.security_utils import get_default_allowed_hosts
db, user, password = sys.argv[1], sys.argv[2], sys.stdin.read()
store = SqlAlchemyStore()
store.init_db(db)
if store.has_user(user):
    store.update_user(user, password=password, is_admin=True)
else:
    store.create_user(user, password, is_admin=True)
print(",".join(get_default_allowed_hosts()))
"""


def mlflow_auth(env: dict, user: str, password: str, public: str) -> list[str]:
    """Configure MLflow's basic-auth app (admin `user` with `password`, no rights for anyone else) and
    the Host headers it answers (DNS-rebinding protection: also this machine's name); the `mlflow
    server` arguments that enable it."""
    db = f"sqlite:///{LOGS / 'mlflow-auth.db'}"
    ini = LOGS / "mlflow-auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                   f"database_uri = {db}\nadmin_username = {user}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    setup = subprocess.run([sys.executable, "-c", MLFLOW_AUTH_SETUP, db, user], input=password, env=env,
                           capture_output=True, text=True)
    if setup.returncode != 0:
        raise Failed(f"setting up MLflow's login failed:\n{setup.stderr[-2000:]}")
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
    env.setdefault("MLFLOW_SERVER_ALLOWED_HOSTS", ",".join([setup.stdout.strip(), public, f"{public}:*"]))
    return ["--app-name", "basic-auth"]


# ---------------------------------------------------------------------------------------------

def already_running() -> int | None:
    try:
        pid = int((LOGS / "pid").read_text())
        os.kill(pid, 0)
        return pid if pid != os.getpid() else None
    except (OSError, ValueError):
        return None


def serve(processes: Processes) -> None:
    host = os.environ.get("HOST") or "127.0.0.1"
    prefect_port, mlflow_port = os.environ.get("PREFECT_PORT") or "4200", os.environ.get("MLFLOW_PORT") or "5000"
    wide = host not in LOOPBACK and not host.startswith("127.")
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    public = os.environ.get("PUBLIC_HOST") or (socket.gethostname() if host in ("0.0.0.0", "::") else host)
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(ROOT / ".cache" / "prefect"))
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no GenAI job runner: a dozen processes
    env |= {"PREFECT_API_URL": f"http://{local}:{prefect_port}/api",        # the CLI, the worker, the flows
            "PREFECT_UI_API_URL": f"http://{public}:{prefect_port}/api",    # the browser
            "PREFECT_UI_URL": f"http://{public}:{prefect_port}",            # links to flow runs
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
            "TINYM2NET_MLFLOW_UI": f"http://{public}:{mlflow_port}"}       # links to MLflow runs
    server_env, mlflow_args = dict(env), []
    if wide:
        user, password = credentials()
        server_env |= {"PREFECT_SERVER_API_AUTH_STRING": f"{user}:{password}",
                       "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
                       "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": env["PREFECT_UI_URL"]}
        env["PREFECT_API_AUTH_STRING"] = f"{user}:{password}"  # the deployments, the worker and its flows
        mlflow_env = dict(env)
        mlflow_args = mlflow_auth(mlflow_env, user, password, public)
    else:
        mlflow_env = dict(env)

    log.info("starting the Prefect server and the MLflow UI (logs in %s)...", LOGS)
    processes.start("mlflow", ["mlflow", "server", "--backend-store-uri", env["MLFLOW_TRACKING_URI"],
                               "--artifacts-destination", str(ROOT / "mlartifacts"), "--host", host,
                               "--port", mlflow_port, "--workers", "1", *mlflow_args], mlflow_env)
    processes.start("prefect-server", ["prefect", "server", "start", "--host", host, "--port", prefect_port], server_env)
    wait_for(f"{env['PREFECT_API_URL']}/health", "prefect-server", processes)
    processes.start("deploy", [sys.executable, "scripts/deploy.py"], env)  # work pools + prefect deploy --all
    if processes.finish("deploy") != 0:
        raise Failed(f"registering the deployments of prefect.yaml failed:\n{tail('deploy', 30)}")
    processes.start("worker", ["prefect", "worker", "start", "--pool", POOL, "--type", "process"], env)
    wait_for(f"http://{local}:{mlflow_port}/health", "mlflow", processes)

    login = (f"\n  Login       user and password: the line user:password of {CREDENTIALS}"
             "\n              (Prefect asks for the whole line; workers elsewhere: PREFECT_API_AUTH_STRING)") if wide else ""
    log.info("\n  Prefect UI  http://%s:%s   deployments: pipeline/nightly (02:00 UTC), pipeline/weekly-benchmark "
             "(Mon 04:00 UTC), sweep/grid\n  MLflow UI   http://%s:%s   store: %s\n"
             "  Worker      pool '%s' (process), runs flows in %s%s\n\n"
             "  Run now:  PREFECT_API_URL=%s prefect deployment run pipeline/nightly\n"
             "  Ctrl-C stops the server, the worker and the MLflow UI.",
             public, prefect_port, public, mlflow_port, env["MLFLOW_TRACKING_URI"], POOL, ROOT, login,
             env["PREFECT_API_URL"])
    while True:
        processes.check()
        time.sleep(0.5)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    LOGS.mkdir(parents=True, exist_ok=True)
    if (pid := already_running()) is not None:
        log.error("error: `make ui` is already running here (pid %d, in %s); stop it first", pid, LOGS / "pid")
        return 1
    (LOGS / "pid").write_text(f"{os.getpid()}\n")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGTSTP, signal.SIG_IGN)  # Ctrl-Z would stop the foreground group: this process
    taken = take_terminal()
    processes, status = Processes(), 0
    try:
        serve(processes)
    except Stop as stop:
        log.info("%s: stopping the worker, the Prefect server and the MLflow UI...", stop)
    except Failed as exc:
        log.error("error: %s", exc)
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C does not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        processes.stop()
        (LOGS / "pid").unlink(missing_ok=True)
        give_back_terminal(taken)
    return status


if __name__ == "__main__":
    sys.exit(main())
