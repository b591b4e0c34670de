"""The TinyM2Net network: one CNN branch per modality, concatenated, then a dense head.

Built from params.yaml (`train.<case>.branches` and `head`), never hard-coded per case. A branch's
`type` picks its feature extractor:
- `dscnn` (default, the paper's): a list of layers, `[conv, filters, kernel]` (Conv2d + BatchNorm +
  ReLU), `[sepconv, filters, kernel]` (depthwise kxk then pointwise 1x1, + ReLU), `[maxpool, size]`
  (MaxPool2d + dropout); its `padding` (`valid` or `same`) applies to all its convolutions, and the
  defaults reproduce the paper's flatten sizes;
- `phinet` (phinet.py) and `xinet` (xinet.py): the backbones from their hyperparameters.
Every branch ends in flatten -> Dense + ReLU + dropout (flatten, not global pooling: the time axis of an
MFCC keeps its order, as in the paper's branches).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .errors import ParamsError
from .phinet import phinet
from .xinet import xinet


def _block(kind: str, args: list, channels: int, padding: str, dropout: float, key: str):
    """One named layer block and its output channel count."""
    if kind == "conv":
        filters, k = args
        return nn.Sequential(OrderedDict(
            conv=nn.Conv2d(channels, filters, k, padding=padding, bias=False),
            bn=nn.BatchNorm2d(filters), relu=nn.ReLU())), filters
    if kind == "sepconv":
        filters, k = args
        return nn.Sequential(OrderedDict(
            dw=nn.Conv2d(channels, channels, k, padding=padding, groups=channels),
            pw=nn.Conv2d(channels, filters, 1), relu=nn.ReLU())), filters
    if kind == "maxpool":
        (size,) = args
        return nn.Sequential(OrderedDict(pool=nn.MaxPool2d(size), drop=nn.Dropout(dropout))), channels
    raise ParamsError(f"params.yaml: {key}: unknown layer type {kind!r} (choose from conv, maxpool, sepconv)")


def features(spec: dict, in_shape: tuple[int, int, int], dropout: float, key: str) -> nn.Module:
    """The feature extractor of a branch spec: (B, C, H, W) -> (B, C', H', W')."""
    kind = spec.get("type", "dscnn")
    if kind == "phinet":
        return phinet(in_shape, spec["alpha"], spec["beta"], spec["t0"], spec["num_layers"],
                      spec["downsampling_layers"], spec.get("squeeze_excite", False), spec.get("h_swish", False))[0]
    if kind == "xinet":
        return xinet(in_shape, spec["alpha"], spec["gamma"], spec["num_layers"], spec.get("base_filters", 16),
                     spec.get("attention", False), spec.get("activation", "relu6"))[0]
    if kind != "dscnn":
        raise ParamsError(f"params.yaml: {key}.type: unknown branch type {kind!r} (choose from dscnn, phinet, xinet)")
    padding = spec.get("padding", "valid")
    if padding not in ("valid", "same"):
        raise ParamsError(f"params.yaml: {key}.padding must be valid or same (got {padding!r})")
    blocks, channels = OrderedDict(), in_shape[0]
    for i, entry in enumerate(spec["layers"], 1):
        layer, *args = entry
        block, channels = _block(layer, args, channels, padding, dropout, f"{key}.layers[{i - 1}]")
        blocks[f"{layer}{i}"] = block
    return nn.Sequential(blocks)


class Branch(nn.Module):
    """Convolutional feature extractor of one modality: (B, C, H, W) -> (B, dense)."""

    def __init__(self, spec: dict, in_shape: tuple[int, int, int], dropout: float, key: str):
        super().__init__()
        self.features = features(spec, in_shape, dropout, key)
        empty = next((n for n, m in self.features.named_modules() if isinstance(m, nn.Conv2d)
                      and 0 in (m.in_channels, m.out_channels)), None)
        if empty is not None:
            raise ParamsError(f"params.yaml: {key}: layer {empty} has no channels (widen alpha)")
        try:
            with torch.no_grad():
                out = self.features.eval()(torch.zeros(1, *in_shape))  # eval: BatchNorm on one 1x1 sample
        except RuntimeError:  # a kernel or pool larger than what reaches it
            out = torch.zeros(0)
        self.features.train()
        if out.numel() == 0:
            raise ParamsError(f"params.yaml: {key}: the layers shrink an input of {tuple(in_shape)} to nothing")
        self.flatten_size = out.numel()
        self.dense = nn.Sequential(OrderedDict(
            fc=nn.Linear(self.flatten_size, spec["dense"]), relu=nn.ReLU(), drop=nn.Dropout(dropout)))
        self.out_features = spec["dense"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(x).flatten(1))  # (B, C, H, W) -> (B, dense)


class TinyM2Net(nn.Module):
    """Multimodal classifier; with one modality it is that modality's unimodal baseline."""

    def __init__(self, branches: dict[str, dict], input_shapes: dict[str, tuple], head: list[int],
                 n_classes: int, dropout: float = 0.2, key: str = "train.<case>"):
        super().__init__()
        self.modalities = list(branches)
        self.branches = nn.ModuleDict({
            m: Branch(spec, tuple(input_shapes[m]), dropout, f"{key}.branches.{m}") for m, spec in branches.items()})
        layers, width = OrderedDict(), sum(b.out_features for b in self.branches.values())
        for i, size in enumerate(head, 1):
            layers[f"fc{i}"] = nn.Linear(width, size)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"drop{i}"] = nn.Dropout(dropout)
            width = size
        layers["out"] = nn.Linear(width, n_classes)
        self.head = nn.Sequential(layers)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        fused = torch.cat([self.branches[m](inputs[m]) for m in self.modalities], dim=1)  # (B, sum dense)
        return self.head(fused)  # (B, n_classes) logits

    def flatten_sizes(self) -> dict[str, int]:
        return {m: b.flatten_size for m, b in self.branches.items()}

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build(train_cfg: dict, input_shapes: dict[str, tuple], n_classes: int,
          modalities: list[str] | None = None, key: str = "train.<case>") -> TinyM2Net:
    """The fused model (all branches) or, given `modalities`, a model of just those branches."""
    branches = train_cfg["branches"]
    chosen = modalities or list(branches)
    missing = [m for m in chosen if m not in branches]
    if missing:
        raise ParamsError(f"params.yaml: {key}.branches: no branch for modality {missing[0]!r}")
    return TinyM2Net({m: branches[m] for m in chosen}, input_shapes, train_cfg["head"], n_classes,
                     train_cfg.get("dropout", 0.2), key)
