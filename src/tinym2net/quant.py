"""Fake quantization (HAWQ-V3 style): per-channel symmetric weights, calibrated activations, BN folded.

Every quantizable layer (each `nn.Conv2d` and `nn.Linear`) quantizes its weights and its input
activation at one bit width. Weights: symmetric per output channel, integers in
[-(2^(b-1)-1), 2^(b-1)-1], zero point 0. Activations: one range per layer observed on calibration
batches; unsigned [0, 2^b-1] when every observed value is >= 0 (after ReLU), otherwise signed and
symmetric (the network input, the pointwise input after a depthwise convolution). Biases are
int32 on the accumulator's scale (input scale x weight scale), as the integer kernels of the
runtime add them. torch's fake-quantize ops supply the straight-through estimator, so the result
can be fine-tuned (QAT).
A width of 32 (`FLOAT_BITS`) in a bit allocation leaves the layer float: no quantization error.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .bitpack import FLOAT_BITS, int_range
from .errors import DataError, ParamsError

log = logging.getLogger(__name__)

MIN_BITS, MAX_BITS = 2, 16
FLOAT_BYTES = 4      # per-channel weight scales, biases and float layers are float32
ACT_QPARAM_BYTES = 8  # one float32 activation scale + one int32 zero point per quantized layer


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of `model`, by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _check_bits(bits: int, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not (MIN_BITS <= bits <= MAX_BITS or bits == FLOAT_BITS):
        raise ParamsError(f"{what}: bit width must be an integer in [{MIN_BITS}, {MAX_BITS}] or {FLOAT_BITS} (float) "
                          f"(got {bits!r})")
    return bits


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale max|w| / (2^(b-1)-1); all-zero channels get scale 1."""
    amax = weight.detach().abs().flatten(1).amax(dim=1).float()  # (C_out,)
    return torch.where(amax > 0, amax / int_range(bits)[1], torch.ones_like(amax))


def fake_quant_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-channel (axis 0) fake quantization of a weight tensor at `bits` (FLOAT_BITS: unchanged)."""
    if bits == FLOAT_BITS:
        return weight
    qmax = int_range(bits)[1]
    scale = weight_scale(weight, bits).to(weight.device)
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -qmax, qmax)


def fake_quant_bias(bias: torch.Tensor | None, act: "ActQuant", weight: torch.Tensor, bits: int):
    """The bias as integer kernels add it: int32 on the accumulator's scale (input scale x weight scale
    per output channel), straight-through for QAT; float while the input range is still observed, or
    where the integers would leave int32 (as the runtime does then)."""
    if bias is None or act.observing:
        return bias
    scale = act.scale * weight_scale(weight, bits).to(bias.device)  # (C_out,) float32
    q = torch.round(bias.detach() / scale)
    if q.abs().max() >= 2 ** 31 - 1:
        return bias
    return bias + (q * scale - bias).detach()


class ActQuant(nn.Module):
    """Input-activation fake quantizer: observes a range while calibrating, then fake-quantizes."""

    def __init__(self, bits: int, percentile: float | None = None):
        super().__init__()
        self.bits = bits
        self.percentile = percentile
        self.observing = True
        self.batches = 0
        self.register_buffer("min_seen", torch.tensor(math.inf))  # raw minimum: decides signedness
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("signed", torch.tensor(False))

    def observe(self, x: torch.Tensor) -> None:
        """Fold one batch into the observed range (min/max, or a running mean of percentiles)."""
        x = x.detach().float().flatten()
        self.min_seen.fill_(min(self.min_seen.item(), x.min().item()))
        if self.percentile is None:
            lo, hi = x.min().item(), x.max().item()
            if self.batches:
                lo, hi = min(lo, self.lo.item()), max(hi, self.hi.item())
        else:
            k_hi = min(max(math.ceil(self.percentile / 100 * x.numel()), 1), x.numel())
            k_lo = x.numel() + 1 - k_hi
            lo_b, hi_b = x.kthvalue(k_lo).values.item(), x.kthvalue(k_hi).values.item()
            n = self.batches
            lo, hi = (self.lo.item() * n + lo_b) / (n + 1), (self.hi.item() * n + hi_b) / (n + 1)
        self.lo.fill_(lo)
        self.hi.fill_(hi)
        self.batches += 1

    def freeze(self) -> None:
        """End calibration: fix signedness and scale from the observed range."""
        if not self.batches:
            raise DataError("activation quantizer saw no calibration batch")
        signed = self.min_seen.item() < 0
        if signed:
            amax, levels = max(abs(self.lo.item()), abs(self.hi.item())), int_range(self.bits, True)[1]
        else:
            amax, levels = max(self.hi.item(), 0.0), int_range(self.bits, False)[1]
        self.signed.fill_(signed)
        self.scale.fill_(amax / levels if amax > 0 else 1.0)
        self.observing = False

    def qrange(self) -> tuple[int, int]:
        return int_range(self.bits, bool(self.signed.item()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        qmin, qmax = self.qrange()
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={bool(self.signed.item())}, scale={self.scale.item():.4g}"


class QConv2d(nn.Conv2d):
    """Conv2d that fake-quantizes its input activation and its weights at `bits`."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int, percentile: float | None = None) -> "QConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        q.load_state_dict(conv.state_dict())
        q.bits, q.act = bits, ActQuant(bits, percentile)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act(x), fake_quant_weight(self.weight, self.bits),
                                  fake_quant_bias(self.bias, self.act, self.weight, self.bits))


