"""Fake quantization: levels against numpy rounding, exact BN folding, 8-bit fidelity, STE, QAT, packed size."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinym2net.errors import DataError, ParamsError
from tinym2net.model import build
from tinym2net.quant import (ActQuant, QConv2d, QLinear, fake_quant_weight, fold_batchnorm, fold_bn,
                             packed_size_bytes, qat_finetune, quantizable_layers, quantize_model)

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = {"branches": {"a": {"padding": "same", "layers": [["conv", 2, 3], ["sepconv", 3, 3], ["maxpool", 2]], "dense": 4},
                    "b": {"padding": "valid", "layers": [["conv", 2, 3]], "dense": 3}},
       "head": [4], "dropout": 0.0}  # dropout on 4-unit layers only makes the tiny model's training erratic
SHAPES = {"a": (1, 6, 6), "b": (1, 5, 4)}
N_CLASSES = 3


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build(CFG, SHAPES, N_CLASSES)


def dataset(n_batches=6, size=32, seed=1):
    """Three classes, each a fixed random pattern in both modalities plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = {m: torch.randn(N_CLASSES, *shape, generator=g) for m, shape in SHAPES.items()}
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, N_CLASSES, (size,), generator=g)
        x = {m: patterns[m][y] + 0.8 * torch.randn(size, *SHAPES[m], generator=g) for m in SHAPES}
        out.append((x, y))
    return out


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return float(np.mean([(model(x).argmax(1) == y).float().mean().item() for x, y in data]))


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained to high accuracy, with BN statistics that are not the identity."""
    torch.set_num_threads(1)
    model, data = tiny_model(), dataset()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(15):
        model.train()
        for x, y in data:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    return model, data


def numpy_fake_quant(w: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric per-output-channel fake quantization written out in numpy."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1)
    scale = np.abs(flat).max(axis=1, keepdims=True).astype(np.float32) / np.float32(qmax)
    q = np.clip(np.round(flat * (np.float32(1) / scale)), -qmax, qmax) * scale
    return q.reshape(w.shape)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 300)])
def test_weights_take_at_most_2_pow_b_values_per_channel(bits, shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(bits)) * torch.linspace(0.1, 3, shape[0]).reshape(
        -1, *[1] * (len(shape) - 1))
    q = fake_quant_weight(w, bits)
    per_channel = [len(torch.unique(row)) for row in q.reshape(shape[0], -1)]
    assert max(per_channel) <= 2 ** bits
    # Enough distinct values to show the grid is as fine as it should be.
    assert min(per_channel) >= min(2 ** (bits - 2), q[0].numel() // 2)
    np.testing.assert_allclose(q.numpy(), numpy_fake_quant(w.numpy(), bits), rtol=0, atol=1e-6)
    # The largest magnitude of each channel is on the grid.
    torch.testing.assert_close(q.abs().flatten(1).amax(1), w.abs().flatten(1).amax(1))


def random_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 3 + 0.1)
    return bn.eval()


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 5, 3, padding="same", bias=False), nn.Conv2d(4, 4, 3, groups=4),
                                  nn.Conv2d(3, 6, 1, stride=2, bias=True)])
def test_fold_bn_is_exact_in_eval_mode(conv):
    torch.manual_seed(0)
    conv = conv.eval()
    bn = random_bn(conv.out_channels, seed=conv.out_channels)
    x = torch.randn(2, conv.in_channels, 9, 7)
    folded = fold_bn(conv, bn)
    assert folded.bias is not None and conv.weight is not folded.weight
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ParamsError, match="7 features into a conv of"):
        fold_bn(conv, nn.BatchNorm2d(7))


def test_fold_batchnorm_in_the_model_keeps_outputs(trained):
    model, data = trained
    folded = fold_batchnorm(copy.deepcopy(model)).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(folded.branches.a.features.conv1.bn, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded(data[0][0]), model(data[0][0]), rtol=1e-5, atol=1e-5)


def test_all_8_bit_barely_changes_a_trained_model(trained):
    model, data = trained
    float_acc = accuracy(model, data)
    assert float_acc > 0.85  # the comparison means something only for a model that learned
    q8 = quantize_model(model, {n: 8 for n in quantizable_layers(model)}, data)
    q4 = quantize_model(model, {n: 4 for n in quantizable_layers(model)}, data)
    with torch.no_grad():
        ref = torch.cat([model(x) for x, _ in data])
        err8 = (torch.cat([q8(x) for x, _ in data]) - ref).abs().max().item()
        err4 = (torch.cat([q4(x) for x, _ in data]) - ref).abs().max().item()
    span = (ref.max() - ref.min()).item()
    assert err8 < 0.02 * span
    assert err4 > 4 * err8  # quantization is really applied, coarser at 4 bits
    assert abs(accuracy(q8, data) - float_acc) <= 2 / 192  # at most two of 192 samples change
    assert sum(isinstance(m, (QConv2d, QLinear)) for m in q8.modules()) == 8
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q8.modules())  # folded before quantizing
    assert all(p.dtype == torch.float32 for p in q8.parameters())
    # The original model is untouched (still has its BN).
    assert isinstance(model.branches.a.features.conv1.bn, nn.BatchNorm2d)


def test_activations_signed_only_where_inputs_go_negative(trained):
    model, data = trained
    q = quantize_model(model, {n: 4 for n in quantizable_layers(model)}, data[:3])
    signed = {n: bool(m.act.signed) for n, m in q.named_modules() if isinstance(m, (QConv2d, QLinear))}
    assert signed == {
        "branches.a.features.conv1.conv": True,     # network input
        "branches.a.features.sepconv2.dw": False,   # after conv-BN-ReLU
        "branches.a.features.sepconv2.pw": True,    # after the depthwise conv, no ReLU
        "branches.a.dense.fc": False,
        "branches.b.features.conv1.conv": True,
        "branches.b.dense.fc": False,
        "head.fc1": False,
        "head.out": False,
    }
    seen = {}
    hooks = [m.act.register_forward_hook(lambda mod, args, out, name=n: seen.__setitem__(name, (args[0], out)))
             for n, m in q.named_modules() if isinstance(m, (QConv2d, QLinear))]
    with torch.no_grad():
        q(data[0][0])
    for h in hooks:
        h.remove()
    for name, (x, out) in seen.items():
        act = q.get_submodule(name).act
        levels = torch.unique(torch.round(out / act.scale))
        if signed[name]:
            assert levels.min() >= -7 and levels.max() <= 7 and levels.min() < 0
        else:
            assert levels.min() >= 0 and levels.max() <= 15
        # Independent reference: clip(round(x / s)) * s with s from the calibrated range.
        lo, hi = (-7, 7) if signed[name] else (0, 15)
        ref = np.clip(np.round(x.numpy() * np.float32(1 / act.scale.item())), lo, hi) * act.scale.item()
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)


def test_calibrated_range_is_the_observed_one():
    act = ActQuant(8)
    act(torch.tensor([-0.5, 0.25, 2.0]))
    act(torch.tensor([-1.27, 0.0, 1.0]))
    act.freeze()
    assert bool(act.signed) and act.scale.item() == pytest.approx(2.0 / 127)
    relu_act = ActQuant(8)
    relu_act(torch.tensor([0.0, 0.3, 2.55]))
    relu_act.freeze()
    assert not bool(relu_act.signed) and relu_act.scale.item() == pytest.approx(0.01)
    clipped = ActQuant(8, percentile=90)
    clipped(torch.arange(1.0, 101.0))  # the 90th percentile of 1..100 is 90
    clipped.freeze()
    assert clipped.scale.item() == pytest.approx(90 / 255)


def test_layers_not_in_bits_stay_float(trained):
    model, data = trained
    q = quantize_model(model, {"head.out": 4}, data[:1])
    kinds = {n: type(m) for n, m in quantizable_layers(q).items()}
    assert kinds.pop("head.out") is QLinear
    assert set(kinds.values()) == {nn.Conv2d, nn.Linear}


def test_width_32_leaves_a_layer_float(trained):
    model, data = trained
    names = list(quantizable_layers(model))
    bits = {n: 32 if i % 2 else 8 for i, n in enumerate(names)}
    q = quantize_model(model, bits, data)
    layers = quantizable_layers(q)
    assert all(isinstance(layers[n], (QConv2d, QLinear)) == (b == 8) for n, b in bits.items())
    w = layers[names[1]].weight
    assert torch.equal(fake_quant_weight(w, 32), w)  # no quantization error: Omega at 32 bits is 0
    # a 32-bit layer counts as float in the deployed size, exactly as a layer left out of `bits`
    assert packed_size_bytes(model, bits) == packed_size_bytes(model, {n: b for n, b in bits.items() if b != 32})


def test_ste_gradient_reaches_float_weights():
    torch.manual_seed(0)
    layer = QLinear.from_float(nn.Linear(6, 3), bits=4)
    x = torch.randn(16, 6)
    with torch.no_grad():
        layer(x)  # calibrate
    layer.act.freeze()
    r = torch.randn(16, 3)
    x_big = (x * 1.5).requires_grad_()  # some inputs now beyond the calibrated range
    (layer(x_big) * r).sum().backward()
    x_q = layer.act(x_big.detach())
    # Straight-through: dL/dW = r^T x_q exactly as if the rounding were the identity.
    torch.testing.assert_close(layer.weight.grad, r.T @ x_q)
    torch.testing.assert_close(layer.bias.grad, r.sum(0))
    # Inputs clipped by the activation range get no gradient, the others get W_q^T r.
    inside = (x_big.detach() / layer.act.scale).round().abs() <= 7
    assert not inside.all() and inside.any()
    expected = (r @ fake_quant_weight(layer.weight, 4).detach()) * inside
    torch.testing.assert_close(x_big.grad, expected)


def test_qat_finetune_learns_through_the_quantizers(trained):
    model, data = trained
    damaged = copy.deepcopy(model)
    torch.manual_seed(5)
    damaged.head.out.reset_parameters()  # a classifier layer the fine-tuning has to relearn
    q = quantize_model(damaged, {n: 4 for n in quantizable_layers(model)}, data)
    twin = copy.deepcopy(q)
    before = accuracy(q, data)
    losses = qat_finetune(q, data, epochs=3, lr=0.01, seed=0)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert accuracy(q, data) > before + 0.15 and not q.training
    assert isinstance(q.head.out, QLinear) and q.head.out.bits == 4  # still quantized after training
    qat_finetune(twin, data, epochs=3, lr=0.01, seed=0)
    for (name, a), b in zip(q.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name  # deterministic


def test_packed_size_counts_bits_scales_and_biases():
    model = tiny_model()
    names = list(quantizable_layers(model))
    # Weights per layer: 18, 18, 6, 108, 18, 36, 28, 12 = 244; biases (BN folded into both conv1):
    # 2, 2, 3, 4, 2, 3, 4, 3 = 23; the BN parameters and running statistics disappear.
    assert packed_size_bytes(model, {}) == (244 + 23) * 4
    # 4 bits: ceil(w/2) + 4 B per output channel scale + 4 B per bias + 8 B activation qparams.
    all4 = (9 + 8 + 8 + 8) + (9 + 8 + 8 + 8) + (3 + 12 + 12 + 8) + (54 + 16 + 16 + 8) \
        + (9 + 8 + 8 + 8) + (18 + 12 + 12 + 8) + (14 + 16 + 16 + 8) + (6 + 12 + 12 + 8)
    assert packed_size_bytes(model, dict.fromkeys(names, 4)) == all4 == 370
    # 3 bits on an 18-weight conv packs into ceil(54 / 8) = 7 bytes; the rest stays float.
    assert packed_size_bytes(model, {"branches.b.features.conv1.conv": 3}) == 1068 - (18 + 2) * 4 + 7 + 8 + 8 + 8
    # The same numbers from the quantized copy.
    q = quantize_model(model, dict.fromkeys(names, 4), dataset(n_batches=1))
    assert packed_size_bytes(q, dict.fromkeys(names, 4)) == 370


def test_errors_name_the_problem(trained):
    model, data = trained
    with pytest.raises(ParamsError, match="'head.nope', which is not a Conv2d/Linear layer"):
        quantize_model(model, {"head.nope": 8}, data)
    with pytest.raises(ParamsError, match="head.out: bit width must be an integer in \\[2, 16\\] or 32 \\(float\\) \\(got 1\\)"):
        quantize_model(model, {"head.out": 1}, data)
    with pytest.raises(DataError, match="no calibration batches"):
        quantize_model(model, {"head.out": 8}, [])
