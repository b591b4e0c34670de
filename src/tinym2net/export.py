"""Export a (fake-quantized) TinyM2Net as a deployable `.tm2` artifact (`tm2.py`) for `runtime.py`.

The network is walked in forward order (each branch's layers, flatten, its dense layer; the concat;
the head) into the artifact's node list. A quantized layer's weights are stored as the exact integers
the fake quantizer produces (per-channel symmetric, zero point 0), bit-packed at the layer's width,
with their float32 scales; its input quantizer's scale, zero point and signedness go into the node.
BatchNorm is folded first, so the artifact holds exactly the arithmetic of the fake-quantized model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import tm2
from .bitpack import FLOAT_BITS, packed_nbytes
from .errors import ModelFileError
from .model import TinyM2Net
from .quant import ActQuant, QConv2d, QLinear, fake_quant_weight, fold_batchnorm, quantizable_layers, weight_scale
from .training import load_model

log = logging.getLogger(__name__)


def rebuild_quantized(fp32: TinyM2Net, bits: dict[str, int] | None, state_dict: dict) -> TinyM2Net:
    """The model saved by the quantize stage: `fp32`'s architecture, BN folded, layers in `bits`
    fake-quantized (except those at FLOAT_BITS), with the saved weights and frozen activation quantizers."""
    model = fold_batchnorm(_copy(fp32)).eval() if bits else _copy(fp32).eval()
    if bits:
        for name, layer in quantizable_layers(model).items():
            if bits.get(name, FLOAT_BITS) != FLOAT_BITS:
                qcls = QConv2d if isinstance(layer, nn.Conv2d) else QLinear
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child,
                        qcls.from_float(layer, bits[name]))
    model.load_state_dict(state_dict)
    for module in model.modules():
        if isinstance(module, ActQuant):
            module.observing, module.batches = False, max(module.batches, 1)
    return model.eval()


def _copy(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model)


def load_variant(fp32_path: Path, variant_path: Path) -> tuple[TinyM2Net, dict[str, int] | None]:
    """Rebuild `models/<case>/quantized/<variant>.pt` on the architecture of the FP32 model it came from."""
    fp32 = load_model(fp32_path)
    try:
        blob = torch.load(variant_path, weights_only=True)
        bits, state = blob["bits"], blob["state_dict"]
    except FileNotFoundError:
        raise ModelFileError(f"{variant_path}: not found (run the quantize stage first)") from None
    except Exception as exc:
        raise ModelFileError(f"{variant_path}: cannot be read as a quantized model ({type(exc).__name__})") from None
    try:
        return rebuild_quantized(fp32, bits, state), bits
    except (RuntimeError, KeyError, AttributeError) as exc:
        raise ModelFileError(f"{variant_path}: does not match the architecture of {fp32_path} "
                             f"({str(exc).splitlines()[0][:160]})") from None


def _pads(conv: nn.Conv2d) -> list[int]:
    """ONNX pads [top, left, bottom, right] equal to torch's padding (ints, 'valid' or 'same')."""
    if conv.padding == "valid":
        return [0, 0, 0, 0]
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    return list(conv.padding) * 2


