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
