"""Stage `slice`: raw recordings/videos -> segments + sample manifest with splits -> data/interim/<case>/."""
from pathlib import Path

from tinym2net.config import section
from tinym2net.io import atomic_dir
from tinym2net.slicing import SLICERS, write_interim
from tinym2net.stage import log, run_stage


def slice_case(params: dict, case: str, root: Path = Path(".")) -> None:
    info = params["cases"][case]
    raw, out = root / "data" / "raw" / case, root / "data" / "interim" / case
    segments, samples, split_info = SLICERS[info["kind"]](section(params, f"slice.{case}"), info, raw,
                                                        params["seed"])
    with atomic_dir(out) as tmp:
        summary = write_interim(tmp, segments, samples, split_info, info["modalities"])
    log.info("slice %s: read %s, wrote %s (%s split, samples %s)", case, raw, out,
             summary["strategy"], summary["samples"])


if __name__ == "__main__":
    run_stage("slice", slice_case)
