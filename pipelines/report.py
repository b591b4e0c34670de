"""Stage `report`: reports/results.md from every case's metrics (the budget view included), refusing figures
computed on different data."""
from pathlib import Path

from tinym2net.io import Outputs, read_json
from tinym2net.params import Params
from tinym2net.report import check_same_data, results_md
from tinym2net.stage import log, run_stage

OUTPUTS = ["reports/results.md"]
FILES = ["train/p0.json", "evaluate.json", "quantize.json", "export.json", "benchmark.json"]


def report(params: Params, root: Path = Path(".")) -> None:
    outs = Outputs(root, OUTPUTS)
    cases = {}
    for case in params.cases:
        files = {}
        for name in FILES:
            path = Path(root) / "metrics" / case / name
            files[f"metrics/{case}/{name}"] = read_json(path) if path.is_file() else None
        check_same_data(case, files)
        cases[case] = files
    with outs.file("reports/results.md") as fh:
        fh.write(results_md(cases))
    log.info("report: read the metrics of %s, wrote reports/results.md", ", ".join(cases))


if __name__ == "__main__":
    run_stage("report", report, case_optional=True)
