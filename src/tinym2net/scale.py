"""Hardware-aware scaling: one mixed-integer program (PuLP, CBC) that chooses each branch's hyperparameters
from a candidate grid and each layer's bit width, so the network fits a device profile.

Variables: z[m,c] = 1 if branch m takes candidate c (exactly one per branch); y[m,c,l,b] = 1 if layer l of that
candidate runs at width b (sum over b = z[m,c]); h[l,b] for the head's layers (exactly one width each).

    maximise   sum_m sum_c z[m,c] cap(m,c) / max_c cap(m,c)                      (capacity: params or MACs)
             - weight * sum_groups sum_l sum_b y[l,b] (params_l / params_group) 4^-(b - b_min)
    subject to Flash:  header + sum y[l,b] weight_bytes(l,b) <= profile Flash       (the .tm2 file, cost.py)
               RAM:    for every step k of the execution schedule of every candidate:
                       sum of the buffers live at k, each at the width of the layer reading it, <= profile RAM
               MACs:   sum z[m,c] macs(m,c) + head MACs <= profile MACs; BOPS: sum y[l,b] macs_l b^2 <= profile BOPS

The perturbation term is data-free (there is no trained model yet): a layer's relative quantization noise power
4^-(b - b_min) (1 at the lowest width, 0 for float), averaged over each branch's (and the head's) parameters.
After training, the `ilp` stage re-allocates the widths of the chosen architecture with the Hessian traces
under the same profile limits: the MILP picks the architecture, the ILP its final bits.

Peak RAM is a maximum over the schedule, linearised as one row per step. The branches run one after the other
(the export graph's order), so while branch m runs, each later branch holds its input and each earlier one its
output; those buffers enter branch m's rows through the other branches' own variables. A row of a candidate that
is not chosen keeps only those terms, which every row of the chosen candidate also holds: no big-M is needed.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import pulp

from . import cost
from .bitpack import FLOAT_BITS, activation_bytes, weight_bytes
from .errors import TinyM2NetError
from .model import build

log = logging.getLogger(__name__)

OBJECTIVE_SCALE = 1e4


class ScaleInfeasible(TinyM2NetError):
    """No candidate and bit allocation fits the profile."""


@dataclass
class Candidate:
    branch: str
    hyper: dict          # the grid values that define it
    spec: dict           # the branch spec model.build takes
    costs: cost.Costs    # the whole network with this branch candidate (other branches at their first)


def candidates(spec: dict, family: str, fixed: dict, grid: dict) -> list[tuple[dict, dict]]:
    """(grid values, branch spec) for every point of the grid. `dscnn` scales `spec` (train's paper branch):
    `width` multiplies every conv/sepconv filter count (at least 1), other keys replace the spec's; a `phinet` or
    `xinet` branch is `{type: family, **fixed, **point}`."""
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        point = dict(zip(keys, values))
        if family == "dscnn":
            s = {**spec, "type": "dscnn", **fixed, **{k: v for k, v in point.items() if k != "width"}}
            width = point.get("width", 1.0)
            s["layers"] = [[kind, max(1, round(args[0] * width)), *args[1:]] if kind in ("conv", "sepconv")
                           else [kind, *args] for kind, *args in s["layers"]]
        else:
            s = {"type": family, **fixed, **point}
        out.append((point, s))
    return out


def _buffer_terms(buffers, widths, storage):
    """(constant bytes, {layer: {b: bytes}}) of some buffers: float32 ones, and per reading layer and width."""
    constant, terms = 0, {}
    for buf in buffers:
        if buf.reader is None:
            constant += activation_bytes(buf.elems, FLOAT_BITS)
        else:
            row = terms.setdefault(buf.reader, dict.fromkeys(widths, 0))
            for b in widths:
                row[b] += activation_bytes(buf.elems, b, storage)
    return constant, terms


def _prefix(m: str) -> str:
    return f"branches.{m}."


def _owned(buf, m: str) -> bool:
    return all(t == m or t.startswith(_prefix(m)) for t in buf.tensors)


class Instance:
    """The MILP's data for one case: candidates per branch, the head, the schedule pieces."""

    def __init__(self, train_cfg: dict, shapes: dict[str, tuple], n_classes: int, options: dict[str, list],
                 widths: list[int], storage: str = "packed", meta: dict | None = None):
        self.modalities, self.widths, self.storage = list(options), list(widths), storage
        first = {m: opts[0][1] for m, opts in options.items()}
        self.cands: dict[str, list[Candidate]] = {}
        for m, opts in options.items():
            self.cands[m] = []
            for hyper, spec in opts:
                model = build({**train_cfg, "branches": {**first, m: spec}}, shapes, n_classes).eval()
                self.cands[m].append(Candidate(m, hyper, spec, cost.analyse(model, shapes, **(meta or {}))))
        base = self.cands[self.modalities[0]][0].costs
        self.head = [l for l in base.layers if not l.name.startswith("branches.")]
        # the head's steps (after every branch): their buffers do not depend on the candidates (`dense` is fixed)
        self.head_steps = []
        for k, node in enumerate(base.steps):
            if not node.startswith("branches."):
                live = [buf for buf in base.buffers if buf.start <= k <= buf.end]
                self.head_steps.append((node, _buffer_terms(live, widths, storage)))
        self.header = max(c.costs.header_bytes(max(b for b in widths if b != FLOAT_BITS))
                          for cs in self.cands.values() for c in cs) + cost.HEADER_SLACK

    def branch_layers(self, c: Candidate):
        return [l for l in c.costs.layers if l.name.startswith(_prefix(c.branch))]

    def branch_steps(self, c: Candidate):
        """Each step of the branch in c's network: its own live buffers (constant, per-layer terms)."""
        m, out = c.branch, []
        for k, node in enumerate(c.costs.steps):
            if node.startswith(_prefix(m)):
                live = [buf for buf in c.costs.buffers if buf.start <= k <= buf.end and _owned(buf, m)]
                out.append((node, _buffer_terms(live, self.widths, self.storage)))
        return out

    def waiting(self, c: Candidate, before: bool):
        """What branch c holds while another branch runs: its input (before it runs) or its output (after)."""
        m = c.branch
        steps = [k for k, node in enumerate(c.costs.steps) if node.startswith(_prefix(m))]
        if before:
            held = [buf for buf in c.costs.buffers if m in buf.tensors]
        else:
            held = [buf for buf in c.costs.buffers if _owned(buf, m) and buf.end > steps[-1]]
        return _buffer_terms(held, self.widths, self.storage)


def _capacity(c: Candidate, kind: str) -> float:
    layers = [l for l in c.costs.layers if l.name.startswith(_prefix(c.branch))]
    return float(sum(l.params if kind == "params" else l.macs for l in layers))


def perturbation(layers, b: int, lowest: int, layer) -> float:
    """Data-free perturbation of `layer` at width b within its group: its share of the group's parameters times
    the relative quantization noise power 4^-(b - lowest) (0 for float)."""
    if b == FLOAT_BITS:
        return 0.0
    return layer.params / max(1, sum(l.params for l in layers)) * 4.0 ** -(b - lowest)


def solve(inst: Instance, profile, capacity: str = "params", weight: float = 1.0, minimise: str | None = None) -> dict:
    """The optimal candidates and widths under `profile` (flash_bytes, ram_bytes, macs, bops); `minimise`
    ("flash", "ram", "macs", "bops") instead finds the smallest value of that quantity with no limits."""
    W = inst.widths
    lowest = min(b for b in W if b != FLOAT_BITS)
    prob = pulp.LpProblem("scale", pulp.LpMinimize)
    z, y, h = {}, {}, {}
    for m, cs in inst.cands.items():
        for i, c in enumerate(cs):
            z[m, i] = prob.add_variable(f"z_{len(z)}", cat=pulp.LpBinary)
            for l in inst.branch_layers(c):
                for b in W:
                    y[m, i, l.name, b] = prob.add_variable(f"y_{len(y)}", cat=pulp.LpBinary)
                prob += pulp.lpSum(y[m, i, l.name, b] for b in W) == z[m, i]
        prob += pulp.lpSum(z[m, i] for i in range(len(cs))) == 1
    for l in inst.head:
        for b in W:
            h[l.name, b] = prob.add_variable(f"h_{len(h)}", cat=pulp.LpBinary)
        prob += pulp.lpSum(h[l.name, b] for b in W) == 1

    def var(m, i, layer, b):
        return y[m, i, layer, b] if (m, i, layer, b) in y else h[layer, b]

    def terms(m, i, pair):
        """A (constant, per-layer) buffer sum as an expression in candidate (m, i)'s variables."""
        constant, per_layer = pair
        return constant * z[m, i] + pulp.lpSum(v * var(m, i, layer, b) for layer, row in per_layer.items()
                                                for b, v in row.items() if v)

    def head_terms(pair):
        constant, per_layer = pair
        return constant + pulp.lpSum(v * h[layer, b] for layer, row in per_layer.items() for b, v in row.items() if v)

    flash = inst.header + pulp.lpSum(
        weight_bytes(l.params, l.out_channels, l.bias, b) * var(m, i, l.name, b)
        for m, cs in inst.cands.items() for i, c in enumerate(cs) for l in inst.branch_layers(c) for b in W) \
        + pulp.lpSum(weight_bytes(l.params, l.out_channels, l.bias, b) * h[l.name, b] for l in inst.head for b in W)
    macs = pulp.lpSum(sum(l.macs for l in inst.branch_layers(c)) * z[m, i]
                      for m, cs in inst.cands.items() for i, c in enumerate(cs)) + sum(l.macs for l in inst.head)
    bops = pulp.lpSum(l.macs * b * b * var(m, i, l.name, b)
                      for m, cs in inst.cands.items() for i, c in enumerate(cs) for l in inst.branch_layers(c) for b in W) \
        + pulp.lpSum(l.macs * b * b * h[l.name, b] for l in inst.head for b in W)
    rams = []
    order = inst.modalities
    for j, m in enumerate(order):
        others = []
        for o in order:
            if o != m:
                before = order.index(o) > j  # o runs later: it holds its input; earlier: its output
                for i, c in enumerate(inst.cands[o]):
                    constant, per_layer = inst.waiting(c, before)
                    if i:  # a buffer the head reads (the branch's output) is the same for every candidate: once
                        per_layer = {k: v for k, v in per_layer.items() if (o, i, k, W[0]) in y}
                    others.append(terms(o, i, (constant, per_layer)))
        rest = pulp.lpSum(others)
        for i, c in enumerate(inst.cands[m]):
            for node, pair in inst.branch_steps(c):
                rams.append((f"{m}[{i}] {node}", terms(m, i, pair) + rest))
    for node, pair in inst.head_steps:
        rams.append((node, head_terms(pair)))

    if minimise is None:
        groups = [[l for l in inst.branch_layers(c)] for cs in inst.cands.values() for c in cs] + [inst.head]
        owners = [(m, i) for m, cs in inst.cands.items() for i in range(len(cs))] + [None]
        caps = {m: max(_capacity(c, capacity) for c in cs) or 1.0 for m, cs in inst.cands.items()}
        gain = pulp.lpSum(_capacity(c, capacity) / caps[m] * z[m, i]
                          for m, cs in inst.cands.items() for i, c in enumerate(cs))
        loss = pulp.lpSum(perturbation(layers, b, lowest, l) * (var(*owner, l.name, b) if owner else h[l.name, b])
                          for layers, owner in zip(groups, owners) for l in layers for b in W)
        prob += OBJECTIVE_SCALE * (weight * loss - gain)
        for name, limit, expr in (("Flash", profile.flash_bytes, flash), ("MACs", profile.macs, macs),
                                  ("BOPS", profile.bops, bops)):
            if limit is not None:
                prob += expr * (1.0 / limit) <= 1.0 + 1e-12, name
        for k, (node, expr) in enumerate(rams):
            prob += expr * (1.0 / profile.ram_bytes) <= 1.0 + 1e-12, f"ram_{k}"
    elif minimise == "ram":
        peak = prob.add_variable("peak", lowBound=0)
        for k, (node, expr) in enumerate(rams):
            prob += expr - peak <= 0, f"ram_{k}"
        prob += peak
    else:
        prob += {"flash": flash, "macs": macs, "bops": bops}[minimise]

    start = time.perf_counter()
    prob.solve(pulp.PULP_CBC_CMD(msg=False, options=["preprocess off"]))
    seconds = time.perf_counter() - start
    status = pulp.LpStatus[prob.status]
    if status != "Optimal":
        return {"status": status}
    chosen = {m: next(i for i in range(len(cs)) if (z[m, i].value() or 0) > 0.5) for m, cs in inst.cands.items()}
    bits = {}
    for m, i in chosen.items():
        for l in inst.branch_layers(inst.cands[m][i]):
            bits[l.name] = next(b for b in W if (y[m, i, l.name, b].value() or 0) > 0.5)
    for l in inst.head:
        bits[l.name] = next(b for b in W if (h[l.name, b].value() or 0) > 0.5)
    return {"status": status, "chosen": chosen, "bits": bits, "seconds": seconds,
            # capacity - weight x perturbation (maximised), or the minimised quantity
            "objective": -pulp.value(prob.objective) / OBJECTIVE_SCALE if minimise is None else pulp.value(prob.objective)}


def choose(inst: Instance, profile, capacity: str = "params", weight: float = 1.0, what: str = "") -> dict:
    """Solve, check the answer with the cost model of the network it names, and explain an infeasible profile
    in one line with the smallest feasible value of each limit."""
    result = solve(inst, profile, capacity, weight)
    if result["status"] == "Infeasible":
        least = {"Flash": solve(inst, profile, minimise="flash"), "RAM": solve(inst, profile, minimise="ram"),
                 "MACs": solve(inst, profile, minimise="macs"), "BOPS": solve(inst, profile, minimise="bops")}
        limits = {"Flash": profile.flash_bytes, "RAM": profile.ram_bytes, "MACs": profile.macs, "BOPS": profile.bops}
        parts = [f"{k} {limits[k]:.0f}{' B' if k in ('Flash', 'RAM') else ''} (smallest feasible "
                 f"{least[k]['objective']:.0f})" for k in limits if limits[k] is not None]
        raise ScaleInfeasible(f"{what}no candidate of the grid fits the profile: " + ", ".join(parts)
                              + "; relax a limit or widen the grid")
    if result["status"] != "Optimal":
        raise ScaleInfeasible(f"{what}CBC ended with status {result['status']}")
    return result
