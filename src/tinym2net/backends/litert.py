"""LiteRT backend: the artifact written as a TFLite flatbuffer from its own integers, run by LiteRT with XNNPACK.

No converter is involved: the flatbuffer is built with the schema bindings that ship with
`ai-edge-litert` (`schema_py_generated`, on `flatbuffers`), on the device, from the packed weights.
Layout is channels-last throughout (TFLite's): the NCHW inputs are transposed once at the start (a
reshape for one channel), and flattens read channels-last (the dense weights' columns permuted).

Quantized layers (widths up to 8) become int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with
per-channel weight scales and int32 biases on the accumulator's scale (the one departure from the
fake-quantized arithmetic, as in the ONNX backend). Each int8 tensor is stored so that the exact
b-bit clamp of the fake quantizer costs nothing:

- unsigned b-bit [0, 2^b-1] (after a ReLU): zero point 127 - (2^b-1), so int8 saturation is the upper
  clamp and the producer's fused RELU the lower one;
- signed b-bit [-(2^(b-1)-1), 2^(b-1)-1]: the tensor is labelled with scale 1/(2^(b-1)-1) instead of its
  true scale s, so the producer's fused RELU_N1_TO_1 clamps exactly to the b-bit range; the factor
  k = label / s is folded into the weight-scale labels of the layers around it, which leaves every
  integer the kernels compute unchanged.

Float (32-bit) layers run in float; QUANTIZE/DEQUANTIZE sit where precision changes. The float ops
(`graph.FLOAT_OPS`: ADD, MUL, LOGISTIC, HARD_SWISH, RELU6, AVERAGE_POOL_2D) run on true float values; a
quantized layer reading a float tensor quantizes its own copy the way the network inputs are quantized.
A relu6 after a layer is fused into it (RELU6 clamp); padding that is neither VALID nor SAME is a PAD
(an int8 tensor padded with its zero point). A quantized
layer whose output is not quantized again (the output layer) runs in float on its dequantized input
with its dequantized weights: exactly the fake-quantized arithmetic.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .. import graph
from ..bitpack import int_range
from ..errors import ModelFileError
from ..tm2 import Artifact

NAME = "litert"


def _schema():
    from ai_edge_litert import schema_py_generated as fb
    return fb


class _Int8:
    """How an int8 tensor stores a quantized activation: label scale, zero point, and k = label / true scale."""

    def __init__(self, act: dict):
        bits, scale = act["bits"], float(act["scale"])
        lo, hi = int_range(bits, act["signed"])
        if act["signed"]:
            self.label, self.zero_point = 1.0 / hi, 0
        else:
            self.label, self.zero_point = scale, 127 - hi
        self.scale, self.signed, self.lo, self.hi = scale, bool(act["signed"]), lo, hi
        self.k = self.label / scale


class _Writer:
    """Tensors, buffers and operators of one subgraph, then the packed model."""

    def __init__(self):
        fb = _schema()
        self.fb = fb
        self.tensors, self.ops, self.codes, self.buffers = [], [], {}, [fb.BufferT()]

    def tensor(self, name: str, shape, dtype: str, data: np.ndarray | None = None, scale=None, zero_point=None,
               axis: int = 0, batch: bool = False) -> int:
        fb = self.fb
        t = fb.TensorT()
        t.name = name.encode()
        t.shape = [int(d) for d in shape]
        if batch:
            t.shapeSignature = [-1] + t.shape[1:]
        t.type = {"float32": fb.TensorType.FLOAT32, "int8": fb.TensorType.INT8, "int32": fb.TensorType.INT32}[dtype]
        t.buffer = 0
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data, dtype=dtype).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = fb.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scale)]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zero_point if zero_point is not None else 0)]
            if len(q.zeroPoint) == 1 and len(q.scale) > 1:
                q.zeroPoint = q.zeroPoint * len(q.scale)
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def _map(self, name: str, index: int):
        entry = self.fb.TensorMapT()
        entry.name, entry.tensorIndex = name.encode(), index
        return entry

    def op(self, code: str, inputs: list[int], outputs: list[int], options: str | None = None, version: int = 1,
           **fields) -> None:
        fb = self.fb
        builtin = getattr(fb.BuiltinOperator, code)
        if (builtin, version) not in self.codes:
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), version
            self.codes[(builtin, version)] = len(self.codes)
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[(builtin, version)], list(inputs), list(outputs)
        if options:
            opts = getattr(fb, options + "T")()
            for key, value in fields.items():
                setattr(opts, key, value)
            o.builtinOptionsType, o.builtinOptions = getattr(fb.BuiltinOptions, options), opts
        self.ops.append(o)

    def finish(self, inputs: dict[str, int], outputs: dict[str, int], description: str) -> bytes:
        """The packed model, with a `serving_default` signature naming the inputs and outputs."""
        import flatbuffers

        fb = self.fb
        sub = fb.SubGraphT()
        sub.tensors, sub.operators, sub.name = self.tensors, self.ops, b"main"
        sub.inputs, sub.outputs = list(inputs.values()), list(outputs.values())
        signature = fb.SignatureDefT()
        signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
        signature.inputs, signature.outputs = ([self._map(k, v) for k, v in d.items()] for d in (inputs, outputs))
        model = fb.ModelT()
        model.version, model.description, model.subgraphs, model.buffers = 3, description.encode(), [sub], self.buffers
        model.signatureDefs = [signature]
        codes = [None] * len(self.codes)
        for (builtin, version), i in self.codes.items():
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), version
            codes[i] = c
        model.operatorCodes = codes
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _same_pads(size: list[int], kernel: list[int], stride: list[int], dilation: list[int]) -> list[int]:
    """TFLite's SAME padding as [top, left, bottom, right]."""
    before, after = [], []
    for n, k, s, d in zip(size, kernel, stride, dilation):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    return before + after


