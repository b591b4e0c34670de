"""Stage `ilp`: bit width per layer under size, BOPS and latency budgets, or a device profile's Flash, peak-RAM
and BOPS limits (`scale.profile`) -> models/<case>/bits.json.

Also a standalone tool for any network's cost file (the sensitivity.json format):
    python -m pipelines.ilp --sensitivity FILE --out FILE [--size-lambda 0.5 | --size-limit BYTES] ...
"""
import sys
from pathlib import Path

from tinym2net import ilp
from tinym2net.io import Outputs, read_json
from tinym2net.params import Params
from tinym2net.stage import log, run_stage

OUTPUTS = ["models/{case}/bits.json"]


def latency_table(params: Params, root: Path, case: str) -> dict | None:
    """The latency stage's table when `ilp` has a latency limit (else None)."""
    if not ilp.needs_latency(params.ilp):
        return None
    return ilp.read_table(Path(root) / "models" / case / "latency.json")


def ilp_stage(params: Params, case: str, root: Path = Path(".")) -> None:
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    sens = read_json(Path(root) / "models" / case / "sensitivity.json")
    result = ilp.allocate(params.ilp, sens, latency_table=latency_table(params, root, case), profile=params.profile())
    outs.write_json(f"models/{case}/bits.json", result)
    if params.profile() is not None:
        log.info("ilp %s: profile %s: %s", case, params.scale.profile,
                 ", ".join(f"{k} {v['total']:.0f} / {v['limit']:.0f} {v['unit']}" for k, v in result["budgets"].items()))
    log.info("ilp %s: %s; size %.1f KiB, %.3g BOPS; wrote models/%s/bits.json", case,
             ", ".join(f"{b} bits: {list(result['bits'].values()).count(b)} layers" for b in params.ilp.bit_choices),
             result["size_bytes"] / 1024, result["bops"], case)


if __name__ == "__main__":
    if "--sensitivity" in sys.argv[1:]:
        raise SystemExit(ilp.main(sys.argv[1:]))
    run_stage("ilp", ilp_stage)
