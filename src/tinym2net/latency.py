"""Per-layer latency at each bit width on this machine: the latency table the bit-allocation ILP can budget.

Each conv/linear layer of an artifact is built alone as a one-layer network at each width (the
layer's own weights, quantized per channel; 32 = float) and timed in the runtime backend, all graphs
in interleaved rounds so that load on a shared machine hits every entry alike; the figures are
medians of `invoke` times in microseconds. Widths up to 8 bits run the same int8 kernels (a 4-bit
layer is int8 holding 4-bit values), so they are measured once, at 8, and share that figure: timing
noise never decides between them. An int8 layer reads and writes int8; a float layer reads
float and, like inside a quantized network, writes int8 (its QUANTIZE counted). The table's
`constant` is the whole network at the reference width (8) minus the sum of its layers there: the
pooling, reshapes, concatenation and the host-side input preparation the per-layer graphs leave out.
So `constant + sum_i table[i][b_i]` estimates an allocation's batch-1 latency; `check` compares that
estimate with whole networks measured in the same run. `producers` (layer -> the layers it reads) lets the
ILP keep float layers in front of int8 ones (`ilp.float_order_budgets`): an int8 layer read by a float
layer has no output quantizer, so it would run in float.

Runs on the device too (numpy and the runtime only):
    python -m tinym2net.latency models/<case>/artifacts/fp32.tm2 --bits 4 8 32 --out latency.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from . import graph, runtime, tm2
from .bench import interleaved
from .bitpack import FLOAT_BITS, int_range
from .errors import TinyM2NetError

log = logging.getLogger(__name__)

REFERENCE_BITS = 8
_ACT_SCALE = 0.05  # any scale: kernels' speed does not depend on it


def _kernel(bits: int) -> int:
    """The width whose kernels run a layer of `bits`: int8 up to 8 bits."""
    return REFERENCE_BITS if bits <= REFERENCE_BITS else bits


def _quantized(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric integers and scales of a float weight (as quant.py computes them)."""
    _, qmax = int_range(bits)
    amax = np.abs(weight.reshape(len(weight), -1)).max(1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)                       # (C_out,)
    q = np.clip(np.rint(weight / scale.reshape((-1,) + (1,) * (weight.ndim - 1))), -qmax, qmax)
    return q.astype(np.int8), scale


def _signed_inputs(header: dict) -> set[str]:
    """Layers whose input activation is signed in a quantized network: a network input or a layer output
    not followed by a ReLU (the pointwise convolution after a depthwise one)."""
    producer = {n["output"]: n for n in header["nodes"]}
    signed = set()
    for n in header["nodes"]:
        if n["op"] not in graph.LAYERS:
            continue
        src = n["inputs"][0]
        while src in producer and producer[src]["op"] in ("maxpool", "flatten", "concat"):
            src = producer[src]["inputs"][0]
        if src not in producer or producer[src]["op"] in graph.LAYERS:
            signed.add(n["name"])
    return signed


def layer_artifacts(artifact: tm2.Artifact, bits: int) -> dict[str, tm2.Artifact]:
    """Every conv/linear layer of `artifact` alone at `bits` (FLOAT_BITS: float), as one-layer artifacts."""
    h, t = artifact.header, artifact.tensors
    shapes = graph.shapes(h, t)
    signed = _signed_inputs(h)
    out = {}
    for node in h["nodes"]:
        if node["op"] not in graph.LAYERS:
            continue
        name = node["name"]
        weight = t[node["weight"]].astype(np.float32)
        if node.get("bits"):
            weight = weight * t[node["weight_scale"]].reshape((-1,) + (1,) * (weight.ndim - 1))
        tensors = {"bias": t[node["bias"]]} if node.get("bias") else {}
        layer = {k: v for k, v in node.items() if k not in ("bits", "act", "weight_scale")}
        layer.update(inputs=["x"], output="y", weight="weight", bias="bias" if tensors else None)
        act = {"bits": bits, "scale": _ACT_SCALE, "zero_point": 0, "signed": name in signed}
        if bits == FLOAT_BITS:
            tensors["weight"] = weight
            layer.update(bits=None, act=None)
        else:
            tensors["weight"], tensors["weight_scale"] = _quantized(weight, bits)
            layer.update(bits=bits, act=act, weight_scale="weight_scale")
        header = {"inputs": {"x": shapes[node["inputs"][0]]}, "nodes": [layer], "output": "y", "classes": [],
                  "raw_inputs": True, "output_act": {**act, "bits": REFERENCE_BITS, "signed": False},
                  "case": h.get("case"), "variant": f"{name}@{bits}"}
        out[name] = tm2.Artifact(header, tensors)
    return out


def _whole(artifact: tm2.Artifact, bits: int) -> tm2.Artifact:
    """`artifact` (a float one) with every layer at `bits`, for the constant and the check."""
    h, t = artifact.header, dict(artifact.tensors)
    signed = _signed_inputs(h)
    nodes = []
    for node in h["nodes"]:
        node = dict(node)
        if node["op"] in graph.LAYERS and bits != FLOAT_BITS:
            t[node["weight"]], t[f"{node['name']}.latency_scale"] = _quantized(t[node["weight"]], bits)
            node.update(bits=bits, weight_scale=f"{node['name']}.latency_scale",
                        act={"bits": bits, "scale": _ACT_SCALE, "zero_point": 0, "signed": node["name"] in signed})
        nodes.append(node)
    return tm2.Artifact({**h, "nodes": nodes}, t)


