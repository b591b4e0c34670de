"""Shared fixtures: the repository, the real-data fixtures beside it, the reduced configuration."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml

from tinym2net.config import load_params, merge

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def coswara_fixture() -> Path:
    path = SHARED / "coswara"
    assert path.is_dir(), f"{path}: the real Coswara sample must sit beside the repository"
    return path


@pytest.fixture(scope="session")
def small_params() -> dict:
    """params.yaml with tests/small.yaml merged in."""
    return merge(load_params(ROOT / "params.yaml"), yaml.safe_load((ROOT / "tests" / "small.yaml").read_text()))


@pytest.fixture
def one_thread():
    """Tiny autograd graphs run ~40x faster on one thread than on two contended ones."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path, monkeypatch):
    """Every test logs to its own SQLite store, never the developer's mlflow.db."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_env(**extra) -> dict:
    """Environment for subprocesses: the interpreter's bin dir first on PATH (dvc, python, prefect)."""
    import sys
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


PROJECT_FILES = ["dvc.yaml", "pipelines", "src", "pyproject.toml", ".dvcignore", ".gitignore", "prefect.yaml", "scripts"]


def run(cmd, cwd, env, timeout: float = 900) -> str:
    """Run a command; a non-zero exit fails the test with the command's output tail."""
    import subprocess
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def make_dvc_repo(path: Path, params: dict, env: dict) -> Path:
    """A fresh git+DVC repository at `path` holding the project files and `params`, committed."""
    import shutil
    path.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy(src, path / name)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.email", "ci@example.invalid"],
                ["git", "config", "user.name", "ci"], ["dvc", "init", "-q"]):
        run(cmd, path, env)
    shutil.copy(ROOT / ".dvc" / "config", path / ".dvc" / "config")  # analytics off, plots.html_template
    shutil.copytree(ROOT / ".dvc" / "plots", path / ".dvc" / "plots")  # plot templates, the offline page
    for cmd in (["git", "add", "-A"], ["git", "commit", "-q", "-m", "project"]):
        run(cmd, path, env)
    return path


def stop_process(proc) -> None:
    """Terminate a server or worker started by a test, killing it if it does not stop."""
    import subprocess
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