def _conv_out(size: list[int], kernel, stride, dilation, pads) -> list[int]:
    return [(n + pads[i] + pads[i + 2] - d * (k - 1) - 1) // s + 1
            for i, (n, k, s, d) in enumerate(zip(size, kernel, stride, dilation))]


def build(artifact: Artifact) -> bytes:
    """The artifact as a TFLite flatbuffer taking the NCHW float32 inputs and returning float32 logits."""
    fb = _schema()
    act_fn = fb.ActivationFunctionType
    h, t = artifact.header, artifact.tensors
    nodes = h["nodes"]
    raw_points, _ = graph.quant_points(nodes)
    if h.get("output_act"):  # a quantized network output (per-layer latency graphs): returned as int8
        raw_points[h["output"]] = h["output_act"]
    for tensor, act in raw_points.items():
        if act["bits"] > 8:
            raise ModelFileError(f"{artifact.path}: {act['bits']}-bit activations need the onnx backend "
                                 f"(LiteRT's int8 kernels take up to 8 bits)")
    points = {k: _Int8(v) for k, v in raw_points.items()}
    permuted = graph.nhwc_flattens(nodes)
    readers = graph.consumers(nodes)
    fused = {}  # relu/relu6 node output -> its op (the activation is fused into the layer before it)
    for n in nodes:
        if n["op"] in graph.LAYERS and n["output"] not in points and n["output"] != h["output"]:
            after = readers.get(n["output"], [])
            if len(after) == 1 and after[0]["op"] in graph.ACTIVATIONS:
                q = points.get(after[0]["output"])
                if after[0]["op"] == "relu" or q is None or not q.signed:  # relu6 clamps at 6 only unsigned
                    fused[after[0]["output"]] = after[0]["op"]
    skip = {id(r) for n in nodes for r in readers.get(n["output"], []) if r["output"] in fused}
    w = _Writer()
    vals: dict[str, tuple[int, _Int8 | None, list[int]]] = {}  # tensor -> (index, int8 storage or None, shape)

    def new(name: str, shape: list[int], q: _Int8 | None) -> int:
        if q is None:
            return w.tensor(name, shape, "float32", batch=True)
        return w.tensor(name, shape, "int8", scale=q.label, zero_point=q.zero_point, batch=True)

    def as_float(tensor: str) -> tuple[int, float]:
        """A float view of `tensor` (DEQUANTIZE if int8) and the factor k by which it exceeds the true values."""
        idx, q, shape = vals[tensor]
        if q is None:
            return idx, 1.0
        out = new(f"{tensor}/float", shape, None)
        w.op("DEQUANTIZE", [idx], [out], version=2)
        return out, q.k

    def true_float(tensor: str) -> int:
        """A float tensor of `tensor`'s true values (an int8 one dequantized and, if relabelled, rescaled)."""
        idx, k = as_float(tensor)
        if k == 1.0:
            return idx
        out = new(f"{tensor}/true", vals[tensor][2], None)
        w.op("MUL", [idx, w.tensor(f"{tensor}/1_k", [], "float32", np.array(1.0 / k, np.float32))], [out],
             "MulOptions", fusedActivationFunction=act_fn.NONE)
        return out

    def quantize(name: str, x: int, shape: list[int], q: _Int8) -> int:
        """int8 storage `q` of the float tensor `x`: clamp(round(x / s)) = QUANTIZE(clamp(x * k, -1, 1)) signed,
        QUANTIZE(relu(x)) unsigned (int8 saturation is the upper clamp)."""
        clamped = new(f"{name}/clamped", shape, None)
        if q.signed:
            w.op("MUL", [x, w.tensor(f"{name}/k", [], "float32", np.array(q.k, np.float32))], [clamped],
                 "MulOptions", fusedActivationFunction=act_fn.RELU_N1_TO_1)
        else:
            w.op("RELU", [x], [clamped])
        y = new(f"{name}/q", shape, q)
        w.op("QUANTIZE", [clamped], [y], version=2)
        return y

    inputs = {}
    for m, shape in h["inputs"].items():
        q = points.get(m)
        if h.get("raw_inputs"):  # per-layer latency graphs: inputs fed as stored (NHWC, int8 if quantized)
            shape = [1, shape[1], shape[2], shape[0]] if len(shape) == 3 else [1, *shape]
            inputs[m] = new(m, shape, q)
            vals[m] = (inputs[m], q, shape)
            continue
        x = w.tensor(m, [1, *shape], "float32", batch=True)                               # (B, C, H, W)
        inputs[m] = x
        if len(shape) == 3:
            nhwc = [1, shape[1], shape[2], shape[0]]
            y = new(f"{m}/nhwc", nhwc, None)
            if shape[0] == 1:
                w.op("RESHAPE", [x, w.tensor(f"{m}/shape", [4], "int32", np.array([-1, *nhwc[1:]], np.int32))], [y],
                     "ReshapeOptions", newShape=[-1, *nhwc[1:]])
            else:
                w.op("TRANSPOSE", [x, w.tensor(f"{m}/perm", [4], "int32", np.array([0, 2, 3, 1], np.int32))], [y],
                     "TransposeOptions")
            x, shape = y, nhwc
        else:
            shape = [1, *shape]
        if q is not None:  # the input quantizer
            x = quantize(m, x, shape, q)
        vals[m] = (x, q, shape)
    for node in nodes:
        if id(node) in skip:
            continue
        op = node["op"]
        if op in graph.LAYERS:
            relu_out = next((r["output"] for r in readers.get(node["output"], []) if r["output"] in fused), None)
            out_name = relu_out or node["output"]
            source = node["inputs"][0]
            if node.get("act") and vals[source][1] is None:  # a float tensor: the layer quantizes its own copy
                own = f"{source}@{node['name']}"
                q = _Int8(node["act"])
                vals[own] = (quantize(own, true_float(source), vals[source][2], q), q, vals[source][2])
                node = {**node, "inputs": [own]}
            _layer(w, fb, act_fn, node, out_name, fused.get(relu_out), vals, points, t, permuted, as_float, new,
                   artifact.path)
            continue
        (x, xq, shape), out_name = vals[node["inputs"][0]], node["output"]
        if op in graph.FLOAT_OPS:  # on true float values; quantized after if a layer reads it stored
            ins = [true_float(i) for i in node["inputs"]]
            oshape = shape
            if op == "avgpool":
                (kh, kw), (sh, sw) = node["kernel"], node["stride"]
                oshape = [1, (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1, shape[3]]
            out = new(out_name if out_name not in points else f"{out_name}/float", oshape, None)
            if op == "add":
                w.op("ADD", ins, [out], "AddOptions", fusedActivationFunction=act_fn.NONE)
            elif op == "mul":
                w.op("MUL", ins, [out], "MulOptions", fusedActivationFunction=act_fn.NONE)
            elif op == "avgpool":
                w.op("AVERAGE_POOL_2D", ins, [out], "Pool2DOptions", padding=fb.Padding.VALID, strideW=sw,
                     strideH=sh, filterWidth=kw, filterHeight=kh, fusedActivationFunction=act_fn.NONE)
            else:
                w.op({"sigmoid": "LOGISTIC", "hardswish": "HARD_SWISH", "relu6": "RELU6"}[op], ins, [out])
            q = points.get(out_name)
            vals[out_name] = (quantize(out_name, out, oshape, q) if q else out, q, oshape)
            continue
        if op == "relu":
            out = new(out_name, shape, xq)
            w.op("RELU", [x], [out])
            vals[out_name] = (out, xq, shape)
        elif op == "maxpool":
            if any(node["pads"]):
                raise ModelFileError(f"{artifact.path}: padded max pooling is not supported by the litert backend")
            (kh, kw), (sh, sw) = node["kernel"], node["stride"]
            oshape = [1, (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1, shape[3]]
            out = new(out_name, oshape, xq)
            w.op("MAX_POOL_2D", [x], [out], "Pool2DOptions", version=2, padding=fb.Padding.VALID, strideW=sw,
                 strideH=sh, filterWidth=kw, filterHeight=kh, fusedActivationFunction=act_fn.NONE)
            vals[out_name] = (out, xq, oshape)
        elif op == "flatten":
            if out_name not in permuted:  # channels-first order wanted: transpose back to NCHW first
                perm = w.tensor(f"{out_name}/perm", [4], "int32", np.array([0, 3, 1, 2], np.int32))
                tr = new(f"{out_name}/nchw", [1, shape[3], shape[1], shape[2]], xq)
                w.op("TRANSPOSE", [x, perm], [tr], "TransposeOptions")
                x = tr
            size = int(np.prod(shape[1:]))
            new_shape = w.tensor(f"{out_name}/shape", [2], "int32", np.array([-1, size], np.int32))
            out = new(out_name, [1, size], xq)
            w.op("RESHAPE", [x, new_shape], [out], "ReshapeOptions", newShape=[-1, size])
            vals[out_name] = (out, xq, [1, size])
        elif op == "concat":
            parts = [vals[i] for i in node["inputs"]]
            if len({(p[1].label, p[1].zero_point) if p[1] else None for p in parts}) != 1:
                raise ModelFileError(f"{artifact.path}: concat {out_name} joins differently stored inputs")
            oshape = [1, sum(p[2][1] for p in parts)]
            out = new(out_name, oshape, xq)
            w.op("CONCATENATION", [p[0] for p in parts], [out], "ConcatenationOptions", version=2, axis=1,
                 fusedActivationFunction=act_fn.NONE)
            vals[out_name] = (out, xq, oshape)
        else:
            raise ModelFileError(f"{artifact.path}: unknown node type {op!r}")
        q = points.get(out_name)
        if q is not None and vals[out_name][1] is None:  # a float input, a stored output: quantize it here
            idx, _, oshape = vals[out_name]
            vals[out_name] = (quantize(f"{out_name}/stored", idx, oshape, q), q, oshape)
    final, k = (vals[h["output"]][0], 1.0) if h.get("output_act") else as_float(h["output"])
    if k != 1.0:
        raise ModelFileError(f"{artifact.path}: the output {h['output']} is a relabelled int8 tensor")
    return w.finish(inputs, {"logits": final}, f"tinym2net {h.get('case')}/{h.get('variant')}")


def _layer(w: _Writer, fb, act_fn, node: dict, out_name: str, relu: str | None, vals, points, t, permuted, as_float, new,
           path) -> None:
    """One conv or linear layer: int8 kernel, or float (a float layer, or a quantized one whose output stays float);
    `relu`: the activation fused into it (relu, relu6 or None)."""
    x, xq, shape = vals[node["inputs"][0]]
    oq = points.get(out_name)
    weight = t[node["weight"]]
    conv = node["op"] == "conv"
    # TFLite's convolutions want a bias: a layer without one gets zeros
    bias = t[node["bias"]].astype(np.float64) if node.get("bias") else np.zeros(len(weight)) if conv else None
    if not conv and node["inputs"][0] in permuted:
        weight = graph.permute_columns(weight, permuted[node["inputs"][0]])
    c_out = weight.shape[0]
    if conv:
        group, c_in = node["group"], shape[3]
        depthwise = group > 1
        if depthwise and not (group == c_in and weight.shape[1] == 1 and c_out % c_in == 0):
            raise ModelFileError(f"{path}: grouped convolution {node['name']} is not supported by the litert backend")
        size = shape[1:3]
        pads = list(node["pads"])
        if any(pads) and pads != _same_pads(size, node["kernel"], node["stride"], node["dilation"]):
            # other zero padding (PhiNet's symmetric pad at stride 2): a PAD op, then VALID; an int8 tensor
            # is padded with its zero point, the stored 0
            top, left, bottom, right = pads
            padded = [1, shape[1] + top + bottom, shape[2] + left + right, shape[3]]
            out = w.tensor(f"{node['name']}/padded", padded, "int8" if xq else "float32",
                           scale=xq.label if xq else None, zero_point=xq.zero_point if xq else None, batch=True)
            w.op("PAD", [x, w.tensor(f"{node['name']}/pads", [4, 2], "int32",
                                     np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))], [out],
                 "PadOptions", version=2)
            vals[f"{node['name']}/padded"] = (out, xq, padded)
            node = {**node, "inputs": [f"{node['name']}/padded"]}
            x, shape, size, pads = out, padded, padded[1:3], [0, 0, 0, 0]
        padding = fb.Padding.SAME if any(pads) else fb.Padding.VALID
        oh, ow = _conv_out(size, node["kernel"], node["stride"], node["dilation"], pads)
        oshape = [1, oh, ow, c_out]
        # (C_out, C_in, kh, kw) -> OHWI; depthwise (C_out, 1, kh, kw) -> (1, kh, kw, C_out)
        layout = (1, 2, 3, 0) if depthwise else (0, 2, 3, 1)
        axis = 3 if depthwise else 0
    else:
        oshape, layout, axis, depthwise = [1, c_out], (0, 1), 0, False
    quantized = bool(node.get("bits")) and xq is not None
    scale = t[node["weight_scale"]].astype(np.float64) if quantized else None
    if quantized and oq is not None and bias is not None:
        bq = np.round(bias / (xq.scale * scale))
        quantized_kernel = bool(np.all(np.abs(bq) < 2 ** 31 - 1))
    else:
        quantized_kernel = quantized and oq is not None
    if quantized_kernel:
        w_label = scale / xq.k * oq.k
        wi = w.tensor(f"{node['name']}.weight", weight.transpose(layout).shape, "int8",
                      weight.astype(np.int8).transpose(layout), scale=w_label, zero_point=0, axis=axis)
        ins = [x, wi]
        if bias is not None:
            ins.append(w.tensor(f"{node['name']}.bias", [c_out], "int32", bq.astype(np.int32),
                                scale=xq.label * w_label, zero_point=0))
        act = act_fn.RELU6 if relu == "relu6" else act_fn.RELU if relu or not oq.signed else act_fn.RELU_N1_TO_1
        out = new(out_name, oshape, oq)
        versions = {"conv": 3, "dw": 3, "fc": 4}
    else:  # float arithmetic: on the true input values (x / k), producing k_out times the true output
        xf, k_in = as_float(node["inputs"][0])
        real = weight.astype(np.float64) * (scale.reshape((-1,) + (1,) * (weight.ndim - 1)) if quantized else 1.0)
        k_out = oq.k if oq is not None else 1.0
        wf = (real * (k_out / k_in)).astype(np.float32)
        wi = w.tensor(f"{node['name']}.weight", wf.transpose(layout).shape, "float32", wf.transpose(layout))
        ins = [xf, wi]
        if bias is not None and quantized:  # on the accumulator's grid, as the fake quantizer rounds it
            step = np.float32(xq.scale) * scale.astype(np.float32)
            rounded = np.round(bias.astype(np.float32) / step)
            bias = (rounded * step).astype(np.float64) if np.all(np.abs(rounded) < 2 ** 31 - 1) else bias
        if bias is not None:
            ins.append(w.tensor(f"{node['name']}.bias", [c_out], "float32", (bias * k_out).astype(np.float32)))
        if relu == "relu6":
            act = act_fn.RELU6
        elif relu or (oq is not None and not oq.signed):
            act = act_fn.RELU
        else:
            act = act_fn.RELU_N1_TO_1 if oq is not None else act_fn.NONE
        out = new(out_name if oq is None else f"{out_name}/float", oshape, None)
        versions = {"conv": 1, "dw": 1, "fc": 1}
    if conv and depthwise:
        w.op("DEPTHWISE_CONV_2D", ins, [out], "DepthwiseConv2DOptions", version=versions["dw"], padding=padding,
             strideW=node["stride"][1], strideH=node["stride"][0], depthMultiplier=c_out // shape[3],
             fusedActivationFunction=act, dilationWFactor=node["dilation"][1], dilationHFactor=node["dilation"][0])
    elif conv:
        w.op("CONV_2D", ins, [out], "Conv2DOptions", version=versions["conv"], padding=padding,
             strideW=node["stride"][1], strideH=node["stride"][0], fusedActivationFunction=act,
             dilationWFactor=node["dilation"][1], dilationHFactor=node["dilation"][0])
    else:
        w.op("FULLY_CONNECTED", ins, [out], "FullyConnectedOptions", version=versions["fc"],
             fusedActivationFunction=act, keepNumDims=False)
    if not quantized_kernel and oq is not None:  # float result -> the next layer's int8 input
        q = new(out_name, oshape, oq)
        w.op("QUANTIZE", [out], [q], version=2)
        out = q
    vals[out_name] = (out, oq, oshape)


class Session:
    """An artifact opened in LiteRT (XNNPACK): `run(inputs)` on NCHW float32 arrays -> logits."""

    name = NAME

    def __init__(self, artifact: Artifact, threads: int | None = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.flatbuffer = build(artifact)
        try:
            self.interpreter = Interpreter(model_content=self.flatbuffer, num_threads=threads or os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelFileError(f"{artifact.path}: LiteRT rejects the graph ({str(exc).splitlines()[0][:200]})") from None
        details = self.interpreter.get_input_details()
        self.inputs = [(m, d["index"]) for m, d in zip(artifact.header["inputs"], details)]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = 1

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        it = self.interpreter
        batch = len(feed[self.inputs[0][0]])
        if batch != self.batch:
            for m, idx in self.inputs:
                it.resize_tensor_input(idx, feed[m].shape)
            it.allocate_tensors()
            self.batch = batch
        for m, idx in self.inputs:
            it.set_tensor(idx, feed[m])
        it.invoke()
        return it.get_tensor(self.output)


def version() -> str:
    """The LiteRT distribution's name and version (importing its interpreter library)."""
    from importlib.metadata import version as dist_version

    import ai_edge_litert.interpreter  # noqa: F401
    return f"ai-edge-litert {dist_version('ai-edge-litert')}"
