"""b-bit integers: their range, and their bit-packed storage (little-endian bit order, low bits first)."""
from __future__ import annotations

import numpy as np

FLOAT_BITS = 32  # in a bit allocation: leave this layer float (FP32)
FLOAT_BYTES = 4  # float32 weights, scales, biases and activations


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The integers a b-bit quantizer produces: symmetric [-(2^(b-1)-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    if signed:
        qmax = (1 << (bits - 1)) - 1
        return -qmax, qmax
    return 0, (1 << bits) - 1


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Signed integers (any shape) -> a little-endian bitstream of `bits` per value (4-bit: low nibble first)."""
    v = np.asarray(values).astype(np.int64).ravel()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values outside the {bits}-bit range [{lo}, {hi}]")
    if bits == 8:
        return v.astype(np.int8).tobytes()
    u = (v & ((1 << bits) - 1)).astype(np.uint32)
    stream = ((u[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)  # (n, bits)
    return np.packbits(stream.ravel(), bitorder="little").tobytes()


def unpack_bits(data, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` signed integers (int8 up to 8 bits, else int16).

    8 and 4 bits (the usual widths) decode without intermediate arrays larger than the output;
    other widths decode in chunks, so memory stays a small multiple of the output.
    """
    raw = np.frombuffer(data, np.uint8)
    if bits == 8:
        return raw[:count].view(np.int8).copy()
    if bits == 4:
        out = np.empty(2 * len(raw), np.int8)
        out[0::2], out[1::2] = raw & 0x0F, raw >> 4                      # low nibble first
        out = out[:count]
        out[out >= 8] -= 16
        return out
    out = np.empty(count, np.int8 if bits <= 8 else np.int16)
    weights = 1 << np.arange(bits, dtype=np.int32)
    chunk = 1 << 16  # values per chunk: a multiple of 8, so every chunk starts on a byte boundary
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        stream = np.unpackbits(raw[start * bits // 8:], count=n * bits, bitorder="little")
        u = stream.reshape(n, bits).astype(np.int32) @ weights                           # (n,)
        out[start:start + n] = np.where(u >= 1 << (bits - 1), u - (1 << bits), u)
    return out


def activation_bytes(elems: int, bits: int, storage: str = "packed") -> int:
    """Bytes of an activation buffer of `elems` values at `bits` (FLOAT_BITS: float32): `packed` b-bit values,
    or `int8`: every width up to 8 in one byte each (as LiteRT's int8 kernels store them)."""
    if bits == FLOAT_BITS:
        return FLOAT_BYTES * elems
    return elems if storage == "int8" and bits <= 8 else packed_nbytes(elems, bits)


def weight_bytes(params: int, out_channels: int, bias: int, bits: int) -> int:
    """Bytes a conv/linear layer takes in a `.tm2` payload at `bits`: packed weights + float32 per-channel
    scales + float32 biases; a float layer (FLOAT_BITS): float32 weights and biases."""
    if bits == FLOAT_BITS:
        return FLOAT_BYTES * (params + bias)
    return packed_nbytes(params, bits) + FLOAT_BYTES * (out_channels + bias)
