"""MLflow tracking: one experiment per case, a run per stage execution, child runs per model.

The store is SQLite (`sqlite:///<repo>/mlflow.db`, absolute so that DVC's temporary experiment
copies log to the same place) unless `MLFLOW_TRACKING_URI` says otherwise; artifacts go to
`<repo>/mlartifacts/`. Neither is a DVC output. Runs are named `<case>/<stage>` and
`<case>/<stage>/<child>`, tagged with the git commit and the stage's dependency hashes as DVC
computes them, described (with links to the Prefect flow run that started them and, for a parent,
to MLflow's comparison of its children), and never left RUNNING by a stage that failed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)

FLOW_RUN_ENV = "TINYM2NET_FLOW_RUN_ID"       # set by pipelines/flows.py for its subprocesses
FLOW_RUN_URL_ENV = "TINYM2NET_FLOW_RUN_URL"  # the flow run in the Prefect UI
MLFLOW_UI_ENV = "TINYM2NET_MLFLOW_UI"        # base URL of the MLflow UI, for links (`make ui` sets it)
PROCESS_TAG = "tinym2net.process"            # <host>:<pid>:<start ticks> of the process that owns a run
NOTE_TAG = "mlflow.note.content"             # what the MLflow UI shows as a description

EXPERIMENT_NOTE = (
    "tinym2net, case `{case}`: one run per execution of a DVC stage, named `{case}/<stage>` "
    "(`{case}/train`, `{case}/quantize`, ...), with a child run per model or variant (`{case}/quantize/mp`). "
    "Runs are tagged with the git commit (`git_commit`), the md5 of each DVC dependency as dvc.lock records it "
    "(`dvc.dep.<path>`) and, when a Prefect flow started them, `prefect.flow_run_id`, linked from the run's "
    "description. A parent run's description links to MLflow's comparison of its child runs.")


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


# ---------------------------------------------------------------------------------------------
# links into the MLflow UI

def ui_base() -> str:
    return os.environ.get(MLFLOW_UI_ENV, "http://127.0.0.1:5000").rstrip("/")


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_base()}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_url(experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page for these runs (parallel coordinates, scatter, tables)."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])},
                                   quote_via=urllib.parse.quote)
    return f"{ui_base()}/#/compare-runs?{query}"


def flow_run_note() -> str:
    """`Started by Prefect flow run <link>.` for runs a Prefect flow caused; empty otherwise."""
    run_id, url = os.environ.get(FLOW_RUN_ENV), os.environ.get(FLOW_RUN_URL_ENV)
    if url:
        return f"Started by [Prefect flow run {run_id or ''}]({url})."
    return f"Started by Prefect flow run `{run_id}`." if run_id else ""


def flow_run_tags() -> dict[str, str]:
    tags = {"prefect.flow_run_id": os.environ.get(FLOW_RUN_ENV), "prefect.flow_run_url": os.environ.get(FLOW_RUN_URL_ENV)}
    return {k: v for k, v in tags.items() if v}


def describe_experiment(client, experiment_id: str, note: str) -> None:
    """Give the experiment a description unless it has one (a user's edit stays)."""
    if NOTE_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, NOTE_TAG, note)


def link_children(client, run, note: str) -> None:
    """Append to a parent run's description one link comparing all its child runs."""
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                                  max_results=1000, order_by=["attributes.start_time ASC"])
    if children:
        url = compare_url(run.info.experiment_id, [c.info.run_id for c in children])
        client.set_tag(run.info.run_id, NOTE_TAG, f"{note}\n\n[Compare these {len(children)} runs]({url})")


# ---------------------------------------------------------------------------------------------
# runs never left RUNNING

def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), '' elsewhere; None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return ""
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid()) or ''}"


