"""What a network costs on a device, at any per-layer bit widths: Flash, peak RAM, MACs and BOPS.

Read from the export graph (`export.to_artifact`: the node list the `.tm2` stores and the runtimes run),
so any branch `model.build` makes is covered without naming its layers:

- **Flash**: the `.tm2` file. Its payload is exact (a quantized layer: its weights bit-packed at b bits,
  one float32 scale per output channel, float32 biases; a float layer: float32 weights and biases); its
  header is measured: the zlib-compressed JSON of this graph at these widths with representative
  quantizer numbers (the real file's floats differ in their digits only: a few bytes).
- **Peak RAM**: the nodes run one at a time in the graph's order (every branch, then the head). A buffer
  lives from the node that writes it (the inputs: from the start) to the last node that reads it; the
  RAM of a step is the sum of the buffers live at it, and the peak is the largest step. A buffer holds a
  tensor at the width of the layer that reads it (its input quantizer, moved back through
  relu/maxpool/flatten/concat as `graph.quant_points` does: the layer that writes it stores integers
  directly), `FLOAT_BITS` (4 bytes) when no quantized layer reads it. `flatten` and a relu whose input
  has no other reader work in place (one buffer). `storage="packed"` counts b-bit values packed
  (ceil(n b / 8) bytes: the issue's definition); `storage="int8"` stores every width up to 8 in one
  byte, as LiteRT's int8 kernels do. This executor needs no scratch; `litert_plan` measures what LiteRT
  itself plans (see its docstring for the difference).
- **MACs** per layer (output elements x weights per output element) and **BOPS** = sum MACs x b^2
  (weights and input activations share the layer's width).

Each step's RAM is linear in the layers' widths (a constant for float buffers, plus per layer a cost per
width), which is how the bit-allocation ILP and the `scale` MILP constrain peak RAM: one row per step.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import graph
from .bitpack import FLOAT_BITS, FLOAT_BYTES, activation_bytes, packed_nbytes, weight_bytes

TM2_FRAMING_BYTES = 4 + 2 + 2 + 4 + 8 + 4  # magic, version, reserved, header_len, payload_len ... crc32
IN_PLACE = ("relu", "relu6", "flatten")      # a node that may overwrite its only reader's input
STORAGES = ("packed", "int8")
HEADER_SLACK = 128  # bytes: the measured header against the real one (its quantizer floats differ in digits)


def _act(k: int, bits: int) -> dict:
    """A representative input quantizer for the measured header: a float32 scale as export writes it
    (float(float32): 17-20 characters, distinct per layer, so it compresses like the real ones)."""
    scale = float(np.float32(np.random.default_rng(k).uniform(0.001, 0.1)))
    return {"bits": bits, "scale": scale, "zero_point": 0, "signed": False}


@dataclass
class Layer:
    name: str
    params: int
    out_channels: int
    bias: int
    macs: int


@dataclass
class Buffer:
    """Activation memory: one or more tensors sharing storage (in-place ops), live over [start, end] steps."""
    tensors: list[str]
    elems: int
    reader: str | None       # the layer whose width it is stored at; None: float32
    start: int
    end: int


@dataclass
class Costs:
    """The cost model of one network (its export graph); every figure is a function of the widths."""
    layers: list[Layer]
    buffers: list[Buffer]
    steps: list[str]                      # node outputs in execution order
    header: dict = field(repr=False)      # the export header (float weights), for the measured header size
    shapes: dict = field(default_factory=dict, repr=False)   # tensor -> per-sample shape
    own: set = field(default_factory=set, repr=False)        # layers that quantize a float input themselves

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    def _bits(self, bits: dict[str, int] | int | None) -> dict[str, int]:
        if bits is None:
            return dict.fromkeys(self.names, FLOAT_BITS)
        if isinstance(bits, int):
            return dict.fromkeys(self.names, bits)
        return {n: bits.get(n, FLOAT_BITS) for n in self.names}

    def payload_bytes(self, bits=None) -> int:
        b = self._bits(bits)
        return sum(weight_bytes(l.params, l.out_channels, l.bias, b[l.name]) for l in self.layers)

    def header_bytes(self, bits=None) -> int:
        """The measured header: framing + the compressed JSON of this graph at these widths (as `export`
        and `tm2.encode` write it, with representative quantizer numbers)."""
        b = self._bits(bits)
        nodes = []
        for k, node in enumerate(self.header["nodes"]):
            if node["op"] in graph.LAYERS and b[node["name"]] != FLOAT_BITS:
                width, q = b[node["name"]], {}
                for key, value in node.items():
                    q[key] = width if key == "bits" else (_act(k, width) if key == "act" else value)
                    if key == "act":
                        q["weight_scale"] = f"{node['name']}.weight_scale"
                node = q
            nodes.append(node)
        table, offset = {}, 0
        for name, entry in self.header["tensors"].items():  # export's order: weight, weight_scale, bias
            entries = [(name, entry)]
            layer = name[:-len(".weight")] if name.endswith(".weight") else None
            if layer in b and b[layer] != FLOAT_BITS:
                entries = [(name, {**entry, "dtype": f"int{b[layer]}"}),
                           (f"{layer}.weight_scale", {"dtype": "float32", "shape": entry["shape"][:1]})]
            for key, e in entries:
                count = int(np.prod(e["shape"], dtype=np.int64))
                nbytes = 4 * count if e["dtype"] == "float32" else packed_nbytes(count, int(e["dtype"][3:]))
                table[key] = {"dtype": e["dtype"], "shape": e["shape"], "offset": offset, "nbytes": nbytes}
                offset += nbytes
        quantized = any(v != FLOAT_BITS for v in b.values())
        head = {**self.header, "bits": b if quantized else None, "nodes": nodes, "tensors": table}
        text = json.dumps(head, separators=(",", ":")).encode()
        return TM2_FRAMING_BYTES + len(zlib.compress(text, 9))

    def flash_bytes(self, bits=None) -> int:
        """The `.tm2` file size: exact payload + measured header."""
        return self.payload_bytes(bits) + self.header_bytes(bits)

    def buffer_bytes(self, buf: Buffer, bits: dict[str, int], storage: str = "packed") -> int:
        return activation_bytes(buf.elems, bits[buf.reader] if buf.reader else FLOAT_BITS, storage)

    def step_ram(self, bits=None, storage: str = "packed") -> list[int]:
        """RAM (bytes) of each step: the buffers live while that node runs."""
        b = self._bits(bits)
        ram = [0] * len(self.steps)
        for buf in self.buffers:
            size = self.buffer_bytes(buf, b, storage)
            for k in range(buf.start, buf.end + 1):
                ram[k] += size
        return ram

    def peak_ram_bytes(self, bits=None, storage: str = "packed") -> int:
        return max(self.step_ram(bits, storage))

    def peak_step(self, bits=None, storage: str = "packed") -> str:
        ram = self.step_ram(bits, storage)
        return self.steps[int(np.argmax(ram))]

    def runtime_scratch(self, bits=None) -> int:
        """LiteRT's largest buffer set beyond the int8 figure (the documented scratch), the largest of:
        a float layer read by an int8 layer writes its float32 result before QUANTIZE (3 more bytes per value);
        a quantized layer whose input is stored float (a tensor several layers read with different quantizers,
        e.g. a residual block's input) makes a clamped float32 copy and an int8 copy of it (5 bytes per value);
        a convolution whose padding is neither VALID nor SAME (PhiNet's stride-2 blocks) reads a PAD copy of its
        input."""
        b = self._bits(bits)
        elems = {t: int(np.prod(v)) for t, v in self.shapes.items()}
        stored = {t: buf for buf in self.buffers for t in buf.tensors}
        writers = {n["output"]: n["name"] for n in self.header["nodes"] if n["op"] in graph.LAYERS}
        extra = [3 * buf.elems for buf in self.buffers if buf.reader and b[buf.reader] != FLOAT_BITS
                 and any(b.get(writers.get(t), 0) == FLOAT_BITS for t in buf.tensors)]
        for node in self.header["nodes"]:
            if node["op"] not in graph.LAYERS:
                continue
            x, width = node["inputs"][0], b[node["name"]]
            if width != FLOAT_BITS and node["name"] in self.own:
                extra.append(5 * elems[x])
            if node["op"] == "conv" and any(node["pads"]):
                (_, h, w), (kh, kw), (sh, sw) = self.shapes[x], node["kernel"], node["stride"]
                if node["pads"] != _same_pads([h, w], [kh, kw], [sh, sw], node["dilation"]):
                    top, left, bottom, right = node["pads"]
                    buf = stored.get(x)
                    int8 = buf is not None and buf.reader and b[buf.reader] != FLOAT_BITS
                    extra.append((1 if int8 else 4) * self.shapes[x][0] * (h + top + bottom) * (w + left + right))
        return max(extra, default=0)

    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    def bops(self, bits=None) -> int:
        b = self._bits(bits)
        return sum(l.macs * b[l.name] ** 2 for l in self.layers)

    def memory_schedule(self, storage: str = "packed") -> dict:
        """Each step's live buffers as the ILP reads them: float bytes (constant) and, per reading layer,
        the element counts of its buffers."""
        steps = []
        for k, node in enumerate(self.steps):
            constant, per_layer = 0, {}
            for buf in self.buffers:
                if buf.start <= k <= buf.end:
                    if buf.reader is None:
                        constant += FLOAT_BYTES * buf.elems
                    else:
                        per_layer.setdefault(buf.reader, []).append(buf.elems)
            steps.append({"node": node, "constant": constant, "buffers": per_layer})
        return {"storage": storage, "steps": steps}

    def layer_table(self) -> list[dict]:
        """Per layer what Flash, BOPS and the ILP need: params, output channels, bias values, MACs."""
        return [{"name": l.name, "params": l.params, "out_channels": l.out_channels, "bias": l.bias, "macs": l.macs}
                for l in self.layers]

    def summary(self, bits=None) -> dict:
        """The headline figures at `bits` (None: FP32)."""
        return {"flash_bytes": self.flash_bytes(bits), "payload_bytes": self.payload_bytes(bits),
                "peak_ram_bytes": self.peak_ram_bytes(bits), "peak_ram_int8_bytes": self.peak_ram_bytes(bits, "int8"),
                "runtime_scratch_bytes": self.runtime_scratch(bits),
                "peak_step": self.peak_step(bits), "macs": self.macs(), "bops": self.bops(bits)}


def buffers(nodes: list[dict], inputs: list[str], elems: dict[str, int], readers: dict[str, str]) -> list[Buffer]:
    """The activation buffers of a node list in execution order: in-place ops share their input's buffer."""
    consumers = graph.consumers(nodes)
    last = len(nodes) - 1
    owner: dict[str, int] = {}
    out: list[Buffer] = []
    for m in inputs:
        owner[m] = len(out)
        out.append(Buffer([m], elems[m], None, 0, 0))
    for k, node in enumerate(nodes):
        src = node["inputs"][0]
        if node["op"] in IN_PLACE and len(consumers.get(src, [])) == 1 and src in owner:
            owner[node["output"]] = owner[src]
            out[owner[src]].tensors.append(node["output"])
        else:
            owner[node["output"]] = len(out)
            out.append(Buffer([node["output"]], elems[node["output"]], None, k, k))
        for t in node["inputs"]:
            out[owner[t]].end = max(out[owner[t]].end, k)
    for buf in out:
        if any(t not in consumers for t in buf.tensors):  # the network output: kept to the end
            buf.end = last
        found = {readers[t] for t in buf.tensors if t in readers}
        buf.reader = sorted(found)[-1] if found else None
    return out


def _same_pads(size, kernel, stride, dilation) -> list[int]:
    """TFLite's SAME padding as [top, left, bottom, right]."""
    total = [max((-(-n // st) - 1) * st + (k - 1) * d + 1 - n, 0) for n, k, st, d in zip(size, kernel, stride, dilation)]
    return [t // 2 for t in total] + [t - t // 2 for t in total]


def _readers(nodes: list[dict]) -> dict[str, str]:
    """Tensor -> the layer whose input quantizer stores it (every layer taken as quantized)."""
    marked = [{**n, "act": {"layer": n["name"]}} if n["op"] in graph.LAYERS else n for n in nodes]
    points, _ = graph.quant_points(marked)
    return {t: act["layer"] for t, act in points.items()}


def analyse(model, input_shapes: dict[str, tuple], case: str | None = None,
            variant: str | None = None, classes: list[str] | None = None) -> Costs:
    """The cost model of a (float or fake-quantized) TinyM2Net, from its export graph (`case`, `variant`
    and `classes` only change the measured header by their names)."""
    from .export import to_artifact

    header, tensors = to_artifact(model, {"case": case, "variant": variant, "classes": classes or [],
                                          "input_shapes": input_shapes})
    return from_header(header, {k: a for k, (a, _) in tensors.items()})


def from_header(header: dict, arrays: dict[str, np.ndarray]) -> Costs:
    """The cost model of an export header and its tensors (an artifact read back works too)."""
    nodes = header["nodes"]
    shapes = graph.shapes(header, arrays)
    elems = {t: int(np.prod(s)) for t, s in shapes.items()}
    layers = []
    for n in nodes:
        if n["op"] not in graph.LAYERS:
            continue
        w = arrays[n["weight"]]
        bias = int(np.size(arrays[n["bias"]])) if n.get("bias") else 0
        layers.append(Layer(n["name"], int(w.size), int(w.shape[0]), bias, elems[n["output"]] * int(w.size // w.shape[0])))
    bufs = buffers(nodes, list(header["inputs"]), elems, _readers(nodes))
    plain = {k: v for k, v in header.items() if k != "tensors"}
    plain["nodes"] = [_float_node(n) if n["op"] in graph.LAYERS else n for n in nodes]
    plain["tensors"] = {k: {"dtype": "float32", "shape": list(np.shape(a))} for k, a in arrays.items()
                        if not k.endswith(".weight_scale")}
    marked = [{**n, "act": {"layer": n["name"]}} if n["op"] in graph.LAYERS else n for n in nodes]
    return Costs(layers, bufs, [n["output"] for n in nodes], plain, shapes, graph.own_quantizers(marked))


def _float_node(node: dict) -> dict:
    """A layer node as the export writes it for a float layer."""
    return {k: (None if k in ("bits", "act") else v) for k, v in node.items() if k != "weight_scale"}


def litert_plan(flatbuffer: bytes) -> dict:
    """The activation memory of the graph LiteRT runs: every non-constant tensor of the interpreter (batch 1)
    at its dtype's size, live from the op that writes it to the last op that reads it, in the graph's op
    order. XNNPACK takes the whole graph as one DELEGATE node and plans its own workspace (not exposed to
    Python), so this is the live-tensor bound of that plan, not an arena reading. Against the cost
    model's int8 figure it adds the runtime's own buffers (`runtime_scratch`): the float32 inputs and
    their NHWC, scaled and clamped copies before QUANTIZE, RESHAPE/TRANSPOSE copies of a flatten,
    DEQUANTIZE/QUANTIZE copies where a float layer meets an int8 one."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=flatbuffer, num_threads=1)
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = [op for op in it._get_ops_details() if op["op_name"] != "DELEGATE"]  # the graph's own ops, in order
    produced = {i for op in ops for i in op["outputs"]}
    inputs = {d["index"] for d in it.get_input_details()}
    live = produced | inputs
    start = {i: 0 for i in inputs}
    end = {}
    for k, op in enumerate(ops):
        for i in op["outputs"]:
            start.setdefault(i, k)
            end[i] = max(end.get(i, k), k)
        for i in op["inputs"]:
            if i in live:
                end[i] = max(end.get(i, k), k)
    for d in it.get_output_details():
        end[d["index"]] = len(ops) - 1
    size = {i: int(np.prod(details[i]["shape"])) * np.dtype(details[i]["dtype"]).itemsize for i in live}
    ram = [sum(size[i] for i in live if start[i] <= k <= end[i]) for k in range(len(ops))]
    k = int(np.argmax(ram))
    return {"peak_bytes": int(ram[k]), "peak_op": ops[k]["op_name"], "ops": len(ops),
            "tensor_bytes": int(sum(size.values()))}
