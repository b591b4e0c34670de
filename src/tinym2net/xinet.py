"""XiNet (Ancilotto, Paissan and Farella, ICCV 2023): a backbone of standard-convolution blocks chosen for
their energy on microcontrollers, scaled by alpha (width), gamma (compression) and num_layers.

Written from the paper and checked against the reference implementation (micromind 0.2.1, Apache-2.0) by
parameter and MAC counts (tests/test_backbones.py):

- stem: conv 7x7 stride 2 to `base_filters` alpha channels, BN, activation;
- XiConv block: a 1x1 compression conv to c_out / gamma channels, plus (broadcast skip) a 1x1 conv of the
  first block's output average-pooled to this resolution, [max pool 2], conv 3x3 to c_out, BN, activation,
  [attention: x * sigmoid(conv3x3(conv1x1(x)))], the lite attention of the paper with c_out / gamma / 2
  channels in between;
- filters 2^(sqrt(base_filters) + i) alpha for i < num_layers; the blocks come in pairs (the first pools),
  then two blocks without attention at the last width. As in micromind, those two use gamma 4 whatever
  `gamma` is, and the first block has no skip input.

Deviations from the paper and micromind: the activation is ReLU6 by default (`activation: silu` gives the
paper's SiLU, which the runtimes compute in float); micromind's adaptive average pooling of the skip to the
block's resolution is an average pool with kernel = stride = 2^k (equal whenever the input size is a
multiple of 2^k, as on 224x224 or 32x32; on other sizes the last rows are dropped, as the max pools drop
them); and the paper's beta (a second width factor on the skip path) is not in micromind and not here.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

LAST_GAMMA = 4  # micromind's last two blocks keep XiConv's default compression


def activation(name: str) -> nn.Module:
    return nn.SiLU() if name == "silu" else nn.ReLU6()


class XiConv(nn.Module):
    """One XiNet block: (B, c_in, H, W) [+ skip (B, skip_channels, H 2^skip_pool, W 2^skip_pool)] -> (B, c_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, gamma: int, attention: bool, pool: bool,
                 skip_channels: int | None, skip_pool: int, act: str):
        super().__init__()
        mid = c_out // gamma if gamma > 1 else c_in
        self.compress = nn.Conv2d(c_in, mid, 1, bias=False) if gamma > 1 else None
        self.skip = None
        if skip_channels is not None:
            skip = OrderedDict(pool=nn.AvgPool2d(2 ** skip_pool)) if skip_pool else OrderedDict()
            skip["conv"] = nn.Conv2d(skip_channels, mid, 1, bias=False)
            self.skip = nn.Sequential(skip)
        self.pool = nn.MaxPool2d(2) if pool else None
        self.main = nn.Sequential(OrderedDict(conv=nn.Conv2d(mid, c_out, 3, padding=1, bias=False),
                                              bn=nn.BatchNorm2d(c_out), act=activation(act)))
        self.attention = None
        if attention:
            inner = c_out // gamma // 2
            self.attention = nn.Sequential(OrderedDict(pw=nn.Conv2d(c_out, inner, 1, bias=False),
                                                       conv=nn.Conv2d(inner, c_out, 3, padding=1, bias=False),
                                                       gate=nn.Sigmoid()))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.compress is not None:
            x = self.compress(x)                          # (B, c_out / gamma, H, W)
        if self.skip is not None and skip is not None:
            x = x + self.skip(skip)                       # broadcast skip, pooled to (H, W)
        if self.pool is not None:
            x = self.pool(x)
        x = self.main(x)                                  # (B, c_out, H', W')
        return x * self.attention(x) if self.attention is not None else x

    def emit(self, g, prefix: str, x: str, skip: str | None) -> str:
        if self.compress is not None:
            x = g.layer(f"{prefix}.compress", self.compress, x)
        if self.skip is not None and skip is not None:
            x = g.add("add", [x, g.sequence(f"{prefix}.skip", self.skip, skip)], f"{prefix}.add")
        if self.pool is not None:
            x = g.module(f"{prefix}.pool", self.pool, x)
        x = g.sequence(f"{prefix}.main", self.main, x)
        if self.attention is not None:
            x = g.add("mul", [x, g.sequence(f"{prefix}.attention", self.attention, x)], f"{prefix}.mul")
        return x


class XiNetFeatures(nn.Module):
    """The XiNet feature extractor (micromind's `XiNet(include_top=False)`): (B, C, H, W) -> (B, C', H', W')."""

    def __init__(self, in_shape: tuple[int, int, int], alpha: float, gamma: int, num_layers: int,
                 base_filters: int, attention: bool, act: str = "relu6"):
        super().__init__()
        stem = int(base_filters * alpha)
        self.conv1 = nn.Sequential(OrderedDict(conv=nn.Conv2d(in_shape[0], stem, 7, stride=2, padding=3, bias=False),
                                               bn=nn.BatchNorm2d(stem), act=activation(act)))
        filters = [int(2 ** (base_filters ** 0.5 + i)) for i in range(num_layers)]
        widths = [int(f * alpha) for f in filters]
        specs = []  # (c_in, c_out, gamma, attention, pool)
        for i in range(num_layers - 2):
            specs += [(widths[i], widths[i + 1], gamma, attention, True),
                      (widths[i + 1], widths[i + 1], gamma, attention, False)]
        specs += [(widths[-2], widths[-1], LAST_GAMMA, False, False), (widths[-1], widths[-1], LAST_GAMMA, False, False)]
        layers, channels, pools = [], stem, 0
        for j, (c_in, c_out, g, att, pool) in enumerate(specs):
            c_in = channels if j == 0 else c_in  # micromind assumes base_filters alpha = 2^sqrt(base_filters) alpha
            skip_channels = None if j == 0 else layers[0].main.conv.out_channels
            layers.append(XiConv(c_in, c_out, g, att, pool, skip_channels, pools, act))
            pools += pool and j > 0
            channels = c_out
        self.layers = nn.ModuleList(layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)                                 # (B, base_filters alpha, H / 2, W / 2)
        skip = None
        for j, layer in enumerate(self.layers):
            x = layer(x, skip)
            skip = x if j == 0 else skip                  # the first block's output feeds every later block
        return x

    def emit(self, g, prefix: str, x: str) -> str:
        x = g.sequence(f"{prefix}.conv1", self.conv1, x)
        skip = None
        for j, layer in enumerate(self.layers):
            x = layer.emit(g, f"{prefix}.layers.{j}", x, skip)
            skip = x if j == 0 else skip
        return x


def xinet(in_shape: tuple[int, int, int], alpha: float, gamma: int, num_layers: int, base_filters: int = 16,
          attention: bool = True, act: str = "relu6") -> tuple[XiNetFeatures, int]:
    """The XiNet feature extractor for (C, H, W) inputs and its output channel count."""
    features = XiNetFeatures(in_shape, alpha, gamma, num_layers, base_filters, attention, act)
    return features, features.out_channels