class _Timed:
    """One graph in a backend session with fixed random inputs, as a function to time."""

    def __init__(self, artifact: tm2.Artifact, backend: str, threads: int, whole: bool):
        """`whole`: a network, called through `run` with float NCHW inputs; else one layer, called by `invoke`."""
        module = runtime.backend_module(backend)
        self.session = module.Session(artifact, threads)
        rng = np.random.default_rng(0)
        interpreter = getattr(self.session, "interpreter", None)
        if interpreter is not None and not whole:  # one layer: its stored inputs, then `invoke` alone
            for d in interpreter.get_input_details():
                interpreter.set_tensor(d["index"], rng.integers(-100, 100, d["shape"]).astype(d["dtype"]))
            self.call = interpreter.invoke
        else:
            feed = {m: rng.standard_normal((1, *s)).astype(np.float32) for m, s in artifact.header["inputs"].items()}
            self.call = lambda: self.session.run(feed)


def measure(artifact: tm2.Artifact, bit_choices, *, backend: str = runtime.DEFAULT_BACKEND, threads: int = 1,
            rounds: int = 30, calls: int = 20, check: dict[str, dict[str, int]] | None = None) -> dict:
    """The latency table of `artifact`'s layers at `bit_choices` (microseconds), and its constant.

    `check`: allocations (name -> {layer: bits}) measured whole as well, to compare with the table's estimate."""
    choices = [int(b) for b in bit_choices]
    kernels = sorted({_kernel(b) for b in choices} | {REFERENCE_BITS})
    graphs: dict[tuple, _Timed] = {}
    for b in kernels:
        for name, art in layer_artifacts(artifact, b).items():
            graphs[(name, b)] = _Timed(art, backend, threads, whole=False)
    graphs[("whole", REFERENCE_BITS)] = _Timed(_whole(artifact, REFERENCE_BITS), backend, threads, whole=True)
    for label, bits in (check or {}).items():
        graphs[("check", label)] = _Timed(_allocation(artifact, bits), backend, threads, whole=True)
    samples = interleaved({k: g.call for k, g in graphs.items()}, rounds, calls)
    us = {k: float(np.median(v)) * 1e6 for k, v in samples.items()}
    spread = {k: float(np.percentile(v, 75) - np.percentile(v, 25)) * 1e6 for k, v in samples.items()}
    names = [n["name"] for n in artifact.header["nodes"] if n["op"] in graph.LAYERS]
    table = {n: {str(b): round(us[(n, _kernel(b))], 3) for b in choices} for n in names}
    whole = us[("whole", REFERENCE_BITS)]
    constant = whole - sum(us[(n, REFERENCE_BITS)] for n in names)
    result = {"unit": "us", "backend": backend, "backend_version": runtime.backend_version(backend),
              "threads": threads, "rounds": rounds, "calls": calls, "reference_bits": REFERENCE_BITS,
              "constant": round(constant, 3), "whole_reference": round(whole, 3),
              "producers": graph.producers(artifact.header["nodes"]), "layers": table, "spread_iqr": {n: {str(b): round(spread[(n, _kernel(b))], 3) for b in choices} for n in names}}
    if check:
        result["check"] = {label: {"measured": round(us[("check", label)], 3),
                                   "estimated": round(constant + sum(table[n][str(b)] for n, b in bits.items()), 3)}
                           for label, bits in check.items()}
    return result


def _allocation(artifact: tm2.Artifact, bits: dict[str, int]) -> tm2.Artifact:
    """`artifact` (float) with each layer at its width in `bits`."""
    by_width = {b: _whole(artifact, b) for b in set(bits.values())}
    nodes = [by_width[bits[n["name"]]].header["nodes"][i] if n["op"] in graph.LAYERS else n
             for i, n in enumerate(artifact.header["nodes"])]
    tensors = {}
    for art in by_width.values():
        tensors.update(art.tensors)
    for n in nodes:  # a float layer's weight is the float one
        if n["op"] in graph.LAYERS and not n.get("bits"):
            tensors[n["weight"]] = artifact.tensors[n["weight"]]
    return tm2.Artifact({**artifact.header, "nodes": nodes}, tensors)


def main(argv=None) -> int:
    """`python -m tinym2net.latency ARTIFACT --bits 4 8 32 --out TABLE`: the latency table as JSON."""
    parser = argparse.ArgumentParser(prog="python -m tinym2net.latency", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="a float (fp32) .tm2 artifact of the network")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8, FLOAT_BITS])
    parser.add_argument("--backend", default=runtime.DEFAULT_BACKEND, choices=runtime.BACKENDS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--check", type=Path, help="JSON of allocations {label: {layer: bits}} to measure whole")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        check = json.loads(args.check.read_text()) if args.check else None
        table = measure(tm2.read(args.artifact), args.bits, backend=args.backend, threads=args.threads,
                        rounds=args.rounds, calls=args.calls, check=check)
    except TinyM2NetError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    from .io import write_json
    write_json(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