class QLinear(nn.Linear):
    """Linear layer that fake-quantizes its input activation and its weights at `bits`."""

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int, percentile: float | None = None) -> "QLinear":
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype)
        q.load_state_dict(linear.state_dict())
        q.bits, q.act = bits, ActQuant(bits, percentile)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), fake_quant_weight(self.weight, self.bits),
                        fake_quant_bias(self.bias, self.act, self.weight, self.bits))


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to `bn(conv(x))` with BN in eval mode (running statistics)."""
    if bn.num_features != conv.out_channels:
        raise ParamsError(f"cannot fold BatchNorm of {bn.num_features} features into a conv of "
                          f"{conv.out_channels} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ParamsError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    folded = copy.deepcopy(conv)
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
        gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
        beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
        factor = gamma * inv_std
        bias = conv.bias if conv.bias is not None else torch.zeros_like(inv_std)
        folded.weight.copy_(conv.weight * factor.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        folded.bias = nn.Parameter((bias - bn.running_mean) * factor + beta)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """In place: fold every BatchNorm2d that directly follows a Conv2d in a Sequential; BN -> Identity."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[first] = fold_bn(conv, bn)
                seq._modules[second] = nn.Identity()
    return model


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _inputs(batch):
    """The model inputs of a batch given as (inputs, targets)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(f"expected batches of (inputs, targets), got a {type(batch).__name__}")
    return batch[0]


def quantize_model(model: nn.Module, bits: dict[str, int], calib_batches: Iterable,
                   percentile: float | None = None) -> nn.Module:
    """A BN-folded copy of `model` whose layers named in `bits` fake-quantize weights and input at that width
    (layers at FLOAT_BITS stay float)."""
    layers = quantizable_layers(model)
    unknown = [name for name in bits if name not in layers]
    if unknown:
        raise ParamsError(f"bit allocation names {unknown[0]!r}, which is not a Conv2d/Linear layer of the model")
    for name, b in bits.items():
        _check_bits(b, name)
    if percentile is not None and not 50 < percentile <= 100:
        raise ParamsError(f"activation percentile must be in (50, 100] (got {percentile!r})")
    qmodel = fold_batchnorm(copy.deepcopy(model)).eval()
    for name, layer in quantizable_layers(qmodel).items():
        if bits.get(name, FLOAT_BITS) != FLOAT_BITS:
            qcls = QConv2d if isinstance(layer, nn.Conv2d) else QLinear
            _set_module(qmodel, name, qcls.from_float(layer, bits[name], percentile))
    n_batches = 0
    with torch.no_grad():
        for batch in calib_batches:
            qmodel(_inputs(batch))
            n_batches += 1
    if not n_batches:
        raise DataError("no calibration batches: activation ranges cannot be observed")
    for module in qmodel.modules():
        if isinstance(module, ActQuant):
            module.freeze()
    log.info("quantized %d of %d layers; activation ranges from %d calibration batches",
             sum(b != FLOAT_BITS for b in bits.values()), len(layers), n_batches)
    return qmodel


def qat_finetune(qmodel: nn.Module, batches: Iterable, epochs: int, lr: float, seed: int = 0) -> list[float]:
    """Quantization-aware fine-tuning (Adam, cross-entropy on logits); returns the mean loss per epoch."""
    if epochs < 0 or lr <= 0:
        raise ParamsError(f"QAT needs epochs >= 0 and lr > 0 (got epochs={epochs!r}, lr={lr!r})")
    batches = list(batches)
    if epochs and not batches:
        raise DataError("no training batches for quantization-aware fine-tuning")
    optimizer = torch.optim.Adam([p for p in qmodel.parameters() if p.requires_grad], lr=lr)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        qmodel.train()
        for epoch in range(epochs):
            total, count = 0.0, 0
            for inputs, targets in batches:
                optimizer.zero_grad()
                loss = F.cross_entropy(qmodel(inputs), targets)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(targets), count + len(targets)
            losses.append(total / count)
            log.info("QAT epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
    qmodel.eval()
    return losses


def packed_size_bytes(model: nn.Module, bits: dict[str, int]) -> int:
    """Deployed size: b-bit weights bit-packed per layer, float32 scales/biases/act qparams, float layers at 32 bit."""
    unknown = [name for name in bits if name not in quantizable_layers(model)]
    if unknown:
        raise ParamsError(f"bit allocation names {unknown[0]!r}, which is not a Conv2d/Linear layer of the model")
    folded = fold_batchnorm(copy.deepcopy(model))
    total = 0
    for name, module in folded.named_modules():
        if name in bits and _check_bits(bits[name], name) != FLOAT_BITS:
            b = bits[name]
            total += math.ceil(module.weight.numel() * b / 8)            # packed integer weights
            total += module.weight.shape[0] * FLOAT_BYTES                 # per-channel scales
            total += (module.bias.numel() if module.bias is not None else 0) * FLOAT_BYTES
            total += ACT_QPARAM_BYTES
            continue
        own = [p for p in module.parameters(recurse=False)]
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            own += [module.running_mean, module.running_var]
        total += sum(t.numel() for t in own) * FLOAT_BYTES
    return total
