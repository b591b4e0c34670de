"""Stage `sensitivity`: per-layer Hessian traces (Hutchinson) and Omega per bit width -> models/<case>/sensitivity.json."""
import copy
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from tinym2net import hessian
from tinym2net.config import get, positive, section
from tinym2net.io import write_json
from tinym2net.quant import fold_batchnorm
from tinym2net.stage import log, run_stage
from tinym2net.training import Features, load_model


def train_batches(data: Features, modalities, batch_size: int, count: int, seed: int) -> list:
    """`count` shuffled (inputs, targets) batches from the train split (all of it if count is 0)."""
    rows = np.random.default_rng(seed).permutation(data.rows("train"))
    batches = [(data.batch(rows[i:i + batch_size], modalities), data.y[rows[i:i + batch_size]])
               for i in range(0, len(rows), batch_size)]
    return batches[:count] if count else batches


def sensitivity(params: dict, case: str, root: Path = Path(".")) -> None:
    cfg = section(params, "sensitivity")
    bits = get(params, "ilp.bit_choices")
    model = load_model(root / "models" / case / "fp32" / "fused.pt")
    # the Hessian of the function that gets quantized: BatchNorm folded into its convolution
    folded = fold_batchnorm(copy.deepcopy(model)).eval()
    data = Features(root / "data" / "features" / case / "features.npz", model.modalities)
    batches = train_batches(data, model.modalities, positive(cfg, "batch_size", integer=True),
                            positive(cfg, "batches", integer=True), params["seed"])
    layers = hessian.sensitivity(folded, F.cross_entropy, batches, bit_choices=bits,
                                 tol=positive(cfg, "tol"), max_iter=positive(cfg, "max_iter", integer=True),
                                 seed=params["seed"])
    out = root / "models" / case / "sensitivity.json"
    write_json(out, {"layers": layers, "ties": hessian.ties(folded)})
    top = max(layers, key=lambda l: l["omega"][str(min(bits))])
    log.info("sensitivity %s: %d layers, most sensitive at %d bits: %s; wrote %s",
             case, len(layers), min(bits), top["name"], out)


if __name__ == "__main__":
    run_stage("sensitivity", sensitivity)
