"""ONNX Runtime backend: the artifact as an int8 QDQ ONNX graph, fused by ONNX Runtime into integer kernels.

Each b-bit weight becomes an int8 initializer holding exactly the b-bit integers, with QuantizeLinear/
DequantizeLinear around every quantized conv and linear layer (QLinearConv, QGemm after fusion).
Activations are uint8 (signed ones with zero point 128) and clamped to their exact b-bit range by an
integer Clip, so the integers the kernels see are the fake-quantized model's. Biases are int32 on the
accumulator's scale (input scale x weight scale), as integer kernels require, so an output within half
a bias step of a rounding boundary can land one level off. Float (32-bit) layers stay float, and so do
the float ops (Add, Mul, Sigmoid, HardSwish, Clip for relu6, AveragePool); a quantized layer reading a
float tensor quantizes (QDQ) its own copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import graph
from ..bitpack import int_range
from ..errors import ModelFileError
from ..tm2 import Artifact

NAME = "onnx"
OPSET = 21
IR_VERSION = 10


@dataclass
class _Builder:
    """Accumulates ONNX nodes and initializers while the header's nodes are translated."""
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str, **attrs) -> str:
        from onnx import helper
        out = self.name(stem)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out + "_" + op_type, **attrs))
        return out


def _act(act: dict | None) -> dict | None:
    """An activation quantizer as ONNX stores it.

    Up to 8 bits every activation is uint8, the kernels' fast type: unsigned ones with zero point 0,
    signed (symmetric) ones shifted by 128 (zero point 128), so [-127, 127] is stored as [1, 255].
    `qmin`/`qmax` are the stored integers' exact range (e.g. [0, 15] at 4 bits unsigned).
    """
    if not act:
        return None
    bits, signed = act["bits"], act["signed"]
    if bits <= 8:
        dtype, offset = np.uint8, 128 if signed else 0
    else:
        dtype, offset = (np.int16, 0) if signed else (np.uint16, 0)
    lo, hi = int_range(bits, signed)
    info = np.iinfo(dtype)
    qmin, qmax = lo + offset, hi + offset
    return {"scale": np.float32(act["scale"]), "zero_point": dtype(act["zero_point"] + offset), "qmin": qmin,
            "qmax": qmax, "narrow": (qmin, qmax) != (info.min, info.max), "dtype": dtype}


def build(artifact: Artifact, nhwc_flatten: bool = True):
    """The artifact's network as an ONNX model (QDQ for quantized layers, float otherwise).

    With `nhwc_flatten`, a flatten that feeds only linear layers reads its input channels-last (the
    layers' weight columns permuted to match), so ONNX Runtime keeps the convolutions channels-last
    up to the dense layer instead of transposing back; the result is the same.
    """
    from onnx import TensorProto, helper

    h, t = artifact.header, artifact.tensors
    b = _Builder()
    raw_points, ends = graph.quant_points(h["nodes"])
    points = {k: _act(v) for k, v in raw_points.items()}
    values: dict[str, str] = {}  # header tensor name -> ONNX value name
    permuted = graph.nhwc_flattens(h["nodes"]) if nhwc_flatten else {}

    def qdq(onnx_name: str, q: dict, clip: bool) -> str:
        """Quantize and dequantize `onnx_name` with activation quantizer `q` (`clip`: to its exact b-bit range)."""
        scale, zp = b.const("act_scale", q["scale"]), b.const("act_zp", np.asarray(q["zero_point"]))
        onnx_name = b.op("QuantizeLinear", [onnx_name, scale, zp], "q")
        if q["narrow"] and clip:  # clamp the integers to the exact b-bit range
            onnx_name = b.op("Clip", [onnx_name, b.const("qmin", np.asarray(q["qmin"], q["dtype"])),
                                      b.const("qmax", np.asarray(q["qmax"], q["dtype"]))], "clip")
        return b.op("DequantizeLinear", [onnx_name, scale, zp], "dq")

    def emit(tensor: str, onnx_name: str) -> None:
        """Register a produced tensor, quantizing/dequantizing it when a quantizer sits here."""
        q = points.get(tensor)
        values[tensor] = qdq(onnx_name, q, tensor in ends) if q is not None else onnx_name

    inputs = []
    for m, shape in h["inputs"].items():
        inputs.append(helper.make_tensor_value_info(m, TensorProto.FLOAT, ["batch", *shape]))
        emit(m, m)
    for node in h["nodes"]:
        op, ins = node["op"], [values[i] for i in node["inputs"]]
        if op in graph.LAYERS:
            q = points.get(node["inputs"][0])
            if node.get("act") and q is None:  # a float tensor: the layer quantizes its own copy
                q = _act(node["act"])
                ins = [qdq(ins[0], q, True)]
            out = _layer(b, node, ins[0], t, q, permuted.get(node["inputs"][0]))
        elif op == "relu":
            out = b.op("Relu", ins, node["output"])
        elif op == "relu6":
            out = b.op("Clip", [ins[0], b.const("zero", np.float32(0)), b.const("six", np.float32(6))], node["output"])
        elif op in ("add", "mul", "sigmoid", "hardswish"):
            out = b.op({"add": "Add", "mul": "Mul", "sigmoid": "Sigmoid", "hardswish": "HardSwish"}[op], ins,
                       node["output"])
        elif op == "avgpool":
            out = b.op("AveragePool", ins, "avgpool", kernel_shape=node["kernel"], strides=node["stride"],
                       pads=node["pads"])
        elif op == "maxpool":
            out = b.op("MaxPool", ins, "pool", kernel_shape=node["kernel"], strides=node["stride"], pads=node["pads"])
        elif op == "flatten":
            if node["output"] in permuted:
                ins = [b.op("Transpose", ins, "nhwc", perm=[0, 2, 3, 1])]
            out = b.op("Flatten", ins, "flat", axis=1)
        elif op == "concat":
            out = b.op("Concat", ins, "cat", axis=1)
        else:
            raise ModelFileError(f"{artifact.path}: unknown node type {op!r}")
        emit(node["output"], out)
    final = values[h["output"]]
    b.nodes.append(helper.make_node("Identity", [final], ["logits"], name="logits_Identity"))
    onnx_graph = helper.make_graph(b.nodes, f"tinym2net-{h.get('case', '')}-{h.get('variant', '')}", inputs,
                                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(h["classes"])])],
                                   b.inits)
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                             producer_name="tinym2net")


