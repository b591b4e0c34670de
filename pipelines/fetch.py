"""Stage `fetch`: the raw data of one case from the source params.yaml names -> data/raw/<case>/,
with what was kept and skipped in metrics/<case>/fetch.json."""
from pathlib import Path

from tinym2net.io import Outputs
from tinym2net.params import Params
from tinym2net.sources import Context, get_fetcher, write_manifest
from tinym2net.stage import log, run_stage

OUTPUTS = ["data/raw/{case}", "metrics/{case}/fetch.json"]


def fetch(params: Params, case: str, root: Path = Path(".")) -> None:
    cfg = params.fetch[case]
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    with outs.directory(f"data/raw/{case}") as out:
        ctx = Context(case, params.cases[case], out, params.seed.data, params.limits, cfg.on_error)
        rows = get_fetcher(cfg.source)(getattr(cfg, cfg.source), ctx)
        summary = write_manifest(ctx, rows)
    outs.write_json(f"metrics/{case}/fetch.json", {"source": cfg.source, **summary})
    log.info("fetch %s: source %s -> data/raw/%s: %d subjects (%s)%s", case, cfg.source, case, summary["subjects"],
             ", ".join(f"{n} {c}" for c, n in summary["classes"].items()),
             f"; {summary['skipped']} skipped (see metrics/{case}/fetch.json)" if summary["skipped"] else "")


if __name__ == "__main__":
    run_stage("fetch", fetch)
