"""Stage `scale`: the architecture `train` trains -> models/<case>/architecture.json, metrics/<case>/scale.json.

`scale.profile: null`: the branches of `train` as given (the paper's), with their FP32 costs. A device profile
(params.yaml `profiles`): the mixed-integer program of `tinym2net.scale` chooses each branch's hyperparameters from
`scale.cases.<case>.<family>` and each layer's width from `ilp.bit_choices` under the profile's limits; the chosen
network is checked against the cost model before it is written.
"""
from pathlib import Path

from tinym2net import cost
from tinym2net import scale as scaling
from tinym2net.errors import ParamsError
from tinym2net.io import Outputs
from tinym2net.model import build
from tinym2net.params import Params
from tinym2net.stage import log, run_stage

OUTPUTS = ["models/{case}/architecture.json", "metrics/{case}/scale.json"]


def figures(costs: cost.Costs, bits, storage: str = "packed") -> dict:
    """The cost model's headline figures of a network at `bits` (None: FP32)."""
    return {"flash_bytes": costs.flash_bytes(bits), "peak_ram_bytes": costs.peak_ram_bytes(bits, storage),
            "peak_ram_packed_bytes": costs.peak_ram_bytes(bits), "peak_ram_int8_bytes": costs.peak_ram_bytes(bits, "int8"),
            "peak_step": costs.peak_step(bits, storage), "macs": costs.macs(), "bops": costs.bops(bits),
            "params": sum(l.params for l in costs.layers)}


def scale(params: Params, case: str, root: Path = Path(".")) -> None:
    cfg, info = params.scale, params.cases[case]
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    train = params.train[case].model_dump(mode="json")
    shapes = {m: params.input_shape(case, m) for m in info.modalities}
    meta = {"case": case, "variant": "mp", "classes": list(info.classes)}
    profile = params.profile()
    if profile is None:
        model = build(train, shapes, len(info.classes), key=f"train.{case}").eval()
        arch = {"profile": None, "family": None, "branches": train["branches"], "head": train["head"]}
        report = {"profile": None, "architecture": f"train.{case}.branches", "bits": None,
                  **figures(cost.analyse(model, shapes, **meta), None)}
    else:
        family = (cfg.cases.get(case) or {}).get(cfg.family)
        if family is None:
            raise ParamsError(f"params.yaml: scale.cases.{case}.{cfg.family}: missing (the grid scale.family searches)")
        options = {m: scaling.candidates(train["branches"][m], cfg.family, family.fixed, family.grid)
                   for m in info.modalities}
        inst = scaling.Instance(train, shapes, len(info.classes), options, list(params.ilp.bit_choices),
                                profile.activation_storage, meta)
        result = scaling.choose(inst, profile, cfg.capacity, cfg.perturbation_weight,
                                what=f"scale {case} (profile {cfg.profile}, family {cfg.family}): ")
        branches = {m: inst.cands[m][i].spec for m, i in result["chosen"].items()}
        model = build({**train, "branches": branches}, shapes, len(info.classes), key=f"scale.cases.{case}").eval()
        got = figures(cost.analyse(model, shapes, **meta), result["bits"], profile.activation_storage)
        over = [k for k, limit in (("flash_bytes", profile.flash_bytes), ("peak_ram_bytes", profile.ram_bytes),
                                   ("macs", profile.macs), ("bops", profile.bops))
                if limit is not None and got[k] + (cost.HEADER_SLACK if k == "flash_bytes" else 0) > limit]
        if over:
            raise scaling.ScaleInfeasible(f"scale {case}: the MILP's network is over its {over[0]} limit by the cost "
                                          f"model ({got[over[0]]}); this is a bug in the linearisation")
        arch = {"profile": cfg.profile, "family": cfg.family, "branches": branches, "head": train["head"]}
        report = {"profile": cfg.profile, "limits": profile.model_dump(), "family": cfg.family,
                  "capacity": cfg.capacity, "perturbation_weight": cfg.perturbation_weight,
                  "hyperparameters": {m: inst.cands[m][i].hyper for m, i in result["chosen"].items()},
                  "branches": branches, "bits": result["bits"], **got, "objective": result["objective"],
                  "candidates": {m: len(c) for m, c in inst.cands.items()}, "solve_seconds": round(result["seconds"], 3)}
    outs.write_json(f"models/{case}/architecture.json", arch)
    outs.write_json(f"metrics/{case}/scale.json", report)
    log.info("scale %s: %s; Flash %d B, peak RAM %d B, %d MACs", case,
             "train's branches" if profile is None else f"{report['hyperparameters']} under {cfg.profile}",
             report["flash_bytes"], report["peak_ram_bytes"], report["macs"])


if __name__ == "__main__":
    run_stage("scale", scale)
