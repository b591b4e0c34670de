"""Stage `slice`: raw recordings/videos -> segments, samples and their splits in every partition -> data/interim/<case>/."""
from pathlib import Path

from tinym2net.io import Outputs
from tinym2net.params import Params
from tinym2net.slicing import slice_case, write_interim
from tinym2net.stage import log, run_stage

OUTPUTS = ["data/interim/{case}"]


def slice_stage(params: Params, case: str, root: Path = Path(".")) -> None:
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    segments, samples, split_info = slice_case(params, case, Path(root) / "data" / "raw" / case)
    with outs.directory(f"data/interim/{case}") as out:
        write_interim(out, segments, samples, split_info, list(params.cases[case].modalities), len(params.partitions))
    log.info("slice %s: wrote data/interim/%s (%s split%s, %d samples, partition 0: %s)", case, case,
             split_info["strategy"], ", LEAKY" if split_info["leaky"] else "", len(samples),
             split_info["partitions"][0]["samples"])


if __name__ == "__main__":
    run_stage("slice", slice_stage)
