"""Stage `fetch`: get the raw data of one case from the source params.yaml names -> data/raw/<case>/."""
from pathlib import Path

from tinym2net.config import section
from tinym2net.io import atomic_dir
from tinym2net.sources import get_fetcher
from tinym2net.stage import log, run_stage


def fetch(params: dict, case: str, root: Path = Path(".")) -> None:
    fetcher = get_fetcher(params, case)
    out = root / "data" / "raw" / case
    with atomic_dir(out) as tmp:
        fetcher(section(params, f"fetch.{case}"), params["cases"][case], tmp, params["seed"])
    log.info("fetch %s: source %s -> %s", case, params["fetch"][case]["source"], out)


if __name__ == "__main__":
    run_stage("fetch", fetch)