def end_orphans(client, experiment_id: str) -> None:
    """End as FAILED the RUNNING runs of stage processes of this host that no longer exist (killed)."""
    host = socket.gethostname()
    found = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAG}` LIKE '{host}:%'",
                               max_results=1000)
    for run in found:
        owner, pid, start = run.data.tags[PROCESS_TAG].rsplit(":", 2)
        if owner != host or not pid.isdigit():  # LIKE's `_` matches any character
            continue
        now = process_start(int(pid))
        if now is None or (start and now and now != start):
            client.set_terminated(run.info.run_id, "FAILED")
            log.warning("MLflow run %s (%s) belonged to a stage process that was killed; ended it as FAILED",
                        run.info.run_id, run.info.run_name)


@contextlib.contextmanager
def signals_unwind():
    """SIGTERM and SIGHUP raise SystemExit (128 + signal) instead of ending the process on the spot,
    so that runs end as FAILED and temporary outputs are removed; SIGINT already does (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum, frame):
        log.error("stage terminated by %s", signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for s, handler in previous.items():
        if handler == signal.SIG_DFL:
            signal.signal(s, unwind)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------
# experiments and runs

def set_experiment(case: str, root: Path):
    """Select (creating if needed) the case's experiment, artifacts under <root>/mlartifacts."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    name = f"tinym2net-{case}"
    if mlflow.get_experiment_by_name(name) is None:
        local = not tracking_uri(root).startswith(("http://", "https://", "databricks"))
        # a local store keeps artifacts beside it; a tracking server uses its own artifact store
        location = (Path(root).resolve() / "mlartifacts" / case).as_uri() if local else None
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(name) is None:  # not a race with another stage: a real error
                raise
    experiment = mlflow.set_experiment(name)
    describe_experiment(mlflow.MlflowClient(tracking_uri(root)), experiment.experiment_id, EXPERIMENT_NOTE.format(case=case))
    return experiment


def stage_summary(stage: str) -> str:
    """The first line of the stage module's docstring (`pipelines.<stage>`, or `python -m` of it)."""
    main = sys.modules.get("__main__")
    module = sys.modules.get(f"pipelines.{stage}")
    if module is None and getattr(getattr(main, "__spec__", None), "name", None) == f"pipelines.{stage}":
        module = main
    doc = (getattr(module, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else f"stage `{stage}`"


@contextlib.contextmanager
def stage_run(stage: str, case: str, root: Path = Path("."), partition: int | None = None):
    """An MLflow run `<item>/<stage>` for one execution of the DVC stage `<stage>@<item>` (item: the case,
    or `<case>-<partition>`), tagged for lineage; it ends FAILED if the stage raises or is terminated."""
    import mlflow

    experiment = set_experiment(case, root)
    client = mlflow.MlflowClient(tracking_uri(root))
    end_orphans(client, experiment.experiment_id)
    item = case if partition is None else f"{case}-{partition}"
    commit = git_commit(Path(root))
    tags = {"stage": stage, "case": case, "git_commit": commit, PROCESS_TAG: process_id(), **flow_run_tags()}
    if partition is not None:
        tags["partition"] = str(partition)
    tags.update({f"dvc.dep.{path}": md5 for path, md5 in dvc_dependency_hashes(f"{stage}@{item}", Path(root)).items()})
    note = "\n\n".join(filter(None, [f"**{item}/{stage}**: {stage_summary(stage)}",
                                     f"DVC stage `{stage}@{item}`, git commit `{commit}`.", flow_run_note()]))
    with signals_unwind(), mlflow.start_run(run_name=f"{item}/{stage}", tags=tags, description=note) as run:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, run.info.run_name, tracking_uri(root))
        yield run
        link_children(client, run, note)


def child_name(parent, name: str) -> str:
    """`covid/quantize` + `mp` -> `covid/quantize/mp`."""
    return f"{parent.info.run_name}/{name}"


@contextlib.contextmanager
def child_run(parent, name: str):
    """A child run `<parent name>/<name>` under `parent` (explicit parent id, so it also works from
    worker threads)."""
    import mlflow

    tags = {k: v for k, v in parent.data.tags.items() if k.startswith("prefect.") or k == PROCESS_TAG}
    note = f"`{name}` of [{parent.info.run_name}]({run_url(parent.info.experiment_id, parent.info.run_id)})."
    with mlflow.start_run(run_name=child_name(parent, name), nested=True, parent_run_id=parent.info.run_id,
                          tags=tags, description=note) as run:
        yield run


def latest_stage_run(case: str, stage: str, root: Path = Path(".")):
    """The most recent top-level run of `stage` for `case` (its parent run), or None."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(root))
    experiment = client.get_experiment_by_name(f"tinym2net-{case}")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}' and tags.`case` = '{case}'",
                              order_by=["attributes.start_time DESC"], max_results=20)
    return next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)


def log_budget(root: Path, case: str, rows: list[dict], files: list[Path], params: dict) -> str | None:
    """The budget view on the case's latest quantize parent run: the table and plots as artifacts, each
    deployed variant's figures as metrics (`<variant>.accuracy`, `.file_kib`, `.p50_ms`), the settings that
    chose them as params, and the table in its description. Returns the run id (None without a run)."""
    import mlflow
    from mlflow.entities import Metric, Param

    parent = latest_stage_run(case, "quantize", root)
    if parent is None:
        log.warning("no quantize run of %s in MLflow: the budget view is not logged there", case)
        return None
    client = mlflow.MlflowClient(tracking_uri(root))
    run_id, now = parent.info.run_id, int(time.time() * 1000)
    metrics = [Metric(f"{r['variant']}.{k}", float(r[k]), now, 0) for r in rows
               for k in ("accuracy", "accuracy_lo", "accuracy_hi", "uar", "file_kib", "p50_ms") if r.get(k) is not None]
    known = set(parent.data.params)
    client.log_batch(run_id, metrics=metrics,
                     params=[Param(k, str(v)) for k, v in params.items() if k not in known])
    for path in files:
        client.log_artifact(run_id, str(path), "budget")
    table = Path(files[0]).read_text()
    note = parent.data.tags.get(NOTE_TAG, "").split("\n\n### ")[0]
    client.set_tag(run_id, NOTE_TAG, f"{note}\n\n{table}")
    return run_id
