"""The `.tm2` file: tinym2net's storage and transport format for an exported model.

Layout (little-endian):

    b"TM2\\0" | version u16 | reserved u16 | header_len u32 | payload_len u64
    | header: zlib-compressed JSON | payload: the tensors, back to back | crc32 u32 of all before it

The header describes the network as a list of nodes (`conv`, `linear`, `relu`, `maxpool`,
`flatten`, `concat`; for the PhiNet/XiNet backbones also `add`, `mul`, `sigmoid`, `hardswish`,
`relu6`, `avgpool`), the inputs (modality -> C, H, W) and every tensor of the payload (dtype,
shape, offset, size). Quantized weights are signed integers bit-packed at their layer's width
(`intB`, `bitpack.py`), with a float32 scale per output channel and zero points 0; biases and
float (32-bit) layers are float32; a layer's input-activation scale, zero point and signedness are
numbers in its node. So the file size is the sum over layers of params x bits / 8 plus scales and
biases, and a small header.

Reading is bounded (`Limits`): the file, the compressed header, the decompressed header and the
JSON nesting depth are checked before the memory is spent, so a hostile file (a zlib bomb, a deeply
nested header) is a one-line ModelFileError, not an exhausted device.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .errors import ModelFileError, ParamsError

MAGIC = b"TM2\0"
VERSION = 1
SUFFIX = ".tm2"
_PREFIX = struct.Struct("<4sHHIQ")  # magic, version, reserved, header_len, payload_len
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Limits:
    """Bounds on what reading a `.tm2` may allocate (params.yaml `export.tm2_limits` has the same defaults).

    The largest artifact of this project is 1.7 MB with a 2 KB header (1.5 KB compressed) of depth 5.
    """
    max_file_bytes: int = 256 * 2 ** 20
    max_header_bytes: int = 1 * 2 ** 20          # compressed
    max_header_json_bytes: int = 4 * 2 ** 20     # decompressed
    max_header_depth: int = 32                   # JSON nesting of objects and arrays

    @classmethod
    def from_dict(cls, values: dict | None, key: str = "export.tm2_limits") -> "Limits":
        """Limits from a mapping such as params.yaml's `key`; unknown keys and non-positive values are refused."""
        if values is not None and not isinstance(values, dict):
            raise ParamsError(f"params.yaml: {key} must be a mapping (got {values!r})")
        values = dict(values or {})
        unknown = [k for k in values if k not in cls.__dataclass_fields__]
        if unknown:
            raise ParamsError(f"params.yaml: {key}.{unknown[0]}: unknown limit "
                              f"(choose from {', '.join(cls.__dataclass_fields__)})")
        bad = [k for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise ParamsError(f"params.yaml: {key}.{bad[0]} must be a positive integer (got {values[bad[0]]!r})")
        return cls(**values)


DEFAULT_LIMITS = Limits()


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


def encode(header: dict, tensors: dict[str, tuple[np.ndarray, str]]) -> bytes:
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


def write(path: str | os.PathLike, header: dict, tensors: dict[str, tuple[np.ndarray, str]]) -> int:
    """Write a `.tm2` file atomically; returns its size in bytes."""
    path = Path(path)
    data = encode(header, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (the unrolled form: linear, fast)


def json_depth(text: bytes, chunk: int = 2 ** 20) -> int:
    """The nesting depth of objects and arrays in a JSON text, without parsing it (no recursion, O(chunk) memory)."""
    marks = np.frombuffer(_STRING.sub(b'""', text), np.uint8)
    depth = deepest = 0
    for start in range(0, len(marks), chunk):
        part = marks[start:start + chunk]
        step = ((part == ord("[")) | (part == ord("{"))).view(np.int8) - ((part == ord("]")) | (part == ord("}"))).view(np.int8)
        levels = np.cumsum(step, dtype=np.int64) + depth                                      # (chunk,)
        if len(levels):
            deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _header(path: Path, blob: memoryview, limits: Limits) -> dict:
    """The decompressed, parsed header, each step bounded by `limits`."""
    if len(blob) > limits.max_header_bytes:
        raise ModelFileError(f"{path}: header of {len(blob)} bytes exceeds the limit of {limits.max_header_bytes} "
                             f"(max_header_bytes)")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(blob, limits.max_header_json_bytes + 1)
    except zlib.error as exc:
        raise ModelFileError(f"{path}: corrupt header (zlib: {exc})") from None
    if len(text) > limits.max_header_json_bytes or inflater.unconsumed_tail:
        raise ModelFileError(f"{path}: header decompresses to more than {limits.max_header_json_bytes} bytes "
                             f"(max_header_json_bytes)")
    depth = json_depth(text)
    if depth > limits.max_header_depth:
        raise ModelFileError(f"{path}: header nests {depth} levels deep, over the limit of {limits.max_header_depth} "
                             f"(max_header_depth)")
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise ModelFileError(f"{path}: corrupt header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
        raise ModelFileError(f"{path}: corrupt header (no tensor table)")
    return header


def read(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """Read and verify a `.tm2` file; any defect is a one-line ModelFileError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ModelFileError(f"{path}: {size} bytes exceeds the limit of {limits.max_file_bytes} (max_file_bytes)")
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
    view = memoryview(data)
    if zlib.crc32(view[:expected - _CRC.size]) != crc:
        raise ModelFileError(f"{path}: corrupt (checksum mismatch); re-run export")
    header = _header(path, view[_PREFIX.size:_PREFIX.size + head_len], limits)
    try:
        tensors = _decode_tensors(header["tensors"], view[_PREFIX.size + head_len:expected - _CRC.size])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: corrupt header ({type(exc).__name__}: {exc})") from None
    return Artifact(header, tensors, path, len(data))


def _decode_tensors(table: dict, payload: memoryview) -> dict[str, np.ndarray]:
    out = {}
    for name, t in table.items():
        shape, dtype = tuple(int(d) for d in t["shape"]), t["dtype"]
        if any(d < 0 for d in shape):
            raise ValueError(f"tensor {name} has a negative dimension")
        count = int(np.prod(shape, dtype=np.int64))
        if t["offset"] < 0 or t["nbytes"] < 0 or t["offset"] + t["nbytes"] > len(payload):
            raise ValueError(f"tensor {name} lies outside the payload")
        blob = payload[t["offset"]:t["offset"] + t["nbytes"]]
        if dtype == "float32":
            if t["nbytes"] != 4 * count:
                raise ValueError(f"tensor {name} has {t['nbytes']} bytes for {count} floats")
            out[name] = np.frombuffer(blob, "<f4").astype(np.float32).reshape(shape)
        elif isinstance(dtype, str) and dtype.startswith("int") and dtype[3:].isdigit() and 2 <= int(dtype[3:]) <= 16:
            bits = int(dtype[3:])
            if t["nbytes"] != packed_nbytes(count, bits):
                raise ValueError(f"tensor {name} has {t['nbytes']} bytes for {count} {bits}-bit values")
            out[name] = unpack_bits(blob, bits, count).reshape(shape)
        else:
            raise ValueError(f"tensor {name} has unknown dtype {dtype!r}")
    return out
