"""Stage `budget`: which variant is best for a size or latency budget, at a glance: the deployed artifacts'
accuracy (with its interval) against file size and against latency -> reports/<case>/budget.md, budget.png,
latency.png; the same data as DVC plots (metrics/<case>/budget/) and one `dvc metrics show` row per artifact
(metrics/<case>/headline/deployed/); the table and plots also on the quantize parent run in MLflow."""
import csv
from pathlib import Path

from tinym2net import budget, tracking
from tinym2net.io import Outputs, read_json, write_json
from tinym2net.metrics import headline
from tinym2net.params import Params
from tinym2net.stage import log, run_stage

OUTPUTS = ["reports/{case}/budget.md", "reports/{case}/budget.png", "reports/{case}/latency.png",
           "metrics/{case}/budget", "metrics/{case}/headline/deployed"]


def budget_stage(params: Params, case: str, root: Path = Path(".")) -> None:
    root = Path(root)
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    figures = {name: read_json(root / "metrics" / case / f"{name}.json") for name in ("quantize", "export", "benchmark")}
    rows = budget.rows(figures["quantize"], figures["export"], figures["benchmark"])
    spread = figures["quantize"]["spread"].replace("bootstrap of the test split's", "bootstrap of")
    with outs.file(f"reports/{case}/budget.md") as fh:
        fh.write(budget.markdown(case, rows, spread))
    for name, cost, label, log_x in (("budget", "file_kib", "artifact file (KiB)", True),
                                     ("latency", "p50_ms", "batch-1 latency, median (ms)", False)):
        with outs.file(f"reports/{case}/{name}.png", "wb") as fh:
            budget.plot(rows, cost, fh, f"{case}: deployed accuracy against {label}; line: the Pareto front", label, log_x)
    with outs.directory(f"metrics/{case}/budget") as out:   # DVC plots: every variant, and the front
        columns = ["variant", "file_kib", "accuracy", "accuracy_lo", "accuracy_hi", "p50_ms"]
        for fname, keep in (("points.csv", rows), ("pareto.csv", [r for r in rows if r["front_size"]])):
            with open(out.path(fname), "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(sorted(keep, key=lambda r: r["file_kib"]))
    with outs.directory(f"metrics/{case}/headline/deployed") as out:
        deployed = figures["export"]["variants"]
        for r in rows:
            write_json(out.path(f"{r['variant']}.json"), headline(uar=deployed[r["variant"]]["deployed"]["uar"],
                                                                  acc=deployed[r["variant"]]["deployed"]["accuracy"],
                                                                  kib=r["file_kib"], ms=r["p50_ms"]))
    settings = {"ilp.bit_choices": params.ilp.bit_choices, "ilp.size_lambda": params.ilp.size_lambda,
                "ilp.latency_lambda": params.ilp.latency_lambda, "quantize.qat.epochs": params.quantize.qat.epochs,
                "benchmark.backend": params.benchmark.backend}
    tracking.log_budget(root, case, rows, [outs.path(f"reports/{case}/{n}") for n in ("budget.md", "budget.png", "latency.png")],
                        settings)
    front = [r["variant"] for r in rows if r["front_size"]]
    log.info("budget %s: %d artifacts; size front: %s; wrote reports/%s/budget.md", case, len(rows), ", ".join(front), case)


if __name__ == "__main__":
    run_stage("budget", budget_stage)
