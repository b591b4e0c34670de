"""Shared fixtures: the repository, the real-data fixtures beside it, the reduced configuration."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml

from tinym2net.params import merge, read, validate

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
def cough_cc0_fixture() -> Path:
    path = SHARED / "cough_cc0"
    assert path.is_dir(), f"{path}: the real CC0 cough sample must sit beside the repository"
    return path


@pytest.fixture(scope="session")
def small_params() -> dict:
    """params.yaml with tests/small.yaml merged in, as a plain mapping (what a test writes to params.yaml)."""
    return merge(read(ROOT / "params.yaml"), yaml.safe_load((ROOT / "tests" / "small.yaml").read_text()))


@pytest.fixture(scope="session")
def small(small_params):
    """The reduced configuration, validated (what a stage receives)."""
    return validate(small_params)


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


PROJECT_FILES = ["dvc.yaml", "pipelines", "src", "pyproject.toml", ".dvcignore", ".gitignore", "prefect.yaml", "scripts",
                 "Makefile"]


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


def fetch_with(small_params: dict, root: Path, case: str, source: str, opts: dict | None = None,
               override: dict | None = None) -> tuple[Path, dict[str, dict]]:
    """Run the real fetch stage on `case` with `source` (its options merged over params.yaml's), into
    `root`; returns data/raw/<case> and the manifest rows by subject_id (the first row of each)."""
    import csv

    from pipelines.fetch import fetch
    from tinym2net.params import validate as check

    params = merge(small_params, {"fetch": {case: {"source": source, **({source: opts} if opts else {})}}})
    params = merge(params, override or {})
    if opts is not None and source in params["fetch"][case]:
        params["fetch"][case][source] = {**(small_params["fetch"][case].get(source) or {}), **opts}
    fetch(check(params), case, root)
    raw = root / "data" / "raw" / case
    with open(raw / "manifest.csv", newline="") as fh:
        rows = {}
        for row in csv.DictReader(fh):
            rows.setdefault(row["subject_id"], row)
    return raw, rows


def assert_no_output(path: Path) -> None:
    """A stage's output folder was not created and no temporary sibling is left."""
    assert not path.exists(), f"{path} exists"
    if path.parent.exists():
        assert [p.name for p in path.parent.glob(f".{path.name}.*")] == []


def run_source(source: str, opts: dict, case: dict, out: Path, on_error: str = "fail") -> Path:
    """Run one source's `fetch` straight into the folder `out` (created), as the fetch stage does, and
    write its manifest; returns `out`."""
    from tinym2net.io import Folder
    from tinym2net.params import SOURCES, Case
    from tinym2net.sources import Context, get_fetcher, write_manifest

    out.mkdir(parents=True, exist_ok=True)
    model = SOURCES[source]
    limits = validate(read(ROOT / "params.yaml")).limits
    ctx = Context("case", Case.model_validate(case), Folder(out), 0, limits, on_error)
    write_manifest(ctx, get_fetcher(source)(model.model_validate(opts) if model else opts, ctx))
    return out