def _layer(b: _Builder, node: dict, x: str, t: dict[str, np.ndarray], q: dict | None,
           nhwc: list[int] | None = None) -> str:
    """One conv or linear layer: QDQ weights (int8 initializers) and int32 bias when quantized.
    `nhwc`: the (C, H, W) of a linear layer's flattened input, which arrives channels-last."""
    weight, bias = t[node["weight"]], t[node["bias"]] if node.get("bias") else None
    if nhwc is not None:
        weight = graph.permute_columns(weight, nhwc)
    if node.get("bits"):
        w_scale = t[node["weight_scale"]].astype(np.float32)                     # (C_out,)
        wq = weight.astype(np.int8 if node["bits"] <= 8 else np.int16)
        w_scale_name = b.const("w_scale", w_scale)
        w = b.op("DequantizeLinear", [b.const("w_q", wq), w_scale_name, b.const("w_zp", np.zeros_like(wq, shape=len(w_scale)))],
                 "w", axis=0)
        if bias is not None and q is not None:
            b_scale = (q["scale"] * w_scale).astype(np.float32)
            bq = np.round(bias / b_scale)
            if np.all(np.abs(bq) < 2 ** 31 - 1):  # int32 bias on the accumulator's scale, as the kernels want
                bias_name = b.op("DequantizeLinear", [b.const("b_q", bq.astype(np.int32)), b.const("b_scale", b_scale),
                                                      b.const("b_zp", np.zeros(len(b_scale), np.int32))], "b", axis=0)
            else:
                bias_name = b.const("bias", bias.astype(np.float32))
        else:
            bias_name = b.const("bias", bias.astype(np.float32)) if bias is not None else ""
    else:
        w = b.const("w", weight.astype(np.float32))
        bias_name = b.const("bias", bias.astype(np.float32)) if bias is not None else ""
    ins = [x, w] + ([bias_name] if bias_name else [])
    if node["op"] == "conv":
        return b.op("Conv", ins, node["name"], kernel_shape=node["kernel"], strides=node["stride"], pads=node["pads"],
                    dilations=node["dilation"], group=node["group"])
    return b.op("Gemm", ins, node["name"], transB=1)


def session_options(threads: int | None = 1, optimization: str = "all"):
    """ONNX Runtime session options: `threads` intra-op threads (None: all cores), sequential execution."""
    import onnxruntime as ort

    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = 0 if threads is None else int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


class Session:
    """An artifact opened in ONNX Runtime (CPU): `run(inputs)` on NCHW float32 arrays -> logits."""

    name = NAME

    def __init__(self, artifact: Artifact, threads: int | None = 1, optimization: str = "all"):
        import onnxruntime as ort

        self.proto = build(artifact)
        try:
            self.session = ort.InferenceSession(self.proto.SerializeToString(), session_options(threads, optimization),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for an invalid graph
            raise ModelFileError(f"{artifact.path}: ONNX Runtime rejects the graph "
                                 f"({str(exc).splitlines()[0][:200]})") from None

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], feed)[0]


def version() -> str:
    import onnxruntime
    return f"onnxruntime {onnxruntime.__version__}"
