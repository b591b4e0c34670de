"""Stage `ilp`: bit width per layer under size and BOPS budgets -> models/<case>/bits.json.

Also a standalone tool for any network's cost file (the sensitivity.json format):
    python -m pipelines.ilp --sensitivity FILE --out FILE [--size-lambda 0.5 | --size-limit BYTES] ...
"""
import sys
from pathlib import Path

from tinym2net import ilp
from tinym2net.config import section
from tinym2net.io import read_json, write_json
from tinym2net.latency import read_table
from tinym2net.stage import log, run_stage


def pins(layers: list[dict], bits: int | None) -> dict[str, int]:
    """The first convolution of every branch and the output layer, pinned at `bits`."""
    if not bits:
        return {}
    names = [l["name"] for l in layers]
    firsts = {n for n in names if n.startswith("branches.") and ".features.conv1." in n}
    return {n: bits for n in [*sorted(firsts), names[-1]]}


def allocate(params: dict, sens: dict, size_lambda=None, latency_table: dict | None = None) -> dict:
    """Solve the ILP with params.yaml's `ilp` settings (optionally another size lambda); with a latency
    limit, `latency_table` (the latency stage's) is budgeted too."""
    cfg = section(params, "ilp")
    size = {"size_limit": cfg.get("size_limit"), "size_lambda": cfg.get("size_lambda")}
    if size_lambda is not None:
        size = {"size_limit": None, "size_lambda": size_lambda}
    if not cfg.get("tie_depthwise", True):
        sens = {**sens, "ties": []}
    limits = {**size, "bops_limit": cfg.get("bops_limit"), "bops_lambda": cfg.get("bops_lambda"),
              "pins": pins(sens["layers"], cfg.get("pin_bits"))}
    if cfg.get("latency_limit") is not None or cfg.get("latency_lambda") is not None:
        limits["budgets"] = ilp.latency_budgets(sens, cfg["bit_choices"], latency_table, cfg.get("latency_limit"),
                                                cfg.get("latency_lambda"), **limits)
    return ilp.solve(sens, cfg["bit_choices"], **limits)


def latency_table(params: dict, root: Path, case: str) -> dict | None:
    """The latency stage's table when `ilp` has a latency limit (else None)."""
    cfg = section(params, "ilp")
    if cfg.get("latency_limit") is None and cfg.get("latency_lambda") is None:
        return None
    return read_table(root / "models" / case / "latency.json")


def ilp_stage(params: dict, case: str, root: Path = Path(".")) -> None:
    sens = read_json(root / "models" / case / "sensitivity.json")
    result = allocate(params, sens, latency_table=latency_table(params, root, case))
    out = root / "models" / case / "bits.json"
    write_json(out, result)
    log.info("ilp %s: %s; size %.1f KiB, %.3g BOPS; wrote %s", case,
             ", ".join(f"{b} bits: {list(result['bits'].values()).count(b)} layers" for b in params["ilp"]["bit_choices"]),
             result["size_bytes"] / 1024, result["bops"], out)


if __name__ == "__main__":
    if "--sensitivity" in sys.argv[1:]:
        raise SystemExit(ilp.main(sys.argv[1:]))
    run_stage("ilp", ilp_stage)
