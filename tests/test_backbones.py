"""PhiNet and XiNet backbones: parameter and MAC counts equal micromind's (the independent reference, recorded
in tests/data/micromind_counts.json by scripts/micromind_counts.py), counted here with our own forward hooks."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tinym2net.hessian import layer_macs
from tinym2net.phinet import phinet
from tinym2net.xinet import xinet

REFERENCE = json.loads((Path(__file__).parent / "data" / "micromind_counts.json").read_text())


def _phinet(shape, kw):
    """micromind's PhiNet keywords -> ours (compatibility: no squeeze-excite, no hard swish)."""
    compat = kw.get("compatibility", False)
    features, _ = phinet(tuple(shape), alpha=kw.get("alpha", 0.2), beta=kw.get("beta", 1.0), t0=kw.get("t_zero", 6),
                         num_layers=kw.get("num_layers", 7), downsampling_layers=kw.get("downsampling_layers", [5, 7]),
                         squeeze_excite=not compat and kw.get("squeeze_excite", True),
                         h_swish=not compat and kw.get("h_swish", True))
    return features


def _xinet(shape, kw):
    features, _ = xinet(tuple(shape), alpha=kw.get("alpha", 1.0), gamma=kw.get("gamma", 4),
                        num_layers=kw.get("num_layers", 5), base_filters=kw.get("base_filters", 16))
    return features


def _counts(model: nn.Module, shape) -> tuple[int, int, int]:
    """Parameters, conv/linear MACs (forward hooks) and BatchNorm affine parameters of one sample's forward."""
    params = sum(p.numel() for p in model.parameters())
    macs = sum(layer_macs(model, torch.zeros(1, *shape)).values())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    return params, macs, bn


CASES = [("phinet", e) for e in REFERENCE["phinet"]] + [("xinet", e) for e in REFERENCE["xinet"]]


@pytest.mark.parametrize("net, ref", CASES, ids=[f"{n}-{'x'.join(map(str, e['input_shape']))}-{i}"
                                                 for i, (n, e) in enumerate(CASES)])
def test_counts_equal_micromind(net, ref):
    model = (_phinet if net == "phinet" else _xinet)(ref["input_shape"], ref["kwargs"])
    params, macs, bn = _counts(model, ref["input_shape"])
    assert params == ref["params"]
    assert macs == ref["conv_linear_macs"]
    assert macs + bn == ref["torchinfo_mult_adds"]  # torchinfo adds BN's weight and bias once per sample


def test_the_published_phinet_figure_is_among_the_references():
    first = REFERENCE["phinet"][0]
    assert first["input_shape"] == [3, 224, 224] and first["kwargs"] == {}
    assert (first["params"], first["torchinfo_mult_adds"]) == (30917, 9817670)
