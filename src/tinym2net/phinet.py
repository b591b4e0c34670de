"""PhiNet (Paissan et al., ACM TECS 2022, doi 10.1145/3510832): a backbone of inverted residual blocks
whose width, expansion and depth are set by alpha, beta, t0 and num_layers.

Written from the paper's definitions and checked against the reference implementation (micromind 0.2.1,
Apache-2.0) by parameter and MAC counts (tests/test_backbones.py, tests/data/micromind_counts.json):

- stem: zero padding (TF "same" for a 3x3 stride-2 kernel on a square of the larger side), depthwise 3x3 stride 2, pointwise to
  48 alpha channels, BN, activation;
- block 1: depthwise 3x3, pointwise to 24 alpha (no expansion);
- block b (b = 1 .. num_layers): pointwise expansion by t(b) = t0 (beta b / N + (N - b) / N), BN,
  activation, depthwise 3x3 (stride 2 in blocks 1, 3 and every downsampling layer, where the filters
  double), BN, activation, optional squeeze-excite, linear pointwise projection, BN, and a residual
  add when the shape is kept.

The activation is ReLU6, or hard swish with `h_swish`; micromind's `compatibility=True` (no squeeze-excite,
no hard swish) is `squeeze_excite: false, h_swish: false`. Every module is a plain Conv2d / BatchNorm2d /
activation in a Sequential (so BN folds and each conv quantizes on its own); a block's `emit` writes its
dataflow (the residual add, the squeeze-excite multiply) into the exported graph.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

FIRST_CONV_FILTERS, B1_FILTERS, B2_FILTERS = 48, 24, 48  # the paper's fixed stem and first-block widths


def make_divisible(v: float, divisor: int = 1) -> int:
    """The channel count nearest `v` that is a multiple of `divisor`, never below it nor under 90% of `v`."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def expansion(t0: float, beta: float, block: int, num_layers: int) -> float:
    """The expansion factor of block `block` of `num_layers`: linear from t0 (first) to beta t0 (last)."""
    return t0 * beta * block / num_layers + t0 * (num_layers - block) / num_layers


def same_pad(size: int, kernel: int = 3, stride: int = 2) -> tuple[int, int]:
    """(before, after) zero padding of TF "same" for one dimension: asymmetric for an even size."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _act(h_swish: bool) -> nn.Module:
    return nn.Hardswish() if h_swish else nn.ReLU6()


class SqueezeExcite(nn.Module):
    """x * sigmoid(conv2(act(conv1(mean_hw(x))))): channel attention from the global average."""

    def __init__(self, channels: int, reduced: int, h_swish: bool):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(OrderedDict(conv1=nn.Conv2d(channels, reduced, 1, bias=False), act=_act(h_swish),
                                             conv2=nn.Conv2d(reduced, channels, 1, bias=False), gate=nn.Sigmoid()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))  # (B, C, H, W) * (B, C, 1, 1)

    def emit(self, g, prefix: str, x: str) -> str:
        hw = g.input_shape(self)[1:]  # global average pool = average pool over the whole (H, W)
        pooled = g.add("avgpool", [x], f"{prefix}.pool", kernel=hw, stride=hw, pads=[0] * 4)
        gate = g.sequence(f"{prefix}.fc", self.fc, pooled)
        return g.add("mul", [x, gate], f"{prefix}.mul")


class PhiBlock(nn.Module):
    """An inverted residual block: [expand 1x1, BN, act], depthwise kxk, BN, act, [SE], project 1x1, BN, [+ x]."""

    def __init__(self, in_channels: int, filters: int, stride: int, expand: float | None, squeeze_excite: bool,
                 h_swish: bool, residual: bool = True, kernel: int = 3, dropout: float = 0.05, divisor: int = 1):
        super().__init__()
        layers = OrderedDict()
        channels = in_channels
        if expand is not None:
            channels = make_divisible(int(expand * in_channels), divisor)
            layers.update(expand=nn.Conv2d(in_channels, channels, 1, bias=False),
                          expand_bn=nn.BatchNorm2d(channels, eps=1e-3, momentum=0.999), expand_act=_act(h_swish))
        layers.update(drop=nn.Dropout2d(dropout),
                      dw=nn.Conv2d(channels, channels, kernel, stride=stride, padding=kernel // 2, groups=channels,
                                   bias=False),
                      dw_bn=nn.BatchNorm2d(channels, eps=1e-3, momentum=0.999), dw_act=_act(h_swish))
        self.body = nn.Sequential(layers)
        self.se = (SqueezeExcite(channels, make_divisible(max(1, int(channels / 6)), divisor), h_swish)
                   if squeeze_excite else None)
        self.project = nn.Sequential(OrderedDict(conv=nn.Conv2d(channels, filters, 1, bias=False),
                                                 bn=nn.BatchNorm2d(filters, eps=1e-3, momentum=0.999)))
        self.residual = residual and in_channels == filters and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)                                  # (B, C_exp, H / stride, W / stride)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)                               # (B, filters, H / stride, W / stride)
        return y + x if self.residual else y

    def emit(self, g, prefix: str, x: str) -> str:
        y = g.sequence(f"{prefix}.body", self.body, x)
        if self.se is not None:
            y = self.se.emit(g, f"{prefix}.se", y)
        y = g.sequence(f"{prefix}.project", self.project, y)
        return g.add("add", [y, x], f"{prefix}.add") if self.residual else y


def phinet(in_shape: tuple[int, int, int], alpha: float, beta: float, t0: float, num_layers: int,
           downsampling_layers: list[int], squeeze_excite: bool = False, h_swish: bool = False,
           divisor: int = 1) -> tuple[nn.Sequential, int]:
    """The PhiNet feature extractor for (C, H, W) inputs (micromind's `PhiNet(include_top=False)`) and its
    output channel count."""
    channels, height, width = in_shape
    first = make_divisible(int(FIRST_CONV_FILTERS * alpha), divisor)
    b1 = make_divisible(int(B1_FILTERS * alpha), divisor)
    before, after = same_pad(max(height, width))  # micromind pads both sides as for a square of the larger side
    blocks = OrderedDict()
    blocks["conv1"] = nn.Sequential(OrderedDict(
        pad=nn.ZeroPad2d((before, after, before, after)),
        dw=nn.Conv2d(channels, channels, 3, stride=2, groups=channels, bias=False),
        pw=nn.Conv2d(channels, first, 1, bias=False), bn=nn.BatchNorm2d(first, eps=1e-3, momentum=0.999),
        act=_act(h_swish)))
    common = {"squeeze_excite": squeeze_excite, "h_swish": h_swish, "divisor": divisor}
    blocks["block1"] = PhiBlock(first, b1, 1, None, **{**common, "squeeze_excite": False})
    blocks["block2"] = PhiBlock(b1, b1, 2, expansion(t0, beta, 1, num_layers), **common)
    blocks["block3"] = PhiBlock(b1, b1, 1, expansion(t0, beta, 2, num_layers), **common)
    filters = B2_FILTERS
    in_channels = make_divisible(int(filters * alpha), divisor)
    blocks["block4"] = PhiBlock(b1, in_channels, 2, expansion(t0, beta, 3, num_layers), **common)
    for block in range(4, num_layers + 1):
        down = block in downsampling_layers
        filters *= 2 if down else 1
        out = make_divisible(int(filters * alpha), divisor)
        blocks[f"block{block + 1}"] = PhiBlock(in_channels, out, 2 if down else 1,
                                               expansion(t0, beta, block, num_layers), **common)
        in_channels = out
    return nn.Sequential(blocks), in_channels
