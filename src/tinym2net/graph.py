"""The network of a `.tm2` header as the backends see it: where activations are quantized, who reads what.

A quantized layer's input quantizer is moved back through the relu/maxpool/flatten/concat ops that
produce its input (they commute with a monotone quantizer), so every tensor on that path is stored as
integers and the layer that starts the path writes them directly (its relu fused into it).
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


def quant_points(nodes: list[dict]) -> tuple[dict[str, dict], set[str]]:
    """Tensor -> the activation quantizer (`act` of the layer that reads it) to apply right after it is
    produced, and the tensors that feed a quantized layer directly."""
    producer = {n["output"]: n for n in nodes}
    points: dict[str, dict] = {}
    ends: set[str] = set()
    for node in nodes:
        act = node.get("act") if node["op"] in LAYERS else None
        if not act:
            continue
        ends.add(node["inputs"][0])
        stack = [node["inputs"][0]]
        while stack:
            tensor = stack.pop()
            points[tensor] = act
            prev = producer.get(tensor)
            if prev is None or prev["op"] not in PASS:
                continue
            if prev["op"] == "relu" and (producer.get(prev["inputs"][0]) or {}).get("op") in LAYERS:
                continue  # layer -> relu -> quantizer: the relu is fused into the layer
            stack.extend(prev["inputs"])
    return points, ends


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
        elif op == "maxpool":
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
