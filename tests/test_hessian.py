"""Hutchinson traces against exact Hessian blocks; MACs, ties and Omega of a tiny known model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tinym2net.errors import DataError, ParamsError
from tinym2net.hessian import hutchinson_traces, layer_macs, sensitivity, ties
from tinym2net.model import build
from tinym2net.quant import quantizable_layers

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = {"branches": {"a": {"padding": "same", "layers": [["conv", 2, 3], ["sepconv", 3, 3], ["maxpool", 2]], "dense": 4},
                    "b": {"padding": "valid", "layers": [["conv", 2, 3]], "dense": 3}},
       "head": [4], "dropout": 0.2}
SHAPES = {"a": (1, 6, 6), "b": (1, 5, 4)}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build(CFG, SHAPES, 3)  # 271 parameters


def batches(n=4, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [({"a": torch.randn(size, *SHAPES["a"], generator=g), "b": torch.randn(size, *SHAPES["b"], generator=g)},
             torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def exact_traces(model, data) -> dict[str, float]:
    """Tr of each layer's diagonal Hessian block, averaged over batches, from the full autograd Hessian."""
    model.eval()
    layers = quantizable_layers(model)
    names = list(layers)
    weights = tuple(layers[n].weight.detach() for n in names)
    traces = dict.fromkeys(names, 0.0)
    for x, y in data:
        def loss(*ws):
            return F.cross_entropy(functional_call(model, {f"{n}.weight": w for n, w in zip(names, ws)}, (x,)), y)
        hessian = torch.autograd.functional.hessian(loss, weights)  # H[i][j]: (*w_i.shape, *w_j.shape)
        for i, name in enumerate(names):
            traces[name] += hessian[i][i].reshape(weights[i].numel(), -1).trace().item() / len(data)
    return traces


def test_hutchinson_matches_exact_hessian_blocks():
    model, data = tiny_model(), batches()
    exact = exact_traces(model, data)
    layers = quantizable_layers(model)
    estimate = hutchinson_traces(model, F.cross_entropy, data, {n: m.weight for n, m in layers.items()},
                                 tol=0.0, max_iter=1600, seed=0)  # 400 probes per batch
    # The traces span four orders of magnitude (1e-6 .. 1e-2), so 10% is a per-layer check.
    assert max(exact.values()) / min(exact.values()) > 1e3
    for name in layers:
        assert estimate[name] == pytest.approx(exact[name], rel=0.10), name


def test_iterations_stop_at_tolerance_or_max_iter_and_are_seeded():
    model, data = tiny_model(), batches()
    params = {n: m.weight for n, m in quantizable_layers(model).items()}
    calls = []

    def counting_loss(logits, targets):
        calls.append(1)
        return F.cross_entropy(logits, targets)

    first = hutchinson_traces(model, counting_loss, data, params, tol=0.0, max_iter=7, seed=3)
    assert len(calls) == 7 and first.iterations == 7 and not first.converged
    calls.clear()
    loose = hutchinson_traces(model, counting_loss, data, params, tol=0.5, min_iter=4, max_iter=500, seed=3)
    assert 4 <= len(calls) == loose.iterations < 500 and loose.converged
    assert all(loose.relative_error(n) <= 0.5 for n in params)
    model.train()  # dropout on: the estimate must not change (eval inside), and training mode comes back
    assert hutchinson_traces(model, F.cross_entropy, data, params, tol=0.0, max_iter=7, seed=3) == first
    assert model.training
    assert hutchinson_traces(model, F.cross_entropy, data, params, tol=0.0, max_iter=7, seed=4) != first


def test_standard_error_matches_the_spread_over_seeds():
    """The reported standard error of a run is the spread its mean shows across independent runs."""
    model, data = tiny_model(), batches()
    params = {n: m.weight for n, m in quantizable_layers(model).items()}
    runs = [hutchinson_traces(model, F.cross_entropy, data, params, tol=0.0, max_iter=32, seed=s) for s in range(16)]
    for name in params:
        spread = np.std([r[name] for r in runs], ddof=1)
        reported = np.mean([r.stderr[name] for r in runs])
        assert 0.5 < reported / spread < 1.8, (name, reported, spread)


