"""Prefect flows around the DVC pipeline: `pipeline` (the DVC stages as tasks), `sweep` (DVC
experiments over a grid of params, compared in MLflow) and `benchmark` (the Pi runner).

DVC stays the source of truth for caching and lineage: each stage runs through
`dvc repro --single-item`, so dvc.lock, the cache and `dvc status` end up as after `dvc repro`
at the terminal. The one exception is the fan-out of independent stages (by default `fetch` and
`featurize` of the cases): their commands run side by side through the task runner (DVC locks the
repository, so two `dvc repro` cannot run at once) and `dvc commit` then records them in dvc.lock
and the cache. Prefect adds the schedules (prefect.yaml), retries, logs, and the links to MLflow:
subprocesses get `TINYM2NET_FLOW_RUN_ID` and `TINYM2NET_FLOW_RUN_URL`, which `tracking.stage_run`
stores as MLflow tags and as a link in the run's description, and each flow run publishes a
markdown artifact with its stages (a stage DVC reused ends in the state `Reused`, one restored from
DVC's run cache in `Restored`), its MLflow runs and the metrics of the cases it targeted.

The task runner of a fan-out is a flow parameter or `TINYM2NET_TASK_RUNNER`: `threads[:N]`
(default), `processes[:N]`, `dask[:N]` (a local Dask cluster) or a Dask scheduler address
(`tcp://scheduler:8786`, whose workers must see the repository at the same path).
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed
from prefect.tasks import exponential_backoff

from tinym2net import tracking
from tinym2net.params import read as load_params

TASK_RUNNER_ENV = "TINYM2NET_TASK_RUNNER"  # default task runner of the fan-outs
SWEEP_EXPERIMENT = "tinym2net-sweep"
SWEEP_NOTE = ("tinym2net sweeps: one parent run per sweep (a grid of params.yaml values, run as DVC experiments), "
              "with one child run per point of the grid, named after its params, holding the metrics of the cases "
              "the sweep targeted. A parent's description links to MLflow's comparison of its children.")
DONE = {"Success", "Failed"}               # terminal states in `dvc queue status`

# Tasks may run in other processes (process pool, Dask workers): ship this module's code with them,
# whether Prefect loaded it as `pipelines.flows` or from its path (module name `flows`).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class DvcError(RuntimeError):
    """A DVC command failed; the message carries the end of its output."""


# ---------------------------------------------------------------------------------------------
# Environment and commands

def mlflow_uri(root: Path) -> str:
    """The tracking URI of `root`, with a relative SQLite path made absolute (queued DVC
    experiments run in temporary copies of the repository)."""
    uri = tracking.tracking_uri(root)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not os.path.isabs(uri[len(prefix):]):
        uri = prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def stage_env(root: Path, run_id: str | None) -> dict[str, str]:
    """Environment of DVC and stage subprocesses: this interpreter's bin first on PATH (`python -m
    pipelines.<stage>`, `dvc`), the absolute MLflow store, and the flow run's id and URL for MLflow."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = mlflow_uri(root)
    env.setdefault("NUMBA_CACHE_DIR", str(root / ".cache" / "numba"))
    env["DVC_NO_ANALYTICS"] = "1"
    if run_id:
        env[tracking.FLOW_RUN_ENV] = run_id
        if url := flow_run_url(run_id):
            env[tracking.FLOW_RUN_URL_ENV] = url
    return env


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def dvc(root: Path, env: dict, *args: str, stdout_only: bool = False) -> str:
    """Run `dvc <args>` in `root`: its output (stdout and stderr, or stdout only for --json), or
    DvcError with the end of it."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}) in {root}:\n"
                       f"{tail(proc.stdout + proc.stderr)}")
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def make_task_runner(spec: str | None):
    """A Prefect task runner from `threads[:N]`, `processes[:N]`, `dask[:N]` or a Dask address."""
    spec = spec or os.environ.get(TASK_RUNNER_ENV) or "threads"
    if "://" in spec:
        from prefect_dask import DaskTaskRunner
        return DaskTaskRunner(address=spec)
    kind, _, count = spec.partition(":")
    workers = int(count) if count.isdigit() else None
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers} if workers else None)
    raise ValueError(f"task runner {spec!r}: expected threads[:N], processes[:N], dask[:N] "
                     "or a Dask scheduler address such as tcp://scheduler:8786")


def fan_out(spec: str | None, calls: list[tuple[Any, dict]]) -> list:
    """Run each (task, parameters) of `calls` at once on the chosen task runner; the results in order."""
    if not calls:
        return []
    with make_task_runner(spec) as runner:
        futures = [runner.submit(fn, parameters) for fn, parameters in calls]
        return [future.result() for future in futures]


def flow_run_url(run_id: str) -> str | None:
    """The flow run's page in the Prefect UI (None without a UI URL: PREFECT_UI_URL or PREFECT_API_URL)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=run_id)


def current_run() -> tuple[str | None, str | None]:
    """This flow run's id and its URL in the Prefect UI (None outside a flow run)."""
    run_id = flow_run.get_id()
    return (str(run_id), flow_run_url(str(run_id))) if run_id else (None, None)


# ---------------------------------------------------------------------------------------------
# The pipeline

def stage_generations(root: Path, targets: list[str] | None = None) -> list[list[str]]:
    """DVC's stages (all, or `targets` and what they depend on) in DAG order, grouped into steps
    whose stages do not depend on one another, read from DVC's own graph of dvc.yaml."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edge: stage -> a stage it depends on
        if targets:
            wanted = set()
            for target in targets:
                wanted |= set(repo.stage.collect(target, with_deps=True))
            graph = graph.subgraph(wanted)
        order = {s.addressing: i for i, s in enumerate(repo.index.stages)}  # dvc.yaml order within a step
        return [sorted((s.addressing for s in step), key=order.__getitem__)
                for step in nx.topological_generations(graph.reverse(copy=False))]


def stage_group(stage: str) -> str:
    """`fetch@covid` -> `fetch` (the dvc.yaml stage a foreach entry comes from)."""
    return stage.split("@", 1)[0]


def stage_cases(stages, root: Path) -> set[str]:
    """The cases (params.yaml's) of foreach and matrix stages: `fetch@covid`, `train@covid-0` -> covid."""
    cases = load_params(root / "params.yaml").get("cases") or {}
    items = {s.split("@", 1)[1] for s in stages if "@" in s}
    return {c for c in cases for item in items if item == c or re.fullmatch(re.escape(c) + r"-\d+", item)}


def with_retries(fn, stage: str, retries: int):
    """`fn` with retries (10 s, 20 s, 40 s, ...) for a `fetch` stage: sources on the network fail now and then."""
    if stage_group(stage) != "fetch" or retries <= 0:
        return fn
    return fn.with_options(retries=retries, retry_delay_seconds=exponential_backoff(10))


def repro_outcome(output: str, stage: str) -> str:
    """What `dvc repro --single-item <stage>` did, from DVC's own messages."""
    if f"Running stage '{stage}'" in output:
        return "ran"
    if f"Stage '{stage}' is cached" in output:
        return "restored"
    return "reused"


OUTCOME_TEXT = {"ran": "DVC ran the stage", "restored": "DVC restored its outputs from the run cache",
                "reused": "unchanged, DVC reused its outputs", "committed": "ran its command, then `dvc commit`"}
# The task run's final state: a stage whose command did not run is not a plain `Completed`.
STATE_NAME = {"ran": "Completed", "committed": "Completed", "restored": "Restored", "reused": "Reused"}


def outcome_state(stage: str, outcome: str, seconds: float | None = None):
    """The task's final state, named after what happened to the stage; its result is the outcome."""
    message = f"{stage}: {OUTCOME_TEXT[outcome]}" + (f" ({seconds:.1f} s)" if seconds is not None else "")
    get_run_logger().info(message)
    return Completed(name=STATE_NAME[outcome], message=message, data=outcome)


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE)
def repro_stage(root: str, stage: str, run_id: str | None, force: bool = False):
    """`dvc repro --single-item <stage>`: `ran`, `restored` (run cache) or `reused` (unchanged)."""
    start = time.monotonic()
    output = dvc(Path(root), stage_env(Path(root), run_id), "repro", "--single-item", *(["--force"] if force else []), stage)
    get_run_logger().debug("dvc output:\n%s", output)
    return outcome_state(stage, repro_outcome(output, stage), time.monotonic() - start)


@task(name="dvc-reuse", task_run_name="{stage}", cache_policy=NO_CACHE)
def reuse_stage(stage: str):
    """A stage of a fan-out step that `dvc status` found unchanged: its outputs stay (state `Reused`)."""
    return outcome_state(stage, "reused")


def outcome_of(task_fn, **parameters) -> str:
    """Call a stage task; its outcome (the data of the named state it ends in)."""
    return task_fn(**parameters, return_state=True).result()


@task(name="stage-command", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage_command(root: str, stage: str, commands: list[str], wdir: str, run_id: str | None) -> str:
    """Run a stage's own command(s) as DVC would (shell, in its wdir, DVC_ROOT/DVC_STAGE set)."""
    log = get_run_logger()
    env = stage_env(Path(root), run_id) | {"DVC_ROOT": root, "DVC_STAGE": stage}
    start = time.monotonic()
    for command in commands:
        proc = subprocess.run(command, shell=True, cwd=wdir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise DvcError(f"{stage}: `{command}` failed (exit {proc.returncode}):\n{tail(proc.stdout)}")
    log.info("%s: ran its command beside the other stages of its step (%.1f s)", stage, time.monotonic() - start)
    return "committed"


def changed_stages(root: Path, env: dict, stages: list[str]) -> list[str]:
    """The stages `dvc status` reports as changed (dependencies, params or outputs)."""
    status = json.loads(dvc(root, env, "status", "--json", *stages, stdout_only=True) or "{}")
    return [s for s in stages if s in status]


def stage_commands(root: Path, stages: list[str]) -> dict[str, tuple[list[str], str]]:
    """Stage -> (its commands, its working directory), as DVC reads them from dvc.yaml."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        found = {s.addressing: s for target in stages for s in repo.stage.collect(target)}
        return {name: ([s.cmd] if isinstance(s.cmd, str) else list(s.cmd), s.wdir) for name, s in found.items()}


def run_step_side_by_side(root: Path, stages: list[str], run_id: str | None, runner: str | None,
                          forced: set[str], retries: int) -> dict[str, str]:
    """Run independent stages of one step at once: their commands through the task runner, then
    `dvc commit` records outputs and dependencies in dvc.lock and the cache, as `dvc repro` would."""
    log = get_run_logger()
    env = stage_env(root, run_id)
    unforced = [s for s in stages if s not in forced]
    changed = set(changed_stages(root, env, unforced)) if unforced else set()
    todo = [s for s in stages if s in forced or s in changed]
    outcomes = {s: outcome_of(reuse_stage, stage=s) for s in stages if s not in todo}
    commands = stage_commands(root, todo)
    fan_out(runner, [(with_retries(run_stage_command, s, retries),
                      dict(root=str(root), stage=s, commands=commands[s][0], wdir=commands[s][1], run_id=run_id))
                     for s in todo])
    if todo:
        dvc(root, env, "commit", "--force", *todo)
        log.info("dvc commit recorded %s in dvc.lock", ", ".join(todo))
    return outcomes | {s: "committed" for s in todo}


def read_metrics(root: Path, cases: set[str]) -> dict[str, dict]:
    """{case: {"evaluate": ..., "quantize": ...}} from metrics/<case>/{evaluate,quantize}.json of `cases`."""
    metrics: dict[str, dict] = {}
    for path in sorted((root / "metrics").glob("*/*.json")):
        if path.stem in ("evaluate", "quantize") and path.parent.name in cases:
            metrics.setdefault(path.parent.name, {})[path.stem] = json.loads(path.read_text())
    return metrics


def mlflow_runs_of(root: Path, run_id: str) -> list:
    """The MLflow runs tagged with this Prefect flow run, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri(root))
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, f"tags.`prefect.flow_run_id` = '{run_id}'", max_results=1000)
    return sorted(runs, key=lambda r: r.info.start_time)


def mlflow_links(root: Path, run_id: str | None) -> str:
    """A markdown list of this flow run's MLflow runs (also logged, one line per run)."""
    log = get_run_logger()
    if not run_id:
        return ""
    lines = []
    for run in mlflow_runs_of(root, run_id):
        url = tracking.run_url(run.info.experiment_id, run.info.run_id)
        log.info("MLflow run %s: %s", run.info.run_name, url)
        lines.append(f"- [{run.info.run_name}]({url}) ({run.info.status.lower()})")
    return "\n".join(lines) or "(none: no stage that ran in this flow run logs to MLflow)"


def figure(entry: Any) -> str:
    """A figure of metrics/ as text: `0.917 ± 0.021` (mean ± std over partitions), `0.917 [0.88, 0.95]`
    (a bootstrap value and interval), or a plain number."""
    if isinstance(entry, dict):
        value = entry.get("mean", entry.get("value"))
        if not isinstance(value, (int, float)):
            return "-"
        if entry.get("std") is not None:
            return f"{value:.3f} ± {entry['std']:.3f}"
        return f"{value:.3f}" + (f" [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]" if entry.get("ci") else "")
    return f"{entry:.3f}" if isinstance(entry, (int, float)) else "-"


def metrics_table(metrics: dict[str, dict]) -> str:
    """Markdown: accuracy and UAR of each evaluated model (over the partitions), and of each quantized
    variant after quantization-aware training, with its weight size."""
    rows = []
    for case, files in metrics.items():
        for name, m in files.get("evaluate", {}).get("models", {}).items():
            rows.append(f"| {case} | {name} | {figure(m.get('accuracy'))} | {figure(m.get('uar'))} | |")
        for name, m in files.get("quantize", {}).get("variants", {}).items():
            scored = m.get("qat", m)
            rows.append(f"| {case} | {name} (quantized) | {figure(scored.get('accuracy'))} | {figure(scored.get('uar'))} "
                        f"| {m.get('weights_kib', '-')} |")
    if not rows:
        return "(no metrics/<case>/evaluate.json or quantize.json yet)"
    return "\n".join(["| case | model | accuracy | UAR | weights (KiB) |", "|---|---|---|---|---|", *rows])


@flow(name="pipeline")
def pipeline(targets: list[str] | None = None, force: bool = False, rerun: list[str] | None = None,
             fan_out_stages: list[str] = ["fetch", "featurize"], fetch_retries: int = 2,
             task_runner: str | None = None, root: str = ".") -> dict[str, dict]:
    """Reproduce the DVC pipeline (or `targets` and their upstream stages) stage by stage in DAG
    order; `force` runs every stage (`dvc repro --force`), `rerun` only the stages named (or their
    foreach groups, e.g. `benchmark`) even if unchanged. Returns {case: {"evaluate": ..., "quantize": ...}}
    for the cases of the stages it covered."""
    log = get_run_logger()
    path = Path(root).resolve()
    run_id, _ = current_run()
    steps = stage_generations(path, targets)
    forced = {s for step in steps for s in step if force or s in (rerun or []) or stage_group(s) in (rerun or [])}
    log.info("%d DVC stages in %d steps from %s (targets: %s)", sum(map(len, steps)), len(steps),
             path / "dvc.yaml", ", ".join(targets) if targets else "all")
    outcomes: dict[str, str] = {}
    for step in steps:
        side_by_side = [s for s in step if stage_group(s) in fan_out_stages]
        if len(side_by_side) > 1:
            outcomes |= run_step_side_by_side(path, side_by_side, run_id, task_runner, forced, fetch_retries)
        for stage in step:
            if stage in outcomes:
                continue
            outcomes[stage] = outcome_of(with_retries(repro_stage, stage, fetch_retries), root=str(path), stage=stage,
                                         run_id=run_id, force=stage in forced)
    metrics = read_metrics(path, stage_cases(outcomes, path))
    stages = "\n".join(f"| `{s}` | {'**ran**' if STATE_NAME[o] == 'Completed' else STATE_NAME[o]} | {OUTCOME_TEXT[o]} |"
                       for s, o in outcomes.items())
    create_markdown_artifact(
        key="pipeline-run", description="DVC stages, MLflow runs and metrics of this pipeline run",
        markdown=f"# Pipeline run\n\nRepository: `{path}`\n\n| stage | state | what happened |\n|---|---|---|\n{stages}\n\n"
                 f"## MLflow runs\n\n{mlflow_links(path, run_id)}\n\n"
                 f"## Metrics of {', '.join(sorted(metrics)) or 'no case'}\n\n{metrics_table(metrics)}\n")
    ran = [s for s, o in outcomes.items() if o in ("ran", "committed")]
    log.info("done: %d stages ran (%s), %d reused", len(ran), ", ".join(ran) or "none", len(outcomes) - len(ran))
    return metrics


# ---------------------------------------------------------------------------------------------
# The sweep

def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid's values: {"a": [1, 2], "b": [3]} -> [{a: 1, b: 3}, {a: 2, b: 3}]."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep grid: {key} must map to a non-empty list of values")
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def override(key: str, value: Any) -> str:
    """A `dvc exp run -S` override; values as JSON (lists, strings, null), which DVC's parser reads."""
    return f"{key}={json.dumps(value, separators=(',', ':'))}"


def queue_status(root: Path, env: dict) -> dict[str, str]:
    """Experiment name -> status (Queued, Running, Success, Failed) from `dvc queue status`."""
    statuses = {}
    for line in dvc(root, env, "queue", "status", stdout_only=True).splitlines():
        parts = line.split()
        if len(parts) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", parts[0]):
            statuses[parts[1]] = parts[-1]
    return statuses


@task(name="dvc-exp-queue", task_run_name="queue {name}", cache_policy=NO_CACHE)
def queue_experiment(root: str, name: str, point: dict[str, Any], targets: list[str] | None, run_id: str | None) -> None:
    """`dvc exp run --queue -n <name> -S key=value ... [targets]`."""
    sets = [arg for key, value in point.items() for arg in ("-S", override(key, value))]
    dvc(Path(root), stage_env(Path(root), run_id), "exp", "run", "--queue", "-n", name, *sets, *(targets or []))
    get_run_logger().info("queued DVC experiment %s: %s", name, ", ".join(override(k, v) for k, v in point.items()))


@task(name="dvc-queue", cache_policy=NO_CACHE)
def run_queue(root: str, names: list[str], jobs: int, timeout_minutes: float, run_id: str | None) -> dict[str, str]:
    """`dvc queue start -j <jobs>`, then wait until every named experiment has finished."""
    log = get_run_logger()
    path = Path(root)
    env = stage_env(path, run_id)
    log.info(dvc(path, env, "queue", "start", "-j", str(jobs)).strip())
    deadline, last = time.monotonic() + timeout_minutes * 60, None
    while True:
        queue = queue_status(path, env)
        statuses = {name: queue.get(name, "Unknown") for name in names}
        if statuses != last:
            log.info("DVC queue: %s", ", ".join(f"{n} {s}" for n, s in statuses.items()))
            last = statuses
        if all(s in DONE for s in statuses.values()):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"DVC experiments still running after {timeout_minutes} min: "
                               f"{', '.join(n for n, s in statuses.items() if s not in DONE)} "
                               "(`dvc queue status`, `dvc queue logs <name>`, `dvc queue kill <name>`)")
        time.sleep(5)
    for name, status in statuses.items():
        if status != "Success":
            log.error("experiment %s failed:\n%s", name, tail(subprocess.run(
                [sys.executable, "-m", "dvc", "queue", "logs", name], cwd=path, env=env,
                capture_output=True, text=True).stdout))
    return statuses


def experiments_by_name(show: list[dict], names: list[str]) -> dict[str, dict]:
    """Name -> the experiment's entry in `dvc exp show --json` (rev, params, metrics, baseline)."""
    found = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") in names:
                    found[rev["name"]] = dict(rev=rev["rev"], baseline=baseline["rev"], data=rev.get("data") or {})
    return found


def param_value(params: dict, key: str) -> Any:
    """The value at a dotted key of `dvc exp show`'s params (params.yaml first, then any file)."""
    files = sorted(params, key=lambda f: f != "params.yaml")
    for f in files:
        node: Any = (params[f] or {}).get("data") or {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def point_name(point: dict[str, Any]) -> str:
    """A run name from a grid point: each key by its shortest unique dotted suffix
    ({"ilp.size_lambda": 0.25, "quantize.qat.epochs": 0} -> `size_lambda=0.25 epochs=0`)."""
    keys = list(point)

    def short(key: str) -> str:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(k != key and (k == suffix or k.endswith("." + suffix)) for k in keys):
                return suffix
        return key

    return " ".join(f"{short(k)}={json.dumps(v, separators=(',', ':')).strip(chr(34))}" for k, v in point.items())


def flat_metrics(metrics: dict[str, dict], cases: set[str] | None = None) -> dict[str, float]:
    """Numeric leaves of the metrics files of `cases` (all: None), keyed `<case>/<file>/<path>`
    (metrics/covid/quantize.json: variants.mp.accuracy -> covid/quantize/variants/mp/accuracy);
    per-layer `bits` maps are left out."""
    out: dict[str, float] = {}

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "bits":
                    walk(v, f"{key}/{k}")
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            out[key] = float(node)

    for path, entry in metrics.items():
        parts = [p for p in Path(path).with_suffix("").parts if p != "metrics"]
        if cases is None or parts[0] in cases:
            walk((entry or {}).get("data") or {}, "/".join(parts))
    return out


@task(name="mlflow-log-experiment", task_run_name="mlflow {name}", cache_policy=NO_CACHE)
def log_experiment(uri: str, experiment_id: str, parent_run_id: str, name: str, status: str, point: dict,
                   exp: dict | None, targets: list[str] | None, cases: list[str], run_id: str | None,
                   run_url: str | None) -> str:
    """One MLflow run (child of the sweep's run, by explicit id), named after its point of the grid,
    with a DVC experiment's params and the metrics of the targeted `cases`."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    tags = {"mlflow.parentRunId": parent_run_id, "dvc.exp_name": name, "dvc.queue_status": status}
    if run_id:
        tags["prefect.flow_run_id"] = run_id
    note = (f"**{point_name(point)}** ({', '.join(override(k, v) for k, v in point.items())}): DVC experiment "
            f"`{name}`, {status.lower()}; `dvc exp show`, `dvc exp apply {name}`. Metrics of {', '.join(cases)}.")
    if exp:
        tags |= {"dvc.exp_rev": exp["rev"], "dvc.baseline_rev": exp["baseline"]}
    if run_url:
        tags["prefect.flow_run_url"] = run_url
        note += f"\n\nStarted by [Prefect flow run {run_id}]({run_url})."
    tags[tracking.NOTE_TAG] = note
    run = client.create_run(experiment_id, run_name=point_name(point), tags=tags)
    now = int(time.time() * 1000)
    # The params as DVC recorded them for the experiment (the requested point if it failed before that).
    ran = (exp or {}).get("data", {}).get("params") or {}
    values = {k: param_value(ran, k) if ran else v for k, v in point.items()}
    params = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()]
    params.append(Param("dvc.targets", " ".join(targets or []) or "all"))
    found = flat_metrics((exp or {}).get("data", {}).get("metrics") or {}, set(cases))
    metrics = [Metric(k, v, now, 0) for k, v in found.items()]
    client.log_batch(run.info.run_id, params=params)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
    client.set_terminated(run.info.run_id, "FINISHED" if status == "Success" and exp else "FAILED")
    return run.info.run_id


def ensure_case_experiments(root: Path) -> None:
    """Create each case's MLflow experiment before DVC experiments run in parallel temporary copies
    (so none races to create it, nor puts its artifacts in a copy that DVC deletes)."""
    for case in load_params(root / "params.yaml").get("cases") or {}:
        tracking.set_experiment(case, root)


@flow(name="sweep")
def sweep(grid: dict[str, list] = {"ilp.size_lambda": [0.25, 0.5, 0.75]}, targets: list[str] | None = None,
          jobs: int = 2, timeout_minutes: float = 360, task_runner: str | None = None, root: str = ".") -> list[dict]:
    """Run one DVC experiment per point of `grid` (dotted params.yaml keys -> values) through DVC's
    queue (`jobs` at once), then log each as an MLflow run under one parent run of experiment
    tinym2net-sweep, tagged with this flow run, each named after its params and holding the metrics of
    the cases `targets` cover (all cases without targets); returns [{name, status, params, mlflow_run_id}]."""
    from mlflow import MlflowClient

    log = get_run_logger()
    path = Path(root).resolve()
    run_id, run_url = current_run()
    env = stage_env(path, run_id)
    if subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=path, capture_output=True).returncode:
        raise DvcError(f"{path}: DVC experiments branch from a git commit; commit the project first")
    points = grid_points(grid)
    cases = sorted(stage_cases([s for step in stage_generations(path, targets) for s in step], path))
    prefix = f"sweep-{(run_id or 'local')[:8]}"
    names = [f"{prefix}-{i}" for i in range(len(points))]
    ensure_case_experiments(path)
    for name, point in zip(names, points):
        queue_experiment(str(path), name, point, targets, run_id)
    statuses = run_queue(str(path), names, jobs, timeout_minutes, run_id)
    found = experiments_by_name(json.loads(dvc(path, env, "exp", "show", "--json", stdout_only=True)), names)

    uri = mlflow_uri(path)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(SWEEP_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        SWEEP_EXPERIMENT, artifact_location=(path / "mlartifacts" / "sweep").as_uri())
    tracking.describe_experiment(client, experiment_id, SWEEP_NOTE)
    tags = {"prefect.flow_run_id": run_id or "", "dvc.grid": json.dumps(grid)}
    note = (f"**Sweep** over `{json.dumps(grid)}`, targets: {', '.join(targets or []) or 'all'} "
            f"(metrics of {', '.join(cases)}): {len(points)} DVC experiments `{prefix}-<i>`.")
    if run_url:
        tags["prefect.flow_run_url"] = run_url
        note += f"\n\nStarted by [Prefect flow run {run_id}]({run_url})."
    parent = client.create_run(experiment_id, run_name=f"sweep {flow_run.get_name() or prefix}", tags=tags)
    mlflow_ids = fan_out(task_runner, [
        (log_experiment, dict(uri=uri, experiment_id=experiment_id, parent_run_id=parent.info.run_id, name=name,
                              status=statuses[name], point=point, exp=found.get(name), targets=targets, cases=cases,
                              run_id=run_id, run_url=run_url))
        for name, point in zip(names, points)])
    tracking.link_children(client, parent, note)
    failed = [n for n in names if statuses[n] != "Success"]
    client.set_terminated(parent.info.run_id, "FAILED" if failed else "FINISHED")

    rows = [dict(name=n, status=statuses[n], params=p, mlflow_run_id=m) for n, p, m in zip(names, points, mlflow_ids)]
    table = "\n".join(f"| {r['name']} | {', '.join(override(k, v) for k, v in r['params'].items())} | {r['status']} "
                      f"| [{point_name(r['params'])}]({tracking.run_url(experiment_id, r['mlflow_run_id'])}) |" for r in rows)
    compare = tracking.compare_url(experiment_id, mlflow_ids)
    create_markdown_artifact(
        key="sweep-run", description="DVC experiments of this sweep and their MLflow runs",
        markdown=f"# Sweep\n\nGrid: `{json.dumps(grid)}`, targets: {', '.join(targets or []) or 'all'} "
                 f"(metrics of {', '.join(cases)})\n\n"
                 f"| DVC experiment | params | status | MLflow run |\n|---|---|---|---|\n{table}\n\n"
                 f"[Compare these runs in MLflow]({compare}) (experiment {SWEEP_EXPERIMENT}); in DVC: `dvc exp show`.\n")
    log.info("sweep logged to MLflow: %s (parent run %s)", compare, parent.info.run_id)
    if failed:
        raise DvcError(f"DVC experiments failed: {', '.join(failed)} (`dvc queue logs <name>`)")
    return rows


# ---------------------------------------------------------------------------------------------
# The Pi benchmark: the flow a worker on the Pi runs, deployed and started by the DVC `benchmark`
# stage (benchmark.runner: pi) with the artifacts' MLflow run ids; scheduled weekly as the pipeline
# flow with `rerun: [benchmark]` (prefect.yaml).

from tinym2net.pi_runner import benchmark  # noqa: E402


__all__ = ["pipeline", "sweep", "benchmark"]
