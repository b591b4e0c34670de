"""README screenshots (PNG) taken in headless Chromium: the DVC plots page, report pages, MLflow UI pages.

Run from the repository root (needs Debian's `chromium`, which `make test` installs):

    python scripts/screenshots.py dvc                            # `dvc plots show` -> docs/screenshots/dvc-plots.png
    python scripts/screenshots.py page reports/covid/budget.html  # local files or URLs -> docs/screenshots/budget.png
    python scripts/screenshots.py mlflow covid-quantize=quantize-covid 'covid-runs=#/experiments/1/runs'

`mlflow` starts `mlflow server` on 127.0.0.1 (a free port) over the store (`--store`; default
MLFLOW_TRACKING_URI, or sqlite:///<repo>/mlflow.db), opens each NAME=TARGET page, where TARGET is a
run name (the latest run so named, in any experiment: its run page) or a URL fragment or path of the
UI, waits until the page shows the run name (or `--wait-text`), saves NAME.png, then stops the
server. The browser has no network beyond loopback, like the browser tests.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tinym2net.browser import render_plots, screenshot
from tinym2net.errors import TinyM2NetError

ROOT = Path(__file__).resolve().parents[1]
# MLflow 3.17's UI opens its Assistant panel and a "Detect Issues" tip on a first visit; not in a screenshot.
MLFLOW_UI_STORAGE = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false",
                     "mlflow.detectIssues.guidanceShown_v1": "true"}
log = logging.getLogger("screenshots")


def shoot_dvc(repo: Path, out_dir: Path, timeout_s: float) -> None:
    """`dvc plots show` into a temporary folder, every plot drawn, one full-page PNG."""
    with tempfile.TemporaryDirectory(prefix="dvc-plots-") as tmp:
        subprocess.run(["dvc", "plots", "show", "-o", tmp], cwd=repo, check=True, stdout=subprocess.DEVNULL)
        page = render_plots(Path(tmp) / "index.html", out_dir / "dvc-plots.png", timeout_s)
    missing = sorted(set(page.targets) - set(page.plots))
    if missing or page.errors:
        raise TinyM2NetError(f"dvc plots: {len(missing)} plot(s) did not draw {missing}; page errors: {page.errors}")
    log.info("wrote %s (%d plots, %d images)", out_dir / "dvc-plots.png", len(page.plots), page.images)


def shoot_pages(pages: list[str], out_dir: Path, timeout_s: float) -> None:
    """Each local file or URL -> <out_dir>/<its name>.png."""
    for target in pages:
        url = target if "://" in target else Path(target).resolve().as_uri()
        path = out_dir / f"{Path(target.split('?')[0].rstrip('/')).stem or 'page'}.png"
        screenshot(url, path, timeout_s=timeout_s)
        log.info("wrote %s from %s", path, url)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_server(store: str, artifacts: Path, port: int, logfile) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:<port> over `store`, once it answers /health."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(["mlflow", "server", "--backend-store-uri", store, "--artifacts-destination",
                             str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TinyM2NetError(f"mlflow server exited with {proc.returncode}; see {logfile.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise TinyM2NetError(f"mlflow server did not answer on 127.0.0.1:{port} within 180 s; see {logfile.name}")


def run_page(store: str, run_name: str) -> str:
    """The UI fragment of the latest run named `run_name`, in any experiment of the store."""
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"attributes.run_name = {json.dumps(run_name)}",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TinyM2NetError(f"no MLflow run named {run_name!r} in {store}")
    return f"#/experiments/{runs[0].info.experiment_id}/runs/{runs[0].info.run_id}"


def shoot_mlflow(shots: list[str], store: str, repo: Path, out_dir: Path, wait_text: str | None, timeout_s: float,
                 storage: dict[str, str]) -> None:
    """Each NAME=TARGET (run name, or URL fragment/path) of the MLflow UI -> <out_dir>/NAME.png."""
    targets = []
    for shot in shots:
        name, sep, target = shot.partition("=")
        if not sep or not name or not target:
            raise TinyM2NetError(f"{shot!r}: expected NAME=RUN_NAME or NAME=#/fragment")
        text = wait_text or (None if target.startswith(("#", "/")) else target)
        targets.append((name, target if target.startswith(("#", "/")) else run_page(store, target), text))
    port = free_port()
    with tempfile.NamedTemporaryFile("w", prefix="mlflow-server-", suffix=".log", delete=False) as logfile:
        proc = mlflow_server(store, repo / "mlartifacts", port, logfile)
        try:
            for name, target, text in targets:
                url = f"http://127.0.0.1:{port}/{target.lstrip('/')}"
                wait = f"document.body.innerText.includes({json.dumps(text)})" if text else \
                    "document.body.innerText.trim().length > 0"
                screenshot(url, out_dir / f"{name}.png", wait_for=wait, timeout_s=timeout_s,
                           local_storage={**MLFLOW_UI_STORAGE, **storage})
                log.info("wrote %s from %s", out_dir / f"{name}.png", url)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    os.unlink(logfile.name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the project (default: this repository)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "screenshots", help="where the PNGs go")
    parser.add_argument("--timeout", type=float, default=90, help="seconds a page may take to render")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("dvc", help="the page of `dvc plots show`")
    pages = sub.add_parser("page", help="local files (reports/...) or URLs")
    pages.add_argument("pages", nargs="+")
    ui = sub.add_parser("mlflow", help="MLflow UI pages: NAME=RUN_NAME or NAME=#/fragment")
    ui.add_argument("shots", nargs="+")
    ui.add_argument("--store", help="tracking URI (default: MLFLOW_TRACKING_URI, or sqlite:///<repo>/mlflow.db)")
    ui.add_argument("--wait-text", help="text the page must show before the screenshot (default: the run name)")
    ui.add_argument("--local-storage", action="append", default=[], metavar="KEY=VALUE",
                    help="a UI preference to set first (e.g. a dismissed tip); repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.what == "dvc":
            shoot_dvc(args.repo, args.out_dir, args.timeout)
        elif args.what == "page":
            shoot_pages(args.pages, args.out_dir, args.timeout)
        else:
            storage = dict(item.split("=", 1) for item in args.local_storage if "=" in item)
            store = args.store or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{args.repo.resolve() / 'mlflow.db'}"
            shoot_mlflow(args.shots, store, args.repo, args.out_dir, args.wait_text, args.timeout, storage)
    except TinyM2NetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
