"""Device runtime: read a `.tm2` artifact, rebuild its int8 QDQ ONNX graph, run it with ONNX Runtime.

This module is what runs on the device (`pip install tinym2net[runtime]`): it imports only numpy,
onnx and onnxruntime, never torch. `export.py` writes the artifacts with `write_artifact`.

The `.tm2` format (little-endian):

    b"TM2\\0" | version u16 | reserved u16 | header_len u32 | payload_len u64
    | header: zlib-compressed JSON | payload: the tensors, back to back | crc32 u32 of all before it

The header describes the network as a list of nodes (`conv`, `linear`, `relu`, `maxpool`,
`flatten`, `concat`), the inputs (modality -> C, H, W) and every tensor of the payload (dtype,
shape, offset, size). Quantized weights are signed integers bit-packed at their layer's width
(`intB`: little-endian bit order, so 4-bit weights sit two per byte, low nibble first), with a
float32 scale per output channel and zero points 0; biases are float32; a layer's input-activation
scale, zero point and signedness are numbers in its node. So the file size is the sum over layers of
params x bits / 8 plus scales and biases, and a small header.

Loading unpacks each b-bit weight into an int8 initializer holding exactly the b-bit integers and
builds a QDQ graph (QuantizeLinear/DequantizeLinear around every quantized conv and linear layer) that
ONNX Runtime fuses into integer kernels (QLinearConv, QGemm). Activations are uint8 (signed ones with
zero point 128) and clamped to their exact b-bit range by an integer Clip, so the integers the kernels
see are the fake-quantized model's. The one departure from the fake-quantized arithmetic: biases are
int32 on the accumulator's scale (input scale x weight scale), as integer kernels require, so an
output within half a bias step of a rounding boundary can land one level off.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelFileError

log = logging.getLogger(__name__)

MAGIC = b"TM2\0"
VERSION = 1
SUFFIX = ".tm2"
_PREFIX = struct.Struct("<4sHHIQ")  # magic, version, reserved, header_len, payload_len
_CRC = struct.Struct("<I")
OPSET = 21
IR_VERSION = 10


# ---------------------------------------------------------------------------------------------
# bit packing

def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Signed integers (any shape) -> a little-endian bitstream of `bits` per value."""
    v = np.asarray(values).astype(np.int64).ravel()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values outside the {bits}-bit range [{lo}, {hi}]")
    u = (v & ((1 << bits) - 1)).astype(np.uint32)
    stream = ((u[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)  # (n, bits)
    return np.packbits(stream.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` signed integers (int8 up to 8 bits, else int16)."""
    stream = np.unpackbits(np.frombuffer(data, np.uint8), count=count * bits, bitorder="little")
    u = stream.reshape(count, bits).astype(np.int32) @ (1 << np.arange(bits, dtype=np.int32))  # (n,)
    signed = np.where(u >= 1 << (bits - 1), u - (1 << bits), u)
    return signed.astype(np.int8 if bits <= 8 else np.int16)


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# ---------------------------------------------------------------------------------------------
# the container

@dataclass
class Artifact:
    """A decoded `.tm2`: the header (graph, metadata) and its tensors (integers already unpacked)."""
    header: dict
    tensors: dict[str, np.ndarray]
    path: Path | None = None
    size_bytes: int = 0


def _encode_tensor(array: np.ndarray, dtype: str) -> bytes:
    if dtype == "float32":
        return np.ascontiguousarray(array, dtype="<f4").tobytes()
    if dtype.startswith("int"):
        return pack_bits(array, int(dtype[3:]))
    raise ValueError(f"unknown tensor dtype {dtype!r}")


def encode_artifact(header: dict, tensors: dict[str, tuple[np.ndarray, str]]) -> bytes:
    """The bytes of a `.tm2` file: `tensors` maps name -> (array, dtype `float32` or `int<bits>`)."""
    payload, table, offset = [], {}, 0
    for name, (array, dtype) in tensors.items():
        blob = _encode_tensor(array, dtype)
        table[name] = {"dtype": dtype, "shape": list(np.shape(array)), "offset": offset, "nbytes": len(blob)}
        payload.append(blob)
        offset += len(blob)
    head = zlib.compress(json.dumps({**header, "tensors": table}, separators=(",", ":")).encode(), 9)
    body = _PREFIX.pack(MAGIC, VERSION, 0, len(head), offset) + head + b"".join(payload)
    return body + _CRC.pack(zlib.crc32(body))


def write_artifact(path: str | os.PathLike, header: dict, tensors: dict[str, tuple[np.ndarray, str]]) -> int:
    """Write a `.tm2` file atomically; returns its size in bytes."""
    path = Path(path)
    data = encode_artifact(header, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Read and verify a `.tm2` file; any defect is a one-line ModelFileError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: not found (run the export stage first)") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(data) < _PREFIX.size or data[:4] != MAGIC:
        raise ModelFileError(f"{path}: not a tinym2net artifact (bad magic bytes)")
    _, version, _, head_len, payload_len = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise ModelFileError(f"{path}: artifact format version {version}, this runtime reads {VERSION}")
    expected = _PREFIX.size + head_len + payload_len + _CRC.size
    if len(data) < expected:
        raise ModelFileError(f"{path}: truncated ({len(data)} of {expected} bytes); re-run export")
    if len(data) > expected:
        raise ModelFileError(f"{path}: corrupt ({len(data) - expected} unexpected bytes after the end)")
    (crc,) = _CRC.unpack_from(data, expected - _CRC.size)
    if zlib.crc32(memoryview(data)[:expected - _CRC.size]) != crc:
        raise ModelFileError(f"{path}: corrupt (checksum mismatch); re-run export")
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size:_PREFIX.size + head_len]))
        tensors = _decode_tensors(header["tensors"], memoryview(data)[_PREFIX.size + head_len:expected - _CRC.size])
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise ModelFileError(f"{path}: corrupt header ({type(exc).__name__}: {exc})") from None
    return Artifact(header, tensors, path, len(data))


def _decode_tensors(table: dict, payload: memoryview) -> dict[str, np.ndarray]:
    out = {}
    for name, t in table.items():
        shape, dtype = tuple(t["shape"]), t["dtype"]
        count = int(np.prod(shape, dtype=np.int64))
        if t["offset"] < 0 or t["offset"] + t["nbytes"] > len(payload):
            raise ValueError(f"tensor {name} lies outside the payload")
        blob = payload[t["offset"]:t["offset"] + t["nbytes"]]
        if dtype == "float32":
            if t["nbytes"] != 4 * count:
                raise ValueError(f"tensor {name} has {t['nbytes']} bytes for {count} floats")
            out[name] = np.frombuffer(blob, "<f4").astype(np.float32).reshape(shape)
        elif dtype.startswith("int"):
            bits = int(dtype[3:])
            if t["nbytes"] != packed_nbytes(count, bits):
                raise ValueError(f"tensor {name} has {t['nbytes']} bytes for {count} {bits}-bit values")
            out[name] = unpack_bits(blob, bits, count).reshape(shape)
        else:
            raise ValueError(f"tensor {name} has unknown dtype {dtype!r}")
    return out


# ---------------------------------------------------------------------------------------------
# the ONNX graph

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


def _act(node: dict) -> dict | None:
    """The input-activation quantization of a conv/linear node as ONNX sees it.

    Up to 8 bits every activation is uint8, the kernels' fast type: unsigned ones with zero point 0,
    signed (symmetric) ones shifted by 128 (zero point 128), so [-127, 127] is stored as [1, 255].
    `qmin`/`qmax` are the stored integers' exact range (e.g. [0, 15] at 4 bits unsigned).
    """
    act = node.get("act")
    if not act:
        return None
    bits, signed = act["bits"], act["signed"]
    if bits <= 8:
        dtype, offset = np.uint8, 128 if signed else 0
    else:
        dtype, offset = (np.int16, 0) if signed else (np.uint16, 0)
    lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    info = np.iinfo(dtype)
    qmin, qmax = lo + offset, hi + offset
    return {"scale": np.float32(act["scale"]), "zero_point": dtype(act["zero_point"] + offset), "qmin": qmin,
            "qmax": qmax, "narrow": (qmin, qmax) != (info.min, info.max), "dtype": dtype}


_PASS = ("relu", "maxpool", "flatten", "concat")  # monotone ops a quantizer commutes with


def _quant_points(nodes: list[dict]) -> tuple[dict[str, dict], set[str]]:
    """Tensor -> the activation quantizer to apply right after it is produced, and the tensors that
    feed a quantized layer directly (where the quantized values are clamped to their exact range).

    A quantized layer's input quantizer is moved back through the relu/maxpool/flatten/concat ops
    that produce its input (they commute with a monotone quantizer), so that every conv and linear
    layer is directly followed by a QuantizeLinear and ONNX Runtime can fuse it into an integer kernel.
    """
    producer = {n["output"]: n for n in nodes}
    points: dict[str, dict] = {}
    ends: set[str] = set()
    for node in nodes:
        q = _act(node) if node["op"] in ("conv", "linear") else None
        if q is None:
            continue
        ends.add(node["inputs"][0])
        stack = [node["inputs"][0]]
        while stack:
            tensor = stack.pop()
            points[tensor] = q
            prev = producer.get(tensor)
            if prev is None or prev["op"] not in _PASS:
                continue
            if prev["op"] == "relu" and (producer.get(prev["inputs"][0]) or {}).get("op") in ("conv", "linear"):
                continue  # conv -> relu -> Q: ONNX Runtime folds the relu into the quantized conv
            stack.extend(prev["inputs"])
    return points, ends


def build_onnx(artifact: Artifact, nhwc_flatten: bool = True):
    """The artifact's network as an ONNX model (QDQ for quantized layers, float otherwise).

    With `nhwc_flatten`, a flatten that feeds a linear layer reads its input channels-last (the
    layer's weight columns permuted to match), so ONNX Runtime keeps the convolutions channels-last
    up to the dense layer instead of transposing back; the result is the same.
    """
    from onnx import TensorProto, helper

    h, t = artifact.header, artifact.tensors
    b = _Builder()
    points, ends = _quant_points(h["nodes"])
    values: dict[str, str] = {}  # header tensor name -> ONNX value name
    permuted: dict[str, list[int]] = {}  # flatten output -> its (C, H, W) input shape, read channels-last
    if nhwc_flatten:
        consumers = {}
        for n in h["nodes"]:
            for i in n["inputs"]:
                consumers.setdefault(i, []).append(n)
        permuted = {n["output"]: n["shape"] for n in h["nodes"] if n["op"] == "flatten" and len(n.get("shape", [])) == 3
                    and all(c["op"] == "linear" for c in consumers.get(n["output"], []))}

    def emit(tensor: str, onnx_name: str) -> None:
        """Register a produced tensor, quantizing/dequantizing it when a quantizer sits here."""
        q = points.get(tensor)
        if q is not None:
            scale, zp = b.const("act_scale", q["scale"]), b.const("act_zp", np.asarray(q["zero_point"]))
            onnx_name = b.op("QuantizeLinear", [onnx_name, scale, zp], "q")
            if q["narrow"] and tensor in ends:  # clamp the integers to the exact b-bit range
                onnx_name = b.op("Clip", [onnx_name, b.const("qmin", np.asarray(q["qmin"], q["dtype"])),
                                          b.const("qmax", np.asarray(q["qmax"], q["dtype"]))], "clip")
            onnx_name = b.op("DequantizeLinear", [onnx_name, scale, zp], "dq")
        values[tensor] = onnx_name

    inputs = []
    for m, shape in h["inputs"].items():
        inputs.append(helper.make_tensor_value_info(m, TensorProto.FLOAT, ["batch", *shape]))
        emit(m, m)
    for node in h["nodes"]:
        op, ins = node["op"], [values[i] for i in node["inputs"]]
        if op in ("conv", "linear"):
            out = _layer(b, node, ins[0], t, points.get(node["inputs"][0]), permuted.get(node["inputs"][0]))
        elif op == "relu":
            out = b.op("Relu", ins, "relu")
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
    graph = helper.make_graph(b.nodes, f"tinym2net-{h.get('case', '')}-{h.get('variant', '')}", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(h["classes"])])],
                              b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                             producer_name="tinym2net")


def _layer(b: _Builder, node: dict, x: str, t: dict[str, np.ndarray], q: dict | None,
           nhwc: list[int] | None = None) -> str:
    """One conv or linear layer: QDQ weights (int8 initializers) and int32 bias when quantized.
    `nhwc`: the (C, H, W) of a linear layer's flattened input, which arrives channels-last."""
    weight, bias = t[node["weight"]], t[node["bias"]] if node.get("bias") else None
    if nhwc is not None:
        c, hh, ww = nhwc
        weight = weight.reshape(-1, c, hh, ww).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)
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
        return b.op("Conv", ins, "conv", kernel_shape=node["kernel"], strides=node["stride"], pads=node["pads"],
                    dilations=node["dilation"], group=node["group"])
    return b.op("Gemm", ins, "fc", transB=1)


# ---------------------------------------------------------------------------------------------
# the model

class Model:
    """An artifact opened in ONNX Runtime: `logits(inputs)` / `predict(inputs)` on NCHW float32 arrays."""

    def __init__(self, artifact: Artifact, session, load_seconds: float):
        self.artifact = artifact
        self.session = session
        self.load_seconds = load_seconds
        self.header = artifact.header
        self.modalities: list[str] = list(artifact.header["inputs"])
        self.classes: list[str] = artifact.header["classes"]
        self.input_shapes = {m: tuple(s) for m, s in artifact.header["inputs"].items()}

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, n_classes) logits for a batch given as modality -> (B, C, H, W)."""
        feed = {}
        for m in self.modalities:
            if m not in inputs:
                raise KeyError(f"missing input {m!r} (the model takes {', '.join(self.modalities)})")
            feed[m] = np.ascontiguousarray(inputs[m], dtype=np.float32)
        return self.session.run(["logits"], feed)[0]

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Class indices (B,)."""
        return self.logits(inputs).argmax(1)


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


def load(path: str | os.PathLike, threads: int | None = 1, optimization: str = "all") -> Model:
    """Open a `.tm2` artifact as an ONNX Runtime model (CPU)."""
    import onnxruntime as ort

    start = time.perf_counter()
    artifact = read_artifact(path)
    try:
        proto = build_onnx(artifact)
        session = ort.InferenceSession(proto.SerializeToString(), session_options(threads, optimization),
                                       providers=["CPUExecutionProvider"])
    except ModelFileError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupt graph description ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # onnxruntime raises its own types for an invalid graph
        raise ModelFileError(f"{path}: ONNX Runtime rejects the graph ({str(exc).splitlines()[0][:200]})") from None
    seconds = time.perf_counter() - start
    log.info("loaded %s (%s, %d bytes) in %.3f s", path, artifact.header.get("variant"), artifact.size_bytes, seconds)
    return Model(artifact, session, seconds)
