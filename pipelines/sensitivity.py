"""Stage `sensitivity`: per-layer Hessian traces (Hutchinson) and Omega per bit width of the deployed
model (partition 0's) -> models/<case>/sensitivity.json."""
import copy
from pathlib import Path

import torch.nn.functional as F

from tinym2net import cost, hessian
from tinym2net.bitpack import FLOAT_BITS
from tinym2net.io import Outputs, file_md5
from tinym2net.params import Params
from tinym2net.quant import fold_batchnorm
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model

OUTPUTS = ["models/{case}/sensitivity.json"]
PARTITION = 0  # the deployed model is partition 0's


def sensitivity(params: Params, case: str, root: Path = Path(".")) -> None:
    cfg, bits = params.sensitivity, params.ilp.bit_choices
    outs = Outputs(root, [o.format(case=case) for o in OUTPUTS])
    info = params.cases[case]
    model = load_model(Path(root) / "models" / case / "trained" / f"p{PARTITION}" / f"{info.models[0]}.pt")
    # the Hessian of the function that gets quantized: BatchNorm folded into its convolution
    folded = fold_batchnorm(copy.deepcopy(model)).eval()
    features = Path(root) / "data" / "features" / case / "features.npz"
    data = Features(features, model.modalities, PARTITION)
    batches = data.batches("train", model.modalities, cfg.batch_size, cfg.batches, params.seed.train)
    layers, traces = hessian.sensitivity(folded, F.cross_entropy, batches, bit_choices=bits, tol=cfg.tol,
                                         min_iter=cfg.min_iter, max_iter=cfg.max_iter, seed=params.seed.train)
    # what the Flash and peak-RAM limits of the ILP need (cost.py): per-layer counts, the measured header, the schedule
    costs = cost.analyse(folded, data.input_shapes(), case, "mp", list(info.classes))
    counts = {l["name"]: l for l in costs.layer_table()}
    layers = [{**l, "out_channels": counts[l["name"]]["out_channels"], "bias": counts[l["name"]]["bias"]} for l in layers]
    widest = max(b for b in bits if b != FLOAT_BITS)
    outs.write_json(f"models/{case}/sensitivity.json", {
        "features": file_md5(features), "iterations": traces.iterations, "converged": traces.converged,
        "tol": cfg.tol, "layers": layers, "ties": hessian.ties(folded),
        "flash": {"header_bytes": costs.header_bytes(widest), "header_slack": cost.HEADER_SLACK}, "memory": costs.memory_schedule()})
    if not traces.converged:
        worst = max(traces.mean, key=traces.relative_error)
        log.warning("sensitivity %s: the Hutchinson estimate did not converge in %d iterations (sensitivity.max_iter): "
                    "%s has a relative standard error of %.0f%% (sensitivity.tol %.0f%%)", case, traces.iterations,
                    worst, 100 * traces.relative_error(worst), 100 * cfg.tol)
    top = max(layers, key=lambda l: l["omega"][str(min(bits))])
    log.info("sensitivity %s: %d layers in %d iterations, most sensitive at %d bits: %s", case, len(layers),
             traces.iterations, min(bits), top["name"])


if __name__ == "__main__":
    run_stage("sensitivity", sensitivity)
