"""MLflow tracking: one experiment per case, a run per stage execution, child runs per model.

The store is SQLite (`sqlite:///<repo>/mlflow.db`, absolute so that DVC's temporary experiment
copies log to the same place) unless `MLFLOW_TRACKING_URI` says otherwise; artifacts go to
`<repo>/mlartifacts/`. Neither is a DVC output. Every run is tagged with the git commit and the
stage's dependency hashes as DVC computes them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)


def tracking_uri(root: Path | None = None) -> str:
    root = Path(root or Path.cwd()).resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def git_commit(root: Path) -> str:
    """HEAD's commit, suffixed `-dirty` when tracked files other than pipeline outputs have changed."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "none"
    # DVC rewrites dvc.lock, metrics, reports and .gitignore files during `dvc repro` itself
    outputs = [":!dvc.lock", ":!metrics", ":!reports", ":!models", ":(glob,exclude)**/.gitignore"]
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", *outputs).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def dvc_dependency_hashes(stage: str, root: Path) -> dict[str, str]:
    """Hashes of the stage's file/directory dependencies as DVC computes them (md5)."""
    try:
        from dvc.dependency.param import ParamsDependency
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            (found,) = repo.stage.collect(stage)
            hashes = {}
            for dep in found.deps:
                if isinstance(dep, ParamsDependency):
                    continue
                dep.save()
                hashes[dep.def_path] = dep.hash_info.value
            return hashes
    except Exception as exc:  # outside a DVC repo (e.g. a library call from a notebook)
        log.debug("no DVC dependency hashes for %s: %s", stage, exc)
        return {}


def set_experiment(case: str, root: Path):
    """Select (creating if needed) the case's experiment, artifacts under <root>/mlartifacts."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    name = f"tinym2net-{case}"
    if mlflow.get_experiment_by_name(name) is None:
        local = not tracking_uri(root).startswith(("http://", "https://", "databricks"))
        # a local store keeps artifacts beside it; a tracking server uses its own artifact store
        location = (Path(root).resolve() / "mlartifacts" / case).as_uri() if local else None
        mlflow.create_experiment(name, artifact_location=location)
    return mlflow.set_experiment(name)


@contextlib.contextmanager
def stage_run(stage: str, case: str, root: Path = Path("."), partition: int | None = None):
    """An MLflow run for one execution of `stage` on `case` (and `partition`), tagged for lineage."""
    import mlflow

    set_experiment(case, root)
    tags = {"stage": stage, "case": case, "git_commit": git_commit(Path(root))}
    item = case if partition is None else f"{case}-{partition}"  # the DVC stage: <stage>@<case>[-<partition>]
    if partition is not None:
        tags["partition"] = str(partition)
    tags.update({f"dvc.dep.{path}": md5 for path, md5 in dvc_dependency_hashes(f"{stage}@{item}", Path(root)).items()})
    if os.environ.get("TINYM2NET_FLOW_RUN_ID"):  # set by the Prefect flows (pipelines/flows.py)
        tags["prefect.flow_run_id"] = os.environ["TINYM2NET_FLOW_RUN_ID"]
    with mlflow.start_run(run_name=f"{stage}-{item}", tags=tags) as run:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, run.info.run_name, tracking_uri(root))
        yield run


@contextlib.contextmanager
def child_run(parent, name: str):
    """A child run under `parent` (explicit parent id, so it also works from worker threads)."""
    import mlflow

    tags = {k: v for k, v in parent.data.tags.items() if k == "prefect.flow_run_id"}
    with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent.info.run_id, tags=tags) as run:
        yield run
