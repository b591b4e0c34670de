"""Stage `report`: reports/results.md, our figures beside the paper's for every case."""
from pathlib import Path

from tinym2net.io import atomic_file, read_json
from tinym2net.report import results_md
from tinym2net.stage import log, run_stage


def report(params: dict, case: str | None = None, root: Path = Path(".")) -> None:
    cases = {c: (read_json(root / "metrics" / c / "evaluate.json"), read_json(root / "metrics" / c / "quantize.json"))
             for c in params["cases"]}
    out = root / "reports" / "results.md"
    with atomic_file(out) as fh:
        fh.write(results_md(cases))
    log.info("report: read metrics of %s, wrote %s", ", ".join(cases), out)


if __name__ == "__main__":
    run_stage("report", report, case_optional=True)
