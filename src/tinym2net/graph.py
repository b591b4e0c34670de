"""The network of a `.tm2` header as the backends see it: where activations are quantized, who reads what.

Every quantized layer quantizes its own input with its activation quantizer (`act`), as the fake-quantized
model does; every other op reads the float tensor. A tensor is *stored* as integers when every reader
quantizes it the same way: a quantized layer's input quantizer is moved back through the relu/maxpool/
flatten/concat ops that produce its input (they commute with a monotone quantizer), so the layer that
starts the path writes integers directly (its relu or relu6 fused into it). A tensor also read by an op
that needs the float value (add, mul, sigmoid, hardswish, avgpool, relu6), or by layers with different
quantizers, stays float; each quantized layer reading it quantizes its own copy (`own_quantizers`).
"""
from __future__ import annotations

PASS = ("relu", "maxpool", "flatten", "concat")  # monotone ops a quantizer commutes with
LAYERS = ("conv", "linear")


def consumers(nodes: list[dict]) -> dict[str, list[dict]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[dict]] = {}
    for n in nodes:
        for i in n["inputs"]:
            out.setdefault(i, []).append(n)
    return out


FLOAT_OPS = ("add", "mul", "sigmoid", "hardswish", "relu6", "avgpool")  # computed on float values
ACTIVATIONS = ("relu", "relu6")  # fused into the layer before them when their output is stored quantized


def quant_points(nodes: list[dict]) -> tuple[dict[str, dict], set[str]]:
    """Tensor -> the activation quantizer (`act` of the layers that read it) it is stored with, and the
    stored tensors that feed a quantized layer directly."""
    producer = {n["output"]: n for n in nodes}
    readers = consumers(nodes)
    memo: dict[str, dict | None] = {}

    def demand(tensor: str) -> dict | None:
        """The one quantizer every reader of `tensor` applies to it (through PASS ops), or None."""
        if tensor not in memo:
            acts = []
            for r in readers.get(tensor, []):
                if r["op"] in LAYERS:
                    acts.append(r.get("act"))
                elif r["op"] in PASS:
                    acts.append(demand(r["output"]))
                else:
                    acts.append(None)
            memo[tensor] = acts[0] if acts and acts[0] and all(a == acts[0] for a in acts) else None
        return memo[tensor]

    points: dict[str, dict] = {}
    for tensor in {i for n in nodes for i in n["inputs"]}:
        act = demand(tensor)
        if act is None:
            continue
        prev = producer.get(tensor)
        after = readers.get(tensor, [])
        if prev is not None and prev["op"] in LAYERS and len(after) == 1 and after[0]["op"] in ACTIVATIONS:
            continue  # layer -> relu -> quantizer: the relu is fused into the layer, which writes the relu's output
        points[tensor] = act
    ends = {n["inputs"][0] for n in nodes if n["op"] in LAYERS and n.get("act") and n["inputs"][0] in points}
    return points, ends


def own_quantizers(nodes: list[dict]) -> set[str]:
    """Quantized layers whose input is not stored as integers: they quantize a float tensor themselves."""
    points, _ = quant_points(nodes)
    return {n["name"] for n in nodes if n["op"] in LAYERS and n.get("act") and n["inputs"][0] not in points}


def producers(nodes: list[dict]) -> dict[str, list[str]]:
    """Layer name -> the layers whose outputs it reads (through relu/maxpool/flatten/concat); [] for a network input."""
    producer = {n["output"]: n for n in nodes}
    out = {}
    for node in nodes:
        if node["op"] not in LAYERS:
            continue
        found, stack = [], list(node["inputs"])
        while stack:
            prev = producer.get(stack.pop())
            if prev is None:
                continue
            if prev["op"] in LAYERS:
                found.append(prev["name"])
            else:
                stack.extend(prev["inputs"])
        out[node["name"]] = sorted(set(found))
    return out


def nhwc_flattens(nodes: list[dict]) -> dict[str, list[int]]:
    """Flatten outputs read only by linear layers -> the (C, H, W) they flatten. Such a flatten may read its
    input channels-last, with the linear layers' weight columns permuted to match (`permute_columns`)."""
    readers = consumers(nodes)
    return {n["output"]: n["shape"] for n in nodes if n["op"] == "flatten" and len(n.get("shape", [])) == 3
            and all(c["op"] == "linear" for c in readers.get(n["output"], []))}


def permute_columns(weight, chw: list[int]):
    """A linear layer's (out, C*H*W) weight for an input flattened channels-last (H, W, C)."""
    c, h, w = chw
    return weight.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def shapes(header: dict, tensors: dict) -> dict[str, list[int]]:
    """Every tensor's per-sample shape: (C, H, W) up to the flattens, (features,) after them."""
    out = {m: list(s) for m, s in header["inputs"].items()}
    for n in header["nodes"]:
        x = out[n["inputs"][0]]
        op = n["op"]
        if op == "conv":
            pads = n["pads"]
            out[n["output"]] = [len(tensors[n["weight"]])] + [
                (x[1 + i] + pads[i] + pads[i + 2] - n["dilation"][i] * (n["kernel"][i] - 1) - 1) // n["stride"][i] + 1
                for i in range(2)]
        elif op in ("maxpool", "avgpool"):
            out[n["output"]] = [x[0]] + [(x[1 + i] + 2 * n["pads"][i] - n["kernel"][i]) // n["stride"][i] + 1
                                         for i in range(2)]
        elif op == "flatten":
            out[n["output"]] = [int(x[0] * x[1] * x[2])]
        elif op == "linear":
            out[n["output"]] = [len(tensors[n["weight"]])]
        elif op == "concat":
            out[n["output"]] = [sum(out[i][0] for i in n["inputs"])]
        else:
            out[n["output"]] = list(x)
    return out