def test_hutchinson_errors_name_the_problem():
    model, data = tiny_model(), batches()
    with pytest.raises(ParamsError, match="stray does not take part in the loss"):
        hutchinson_traces(model, F.cross_entropy, data, {"stray": torch.zeros(3, requires_grad=True)})
    with pytest.raises(DataError, match="no batches"):
        hutchinson_traces(model, F.cross_entropy, [], {"head.out": model.head.out.weight})


def test_macs_and_ties_of_a_known_model():
    model = tiny_model()
    # Hand count, one sample. Branch a (6x6, same): conv 2x6x6 outputs x 1x3x3; depthwise 2x6x6 x 3x3;
    # pointwise 3x6x6 x 2; maxpool -> 3x3x3 = 27 -> dense 4. Branch b (5x4, valid): conv 2x3x2 x 3x3 -> 12 -> 3.
    assert layer_macs(model, batches(n=1)[0][0]) == {
        "branches.a.features.conv1.conv": 648,
        "branches.a.features.sepconv2.dw": 648,
        "branches.a.features.sepconv2.pw": 216,
        "branches.a.dense.fc": 108,
        "branches.b.features.conv1.conv": 108,
        "branches.b.dense.fc": 36,
        "head.fc1": 28,
        "head.out": 12,
    }
    assert ties(model) == [["branches.a.features.sepconv2.dw", "branches.a.features.sepconv2.pw"]]
    # Several separable blocks, one of them first in its branch (a 1-channel depthwise conv).
    cfg = {"branches": {"a": {"padding": "same", "layers": [["conv", 2, 3], ["sepconv", 3, 3], ["maxpool", 2],
                                                            ["sepconv", 4, 3]], "dense": 4},
                        "b": {"padding": "valid", "layers": [["sepconv", 2, 3]], "dense": 3}}, "head": []}
    assert ties(build(cfg, SHAPES, 2)) == [
        ["branches.a.features.sepconv2.dw", "branches.a.features.sepconv2.pw"],
        ["branches.a.features.sepconv4.dw", "branches.a.features.sepconv4.pw"],
        ["branches.b.features.sepconv1.dw", "branches.b.features.sepconv1.pw"],
    ]


def numpy_quant_error(w: np.ndarray, bits: int) -> float:
    """||Q(w) - w||^2 with symmetric per-output-channel rounding, written out in numpy."""
    qmax = 2 ** (bits - 1) - 1
    w = w.reshape(w.shape[0], -1).astype(np.float64)
    scale = np.abs(w).max(axis=1, keepdims=True) / qmax
    return float(((np.clip(np.round(w / scale), -qmax, qmax) * scale - w) ** 2).sum())


def test_sensitivity_combines_trace_quant_error_and_macs():
    model, data = tiny_model(), batches()
    rows, _ = sensitivity(model, F.cross_entropy, data, bit_choices=[4, 8], tol=0.0, max_iter=8, seed=0)
    layers = quantizable_layers(model)
    traces = hutchinson_traces(model, F.cross_entropy, data, {n: m.weight for n, m in layers.items()},
                               tol=0.0, max_iter=8, seed=0)
    assert [r["name"] for r in rows] == list(layers)
    for row in rows:
        w = layers[row["name"]].weight.detach().numpy()
        assert row["params"] == w.size and row["trace"] == traces[row["name"]]
        for b in (4, 8):
            expected = traces[row["name"]] / w.size * numpy_quant_error(w, b)
            assert row["omega"][str(b)] == pytest.approx(expected, rel=1e-4), (row["name"], b)
        assert abs(row["omega"]["4"]) > abs(row["omega"]["8"])  # 4-bit rounding error is larger
    assert {r["name"]: r["macs"] for r in rows}["branches.a.features.conv1.conv"] == 648