class _Graph:
    """Collects artifact nodes and tensors while the model is walked.

    Sequentials are walked leaf by leaf; a module with an `emit(g, name, x)` method (a residual block, a
    XiNet block) writes its own dataflow with `add`, `layer` and `sequence`."""

    def __init__(self, input_shapes: dict[int, list[int]] | None = None):
        self.nodes: list[dict] = []
        self.tensors: dict[str, tuple[np.ndarray, str]] = {}
        self.input_shapes = input_shapes or {}
        self.pending_pad: list[int] | None = None  # a ZeroPad2d's [top, left, bottom, right], for the next conv

    def input_shape(self, module: nn.Module) -> list[int]:
        """The per-sample (C, H, W) `module` reads (recorded by a forward pass before the walk)."""
        return self.input_shapes[id(module)]

    def add(self, op: str, inputs: list[str], output: str, **fields) -> str:
        if self.pending_pad is not None:
            raise ModelFileError(f"layer {output}: zero padding must be followed by a convolution to export")
        self.nodes.append({"op": op, "inputs": inputs, "output": output, **fields})
        return output

    def layer(self, name: str, module: nn.Module, x: str) -> str:
        """A conv or linear layer: float32 weights, or b-bit integers + per-channel scales + act quantizer."""
        weight = module.weight.detach().float()
        fields: dict = {"name": name, "weight": f"{name}.weight", "bits": None, "act": None}
        bits = getattr(module, "bits", None)
        if bits is not None:
            scale = weight_scale(weight, bits)                                        # (C_out,)
            shape = (-1,) + (1,) * (weight.dim() - 1)
            q = torch.round(fake_quant_weight(weight, bits) / scale.reshape(shape)).to(torch.int64)  # exact integers
            self.tensors[f"{name}.weight"] = (q.numpy(), f"int{bits}")
            self.tensors[f"{name}.weight_scale"] = (scale.numpy(), "float32")
            act: ActQuant = module.act
            if act.observing:
                raise ModelFileError(f"layer {name}: activation quantizer is not calibrated (freeze it first)")
            fields.update(bits=bits, weight_scale=f"{name}.weight_scale",
                          act={"bits": act.bits, "scale": float(act.scale), "zero_point": int(act.zero_point),
                               "signed": bool(act.signed)})
        else:
            self.tensors[f"{name}.weight"] = (weight.numpy(), "float32")
        if module.bias is not None:
            self.tensors[f"{name}.bias"] = (module.bias.detach().float().numpy(), "float32")
            fields["bias"] = f"{name}.bias"
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                raise ModelFileError(f"layer {name}: padding mode {module.padding_mode!r} cannot be exported")
            pads = _pads(module)
            if self.pending_pad is not None:  # a ZeroPad2d before the conv: its zeros join the conv's padding
                pads, self.pending_pad = [p + q for p, q in zip(pads, self.pending_pad)], None
            fields.update(kernel=list(module.kernel_size), stride=list(module.stride), pads=pads,
                          dilation=list(module.dilation), group=module.groups)
            return self.add("conv", [x], name, **fields)
        return self.add("linear", [x], name, **fields)

    def module(self, name: str, child: nn.Module, x: str) -> str:
        """One module of the network applied to tensor `x`; returns its output tensor's name."""
        if hasattr(child, "emit"):
            return child.emit(self, name, x)
        if isinstance(child, nn.Sequential):
            return self.sequence(name, child, x)
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            return self.layer(name, child, x)
        if isinstance(child, nn.ReLU):
            return self.add("relu", [x], name)
        if isinstance(child, nn.ReLU6):
            return self.add("relu6", [x], name)
        if isinstance(child, nn.Hardswish):
            return self.add("hardswish", [x], name)
        if isinstance(child, nn.Sigmoid):
            return self.add("sigmoid", [x], name)
        if isinstance(child, nn.SiLU):  # x * sigmoid(x)
            return self.add("mul", [x, self.add("sigmoid", [x], f"{name}.sigmoid")], name)
        if isinstance(child, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s = child.kernel_size, child.stride or child.kernel_size
            k, s = ([k, k] if isinstance(k, int) else list(k)), ([s, s] if isinstance(s, int) else list(s))
            p = child.padding if isinstance(child.padding, int) else None
            if p or getattr(child, "dilation", 1) not in (1, (1, 1)) or child.ceil_mode:
                raise ModelFileError(f"layer {name}: only unpadded, undilated floor-mode pooling exports")
            op = "maxpool" if isinstance(child, nn.MaxPool2d) else "avgpool"
            return self.add(op, [x], name, kernel=k, stride=s, pads=[0] * 4)
        if isinstance(child, nn.ZeroPad2d):
            left, right, top, bottom = child.padding
            self.pending_pad = [top, left, bottom, right]
            return x
        if isinstance(child, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            return x  # inference: no-ops
        raise ModelFileError(f"layer {name}: {type(child).__name__} cannot be exported (fold BatchNorm first; "
                             f"supported: Conv2d, Linear, ReLU, ReLU6, Hardswish, Sigmoid, SiLU, MaxPool2d, "
                             f"AvgPool2d, ZeroPad2d before a Conv2d)")

    def sequence(self, prefix: str, seq: nn.Module, x: str) -> str:
        """Every child of a Sequential (recursively), in order."""
        for child_name, child in seq.named_children():
            x = self.module(f"{prefix}.{child_name}", child, x)
        return x


def _input_shapes(model: TinyM2Net, input_shapes: dict[str, tuple]) -> dict[int, list[int]]:
    """id(module) -> the per-sample shape of its first input, from one forward pass on zeros."""
    seen: dict[int, list[int]] = {}

    def record(module, args, out):
        if args and isinstance(args[0], torch.Tensor):
            seen[id(module)] = list(args[0].shape[1:])

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model({m: torch.zeros(1, *input_shapes[m]) for m in model.modalities})
    finally:
        for h in handles:
            h.remove()
    return seen


def to_artifact(model: TinyM2Net, meta: dict) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """The artifact header and tensors of `model` (BN-folded or fake-quantized, eval mode)."""
    model = fold_batchnorm(_copy(model)).eval()
    g = _Graph(_input_shapes(model, meta["input_shapes"]))
    ends = []
    for m in model.modalities:
        branch = model.branches[m]
        x = g.module(f"branches.{m}.features", branch.features, m)
        with torch.no_grad():
            shape = branch.features(torch.zeros(1, *meta["input_shapes"][m])).shape[1:]  # (C, H, W)
        x = g.add("flatten", [x], f"branches.{m}.flatten", shape=list(shape))
        ends.append(g.sequence(f"branches.{m}.dense", branch.dense, x))
    x = g.add("concat", ends, "fused") if len(ends) > 1 else ends[0]
    out = g.sequence("head", model.head, x)
    inputs = {m: list(branch_shape) for m, branch_shape in meta["input_shapes"].items()}
    header = {"format": "tinym2net", "case": meta.get("case"), "variant": meta.get("variant"),
              "classes": list(meta["classes"]), "inputs": {m: inputs[m] for m in model.modalities},
              "bits": meta.get("bits"), "nodes": g.nodes, "output": out}
    return header, g.tensors


def export(model: TinyM2Net, path: Path, *, case: str, variant: str, classes: list[str],
           input_shapes: dict[str, tuple], bits: dict[str, int] | None) -> int:
    """Write `model` to `path` as a `.tm2` artifact; returns its size in bytes."""
    header, tensors = to_artifact(model, {"case": case, "variant": variant, "classes": classes,
                                          "input_shapes": input_shapes, "bits": bits})
    size = tm2.write(path, header, tensors)
    log.info("exported %s/%s: %d nodes, %d bytes", case, variant, len(header["nodes"]), size)
    return size


def weight_payload_bytes(model: TinyM2Net, bits: dict[str, int] | None) -> int:
    """What the artifact must hold: sum(params x bits)/8 per layer plus float32 scales and biases."""
    total = 0
    for name, module in quantizable_layers(fold_batchnorm(_copy(model))).items():
        b = (bits or {}).get(name)
        b = None if b == FLOAT_BITS else b
        n = module.weight.numel()
        total += packed_nbytes(n, b) + 4 * module.weight.shape[0] if b else 4 * n
        total += 4 * module.bias.numel() if module.bias is not None else 0
    return total
