"""Mixed-precision bit allocation as an integer linear program (HAWQ-V3), solved with PuLP's bundled CBC.

Minimize sum_i Omega_i^{b_i} subject to model size sum_i params_i * b_i / 8 <= size limit (bytes),
BOPS sum_i MACs_i * b_i^2 <= BOPS limit and any further linear `Budget` (latency, peak memory),
with tied layers sharing one width and pinned layers fixed. One binary per (tie group, bit choice), exactly one chosen per group, so any number of bit
choices works. A limit is absolute or a lambda in [0, 1] between the all-lowest-bit and the
all-highest-bit totals (of the quantized widths: a width of 32, FLOAT_BITS, leaves a layer float, with
Omega 0 unless the file says otherwise). A latency table (`latency.py`, microseconds per layer and
width measured on the device) becomes a `latency_budget`, whose lambda spans the fastest to the slowest
allocation.

Sensitivity input (written by the Hessian stage):
  {"layers": [{"name", "params", "macs", "omega": {"4": float, "8": float}}, ...], "ties": [[a, b], ...]}
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pulp

from .bitpack import FLOAT_BITS, activation_bytes, weight_bytes
from .errors import DataError, ParamsError, TinyM2NetError
from .io import write_json

log = logging.getLogger(__name__)

# CBC 2.10.3 (bundled with PuLP) needs three precautions here, each found by brute-force and
# cross-solver checks on random instances (tests/test_ilp.py, benchmarks/ilp_500.py):
# - its default preprocessing returns wrong "optimal" allocations with >= 3 bit choices
#   (~0.4% of small instances; coin-or/Cbc#293-like), so it is switched off;
# - unscaled BOPS rows (coefficients ~1e10) make its final LP clean-up return non-binary values,
#   so budget rows are scaled by exact powers of two (`_add_budget`);
# - its absolute tolerances (cutoff increment 1e-5, reduced-cost fixing) prune solutions better
#   by less than ~1e-5, so the objective is scaled up to OBJECTIVE_SCALE.
OBJECTIVE_SCALE = 1e4


class IlpError(TinyM2NetError):
    """The bit-allocation ILP could not be solved."""


class IlpInfeasible(IlpError):
    """No bit allocation meets the size/BOPS limits given the pinned and tied layers."""


def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _floor(limit: float) -> int:
    """The largest integer total within `limit`, forgiving float rounding of a lambda-derived limit."""
    return math.floor(limit + 1e-9 * max(1.0, abs(limit)))


def _check_sensitivity(sens: dict, bit_choices: list[int]) -> list[dict]:
    """The layer list of a sensitivity dict, with every field checked; errors name the layer."""
    layers = sens.get("layers") if isinstance(sens, dict) else None
    if not isinstance(layers, list) or not layers:
        raise DataError("sensitivity: expected a non-empty 'layers' list")
    seen = set()
    for i, layer in enumerate(layers):
        name = layer.get("name") if isinstance(layer, dict) else None
        if not isinstance(name, str):
            raise DataError(f"sensitivity: layers[{i}] has no 'name'")
        if name in seen:
            raise DataError(f"sensitivity: layer {name} appears twice")
        seen.add(name)
        for key in ("params", "macs"):
            value = layer.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"sensitivity: layer {name}: {key!r} must be a non-negative integer (got {value!r})")
        omega = layer.get("omega")
        missing = [b for b in bit_choices if not isinstance(omega, dict) or str(b) not in omega]
        if missing:
            raise DataError(f"sensitivity: layer {name} has no omega for {missing[0]} bits")
        bad = [b for b in bit_choices
               if not isinstance(omega[str(b)], (int, float)) or not math.isfinite(omega[str(b)])]
        if bad:
            raise DataError(f"sensitivity: layer {name}: omega at {bad[0]} bits is not a finite number")
    return layers


def tie_groups(names: list[str], ties: list) -> list[list[int]]:
    """Layer indices grouped by ties (transitively), in order of first layer."""
    index = {n: i for i, n in enumerate(names)}
    parent = list(range(len(names)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for tie in ties:
        if not isinstance(tie, (list, tuple)) or len(tie) < 2:
            raise DataError(f"sensitivity: a tie must list at least two layer names (got {tie!r})")
        unknown = [n for n in tie if n not in index]
        if unknown:
            raise DataError(f"sensitivity: tie names {unknown[0]!r}, which is not a layer")
        for other in tie[1:]:
            a, b = root(index[tie[0]]), root(index[other])
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(names)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def totals(layers: list[dict], bits: dict[str, int]) -> tuple[float, int]:
    """Size in bytes and BOPS of an allocation."""
    size = sum(layer["params"] * bits[layer["name"]] for layer in layers) / 8
    bops = sum(layer["macs"] * bits[layer["name"]] ** 2 for layer in layers)
    return size, bops


@dataclass(frozen=True)
class Budget:
    """A linear limit on an allocation: constant + sum over layers of cost[layer][bits] <= limit.

    Size and BOPS are two of them; so is a latency table (seconds per layer and width) or one step
    of a peak-memory schedule (the live buffers at that step, each at the width of the layer that
    reads it). `step`: totals are exact multiples of it (size: 1/8 B, BOPS: 1), so the row is
    solved in integers; None: a real-valued total, compared with a relative tolerance of 1e-9.
    `lam`: the lambda the limit was derived from, and `span` the (lambda 0, lambda 1) totals, for messages.
    """
    name: str
    unit: str
    cost: dict[str, dict[int, float]]
    limit: float
    constant: float = 0.0
    step: float | None = None
    lam: float | None = None
    span: tuple[float, float] | None = None
    group: str | None = None   # rows of one limit (peak RAM: one row per schedule step), reported as one

    def total(self, bits: dict[str, int]) -> float:
        return self.constant + sum(c[bits[name]] for name, c in self.cost.items())

    def fits(self, total: float) -> bool:
        if self.step is not None:
            return round(total / self.step) <= _floor(self.limit / self.step)
        return total <= self.limit + 1e-9 * max(1.0, abs(self.limit))

    def describe(self, value: float) -> str:
        return f"{_fmt(value)}{' ' + self.unit if self.unit else ''}"


def size_budget(layers: list[dict], limit: float, lam: float | None = None) -> Budget:
    """Packed weight bytes, sum params_i * b_i / 8."""
    return Budget("size", "B", {l["name"]: {b: l["params"] * b / 8 for b in _widths(l)} for l in layers},
                  limit, step=1 / 8, lam=lam)


def bops_budget(layers: list[dict], limit: float, lam: float | None = None) -> Budget:
    """Bit operations, sum MACs_i * b_i^2."""
    return Budget("BOPS", "", {l["name"]: {b: l["macs"] * b * b for b in _widths(l)} for l in layers},
                  limit, step=1, lam=lam)


def _cost_field(sens: dict, key: str, what: str):
    value = sens.get(key) if isinstance(sens, dict) else None
    if value is None:
        raise DataError(f"sensitivity: no {key!r} ({what}); re-run the sensitivity stage, or add it to the cost file "
                        f"(tinym2net.cost.Costs)")
    return value


def flash_budget(sens: dict, bit_choices, limit: float) -> Budget:
    """The `.tm2` file size in bytes (`cost.py`): per layer its packed weights, float32 scales and biases at each
    width, plus the file's measured header and its slack (the cost file's `flash`: `header_bytes`, `header_slack`)."""
    flash = _cost_field(sens, "flash", "the measured header for a Flash limit")
    cost = {}
    for l in sens["layers"]:
        if not all(isinstance(l.get(k), int) for k in ("out_channels", "bias")):
            raise DataError(f"sensitivity: layer {l.get('name')} has no out_channels/bias counts (needed for a Flash limit)")
        cost[l["name"]] = {b: float(weight_bytes(l["params"], l["out_channels"], l["bias"], b)) for b in bit_choices}
    return Budget("Flash", "B", cost, limit, constant=float(flash["header_bytes"] + flash.get("header_slack", 0)),
                  step=1)


def ram_budgets(sens: dict, bit_choices, limit: float, storage: str | None = None) -> list[Budget]:
    """Peak RAM <= limit, linearised: one row per step of the execution schedule (the cost file's `memory`), the
    live buffers at that step each at the width of the layer that reads it (float32 when none does)."""
    memory = _cost_field(sens, "memory", "the execution schedule's live buffers for a RAM limit")
    storage = storage or memory.get("storage", "packed")
    rows = []
    for step in memory["steps"]:
        cost = {layer: {b: float(sum(activation_bytes(e, b, storage) for e in elems)) for b in bit_choices}
                for layer, elems in step["buffers"].items()}
        rows.append(Budget(f"RAM at {step['node']}", "B", cost, limit, constant=float(step["constant"]), step=1,
                           group="RAM"))
    return rows


def latency_budget(table: dict, names: list[str], bit_choices, limit: float | None = None,
                   lam: float | None = None, fastest: float | None = None) -> Budget:
    """Estimated batch-1 latency (the table's constant + its per-layer entries, microseconds); a lambda in [0, 1]
    spans the fastest allocation (`fastest`, e.g. from `fastest_latency`; default: every layer at its fastest
    width, which ties and pins may forbid) to the slowest one."""
    rows = table.get("layers", {})
    cost = {}
    for name in names:
        entry = rows.get(name)
        missing = [b for b in bit_choices if not isinstance(entry, dict) or str(b) not in entry]
        if missing:
            raise DataError(f"latency table: layer {name} has no latency at {missing[0]} bits "
                            f"(measure the table with the ILP's bit choices)")
        cost[name] = {b: float(entry[str(b)]) for b in bit_choices}
    constant = float(table.get("constant", 0.0))
    span = (constant + sum(min(c.values()) for c in cost.values()) if fastest is None else fastest,
            constant + sum(max(c.values()) for c in cost.values()))
    cap = _limit("latency", "us", limit, lam, *span)
    if cap is None:
        raise ParamsError("a latency budget needs a latency limit (microseconds) or a latency lambda")
    return Budget("latency", "us", cost, cap, constant=constant, lam=lam, span=span)


def fastest_latency(sens: dict, bit_choices, table: dict, **limits) -> float:
    """The smallest estimated latency any allocation reaches under `limits` (solve's keywords: size, BOPS, pins,
    further budgets): the same ILP with the latency table as its objective."""
    rows = table.get("layers", {})
    layers = []
    for l in sens.get("layers") or []:
        entry = rows.get(l.get("name")) if isinstance(l, dict) else None
        if not isinstance(entry, dict) or any(str(b) not in entry for b in bit_choices):
            raise DataError(f"latency table: no latency at every width in {list(bit_choices)} for layer "
                            f"{l.get('name') if isinstance(l, dict) else l!r}")
        layers.append({**l, "omega": {str(b): float(entry[str(b)]) for b in bit_choices}})
    return float(table.get("constant", 0.0)) + solve({**sens, "layers": layers}, bit_choices, **limits)["objective"]


def latency_budgets(sens: dict, bit_choices, table: dict, limit: float | None = None, lam: float | None = None,
                    **limits) -> list[Budget]:
    """The latency limit (its lambda spanning the fastest allocation `limits` allow to the slowest) and the float
    order rows that keep the table's per-layer figures true."""
    names = [l["name"] for l in sens["layers"]]
    order = float_order_budgets(table.get("producers", {}), names, bit_choices)
    fastest = fastest_latency(sens, bit_choices, table, **{**limits, "budgets": order + list(limits.get("budgets") or [])})
    return order + [latency_budget(table, names, bit_choices, limit, lam, fastest)]


def float_order_budgets(producers: dict[str, list[str]], names: list[str], bit_choices) -> list[Budget]:
    """A float (32-bit) layer reads only float layers: for each edge producer -> consumer,
    [consumer at 32] - [producer at 32] <= 0. (An int8 layer read by a float layer has no output quantizer
    in the fake-quantized model, so the runtime must run it in float: its int8 latency would not hold.)"""
    if FLOAT_BITS not in bit_choices:
        return []
    budgets = []
    for consumer, sources in producers.items():
        for producer in sources:
            if consumer in names and producer in names:
                cost = {consumer: {b: float(b == FLOAT_BITS) for b in bit_choices},
                        producer: {b: -float(b == FLOAT_BITS) for b in bit_choices}}
                budgets.append(Budget(f"float order {producer} -> {consumer}", "", cost, 0.0, step=1))
    return budgets


def _widths(layer: dict) -> list[int]:
    return [int(b) for b in layer["omega"]]


def _add_budget(prob, name: str, coef: dict[tuple[int, int], float], cap: float, x, exact: bool) -> None:
    """Add sum coef * x <= cap, scaled by an exact power of two for CBC's numerics.

    Exact (integer) rows are scaled so the largest coefficient is about 2^10, by at most 2^-22, with
    the bound cap + 1/2: CBC's 1e-7 feasibility tolerance then stays below half a unit of the integer
    total, so the scaled row admits exactly the integer totals <= cap. Real-valued rows are scaled alike.
    """
    k = min(22, max(0, math.ceil(math.log2(max(max(abs(c) for c in coef.values()), 1) / 1024))))
    s = 2.0 ** -k
    prob += pulp.lpSum(c * s * x[g][j] for (g, j), c in coef.items() if c) <= (cap + (0.5 if exact else 0.0)) * s, name


def _limit(kind: str, unit: str, absolute, lam, lo: float, hi: float) -> float | None:
    """The absolute limit from either an absolute value or a lambda between `lo` and `hi`."""
    if absolute is not None and lam is not None:
        raise ParamsError(f"give either a {kind} limit or a {kind} lambda, not both")
    if lam is not None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
            raise ParamsError(f"{kind} lambda must be a number in [0, 1] (got {lam!r})")
        return lo + lam * (hi - lo)
    if absolute is not None and (isinstance(absolute, bool) or not isinstance(absolute, (int, float))
                                 or not absolute >= 0):
        raise ParamsError(f"{kind} limit must be a number of {unit} >= 0 (got {absolute!r})")
    return absolute


def _check_budget(budget: Budget, names: list[str], choices: list[int]) -> None:
    unknown = [n for n in budget.cost if n not in names]
    if unknown:
        raise ParamsError(f"{budget.name} budget names {unknown[0]!r}, which is not a layer of the sensitivity file")
    for name, cost in budget.cost.items():
        missing = [b for b in choices if b not in cost]
        if missing:
            raise DataError(f"{budget.name} budget: layer {name} has no cost at {missing[0]} bits")
        bad = [b for b in choices if not math.isfinite(cost[b])]
        if bad:
            raise DataError(f"{budget.name} budget: layer {name}: cost at {bad[0]} bits is not a finite number")


def solve(sens: dict, bit_choices=(4, 8), *, size_limit: float | None = None, size_lambda: float | None = None,
          bops_limit: float | None = None, bops_lambda: float | None = None,
          pins: dict[str, int] | None = None, budgets: list[Budget] | None = None) -> dict:
    """Optimal bit width per layer under the limits; raises IlpInfeasible naming the smallest feasible limit.

    `budgets`: further linear limits (latency, peak memory, ...) beside size and BOPS."""
    choices = list(bit_choices)
    if not choices or len(set(choices)) != len(choices) or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in choices):
        raise ParamsError(f"bit choices must be distinct positive integers (got {choices!r})")
    if FLOAT_BITS in choices:  # a float layer has no quantization error unless the file says otherwise
        sens = {**sens, "layers": [{**l, "omega": {str(FLOAT_BITS): 0.0, **l["omega"]}} if isinstance(l, dict)
                                   and isinstance(l.get("omega"), dict) else l for l in sens.get("layers") or []]}
    layers = _check_sensitivity(sens, choices)
    names = [layer["name"] for layer in layers]
    pins = dict(pins or {})
    for name, b in pins.items():
        if name not in names:
            raise ParamsError(f"pin names {name!r}, which is not a layer of the sensitivity file")
        if b not in choices:
            raise ParamsError(f"pin {name}={b}: {b} is not one of the bit choices {choices}")
    groups = tie_groups(names, sens.get("ties", []))

    group_pin: list[int | None] = []
    for group in groups:
        pinned = {pins[names[i]] for i in group if names[i] in pins}
        if len(pinned) > 1:
            members = ", ".join(names[i] for i in group)
            raise ParamsError(f"tied layers {members} are pinned to different widths {sorted(pinned)}")
        group_pin.append(pinned.pop() if pinned else None)

    quantized = [b for b in choices if b != FLOAT_BITS] or choices
    lo_b, hi_b = min(quantized), max(quantized)
    size_range = totals(layers, dict.fromkeys(names, lo_b))[0], totals(layers, dict.fromkeys(names, hi_b))[0]
    bops_range = totals(layers, dict.fromkeys(names, lo_b))[1], totals(layers, dict.fromkeys(names, hi_b))[1]
    size_cap = _limit("size", "bytes", size_limit, size_lambda, *size_range)
    bops_cap = _limit("BOPS", "operations", bops_limit, bops_lambda, *bops_range)
    rows = [b for b in ([size_budget(layers, size_cap, size_lambda)] if size_cap is not None else [])
            + ([bops_budget(layers, bops_cap, bops_lambda)] if bops_cap is not None else [])]
    for budget in budgets or []:
        _check_budget(budget, names, choices)
        rows.append(budget)

    # Each limit alone: its smallest total under pins and ties is the sum of each group's cheapest
    # allowed width; the limit is feasible alone iff that fits.
    # A group of rows (peak RAM) is one limit: the smallest feasible value is its largest row's least total
    # (every row's cost grows with the width, so the all-lowest allocation minimises all rows at once).
    allowed = [[pin] if pin is not None else choices for pin in group_pin]
    problems, least_of = [], {}
    for budget in rows:
        least = budget.constant + sum(min(sum(budget.cost.get(names[i], {}).get(b, 0.0) for i in group) for b in ok)
                                      for group, ok in zip(groups, allowed))
        key = budget.group or budget.name
        if key not in least_of or least > least_of[key][1]:
            least_of[key] = (budget, least)
    for key, (budget, least) in least_of.items():
        if not budget.fits(least):
            lam = ""
            if budget.lam is not None:
                lo, hi = budget.span or (size_range if budget.name == "size" else bops_range)
                lam = f" (lambda {budget.lam:g}; smallest feasible lambda {(least - lo) / max(hi - lo, 1e-300):.4g})"
            where = f" (at {budget.name.removeprefix(key + ' at ')})" if budget.group else ""
            problems.append(f"{key} limit {budget.describe(budget.limit)}{lam} is infeasible with the "
                            f"pinned/tied layers; the smallest feasible {key} is {budget.describe(least)}{where}")
    if problems:
        raise IlpInfeasible("; ".join(problems))

    # Objective per (group, choice), shifted by the group's minimum and scaled to [0, OBJECTIVE_SCALE];
    # neither changes the argmin.
    cost = [[sum(layers[i]["omega"][str(b)] for i in group) for b in choices] for group in groups]
    shifted = [[c - min(row) for c in row] for row in cost]
    scale = OBJECTIVE_SCALE / (max(max(row) for row in shifted) or 1.0)
    pairs = [(g, j) for g in range(len(groups)) for j in range(len(choices))]

    prob = pulp.LpProblem("bit_allocation", pulp.LpMinimize)
    x = [[prob.add_variable(f"x_{g}_{j}", cat=pulp.LpBinary) for j in range(len(choices))]
         for g in range(len(groups))]
    prob += pulp.lpSum(shifted[g][j] * scale * x[g][j] for g, j in pairs)
    for g, pin in enumerate(group_pin):
        prob += pulp.lpSum(x[g]) == 1, f"one_width_{g}"
        if pin is not None:
            prob += x[g][choices.index(pin)] == 1, f"pin_{g}"
    for k, budget in enumerate(rows):
        unit = budget.step or 1.0
        coef = {(g, j): sum(budget.cost.get(names[i], {}).get(choices[j], 0.0) for i in groups[g]) / unit
                for g, j in pairs}
        if budget.step is not None:
            coef = {key: round(c) for key, c in coef.items()}
            cap = _floor(budget.limit / unit) - round(budget.constant / unit)
        else:
            cap = budget.limit - budget.constant + 1e-9 * max(1.0, abs(budget.limit))
        _add_budget(prob, f"budget_{k}", coef, cap, x, exact=budget.step is not None)

    start = time.perf_counter()
    prob.solve(pulp.PULP_CBC_CMD(msg=False, options=["preprocess off"]))
    solve_time = time.perf_counter() - start
    status = pulp.LpStatus[prob.status]
    if status == "Infeasible":
        named = {b.group or b.name: b for b in rows}
        raise IlpInfeasible("the limits are feasible one at a time but not together ("
                            + ", ".join(f"{k} {b.describe(b.limit)}" for k, b in named.items()) + "); relax one of them")
    if status != "Optimal":
        raise IlpError(f"CBC ended with status {status} on a budget that the pre-check found feasible")

    bits = {}
    for g, group in enumerate(groups):
        values = [x[g][j].value() or 0.0 for j in range(len(choices))]
        chosen = [j for j, v in enumerate(values) if abs(v - 1) < 1e-6]
        if len(chosen) != 1 or any(abs(v) > 1e-6 for j, v in enumerate(values) if j != chosen[0]):
            raise IlpError(f"CBC returned non-binary widths {values} for layer {names[group[0]]}")
        for i in group:
            bits[names[i]] = choices[chosen[0]]
    bits = {n: bits[n] for n in names}
    over = [b for b in rows if not b.fits(b.total(bits))]
    if over:
        raise IlpError(f"CBC returned an allocation over its {over[0].name} budget "
                       f"({over[0].describe(over[0].total(bits))} > {over[0].describe(over[0].limit)})")
    size, bops = totals(layers, bits)
    objective = sum(layer["omega"][str(bits[layer["name"]])] for layer in layers)
    log.info("ILP: %d layers (%d groups), objective %.6g, size %s B, BOPS %d, %.3f s",
             len(layers), len(groups), objective, _fmt(size), bops, solve_time)
    return {
        "bits": bits,
        "objective": objective,
        "size_bytes": size,
        "bops": bops,
        "size_limit": size_cap,
        "size_lambda": size_lambda,
        "bops_limit": bops_cap,
        "bops_lambda": bops_lambda,
        "size_range": list(size_range),
        "bops_range": list(bops_range),
        "budgets": _reported(rows, bits),
        "bit_choices": choices,
        "pins": pins,
        "status": status,
    }


def _reported(rows: list[Budget], bits: dict[str, int]) -> dict:
    """The further budgets' limits and totals (a group's total is its largest row: the peak)."""
    out = {}
    for b in rows:
        if b.name in ("size", "BOPS") or b.name.startswith("float order"):
            continue
        key, total = b.group or b.name, b.total(bits)
        if key not in out or total > out[key]["total"]:
            out[key] = {"limit": b.limit, "lambda": b.lam, "total": total, "unit": b.unit}
            if b.group:
                out[key]["at"] = b.name.removeprefix(key + " at ")
    return out


def read_table(path: str | Path) -> dict:
    """A latency table written by `measure` (the ILP's `latency` budget), checked for its shape."""
    try:
        table = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found (run the latency stage, or `python -m tinym2net.latency` on the device)") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(table, dict) or not isinstance(table.get("layers"), dict) or table.get("unit") != "us":
        raise DataError(f"{path}: not a latency table (expected 'unit': 'us' and a 'layers' mapping)")
    return table


def pins(layers: list[dict], bits: int | None) -> dict[str, int]:
    """The first convolution of every branch and the output layer, pinned at `bits`."""
    if not bits:
        return {}
    names = [l["name"] for l in layers]
    firsts = {n for n in names if n.startswith("branches.") and ".features.conv1." in n}
    return {n: bits for n in [*sorted(firsts), names[-1]]}


def profile_budgets(sens: dict, bit_choices, profile) -> tuple[list[Budget], float | None]:
    """A device profile's limits on an allocation (params.yaml `profiles`): the Flash row, the peak-RAM rows and,
    if it has one, the BOPS limit (returned apart). Its MACs do not depend on the widths: an architecture over
    them is an error naming both."""
    macs = sum(l["macs"] for l in sens["layers"])
    if profile.macs is not None and macs > profile.macs:
        raise IlpInfeasible(f"the network has {macs} MACs, over the profile's {profile.macs}; bit widths cannot change "
                            f"that (choose the architecture with the scale stage: scale.profile)")
    rows = [flash_budget(sens, bit_choices, profile.flash_bytes)]
    rows += ram_budgets(sens, bit_choices, profile.ram_bytes, profile.activation_storage)
    return rows, profile.bops


def allocate(cfg, sens: dict, size_lambda: float | None = None, latency_table: dict | None = None,
             profile=None) -> dict:
    """Solve with params.yaml's `ilp` settings (`cfg`), optionally at another size lambda; with a latency
    limit, `latency_table` (the latency stage's) is budgeted too. With a device `profile` (params.yaml `profiles`)
    its Flash, peak-RAM and BOPS limits replace the size lambda (a `size_lambda` given here still applies)."""
    size = {"size_limit": cfg.size_limit, "size_lambda": cfg.size_lambda}
    if size_lambda is not None:
        size = {"size_limit": None, "size_lambda": size_lambda}
    elif profile is not None:
        size = {"size_limit": None, "size_lambda": None}
    if not cfg.tie_depthwise:
        sens = {**sens, "ties": []}
    limits = {**size, "bops_limit": cfg.bops_limit, "bops_lambda": cfg.bops_lambda,
              "pins": pins(sens["layers"], cfg.pin_bits)}
    if profile is not None:
        rows, bops = profile_budgets(sens, cfg.bit_choices, profile)
        if bops is not None:
            rows.append(Budget("device BOPS", "", bops_budget(sens["layers"], bops).cost, bops, step=1))
        limits["budgets"] = rows
    if needs_latency(cfg):
        if latency_table is None:
            raise ParamsError("params.yaml: ilp.latency_limit/latency_lambda need the latency stage's table")
        limits["budgets"] = limits.get("budgets", []) + latency_budgets(
            sens, cfg.bit_choices, latency_table, cfg.latency_limit, cfg.latency_lambda, **limits)
    return solve(sens, cfg.bit_choices, **limits)


def needs_latency(cfg) -> bool:
    return cfg.latency_limit is not None or cfg.latency_lambda is not None


def _pin(text: str) -> tuple[str, int]:
    name, sep, bits = text.rpartition("=")
    if not sep or not name or not bits.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=BITS, got {text!r}")
    return name, int(bits)


def cli(argv=None) -> argparse.Namespace:
    """Parse the command line of `python -m pipelines.ilp`."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.ilp", description=__doc__.splitlines()[0])
    parser.add_argument("--sensitivity", required=True, type=Path, help="per-layer sensitivity JSON")
    parser.add_argument("--out", required=True, type=Path, help="where to write the allocation JSON")
    for kind, unit, limit_help, lam_range in (
            ("size", "BYTES", "model size limit in bytes", "all-lowest (0) and all-highest (1) quantized bits"),
            ("bops", "N", "BOPS limit", "all-lowest (0) and all-highest (1) quantized bits"),
            ("latency", "US", "estimated batch-1 latency limit (us; needs --latency-table)",
             "the fastest (0) and the slowest (1) allocation")):
        group = parser.add_mutually_exclusive_group()
        group.add_argument(f"--{kind}-limit", type=float, metavar=unit, help=limit_help)
        group.add_argument(f"--{kind}-lambda", type=float, metavar="X", help=f"{kind} limit between {lam_range}")
    parser.add_argument("--flash-limit", type=float, metavar="BYTES",
                        help="the .tm2 file's size limit (needs the cost file's 'flash' and per-layer out_channels/bias)")
    parser.add_argument("--ram-limit", type=float, metavar="BYTES",
                        help="peak activation memory limit, one row per schedule step (needs the cost file's 'memory')")
    parser.add_argument("--activation-storage", choices=["packed", "int8"], default=None,
                        help="how the RAM limit counts b-bit activations (default: the cost file's)")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8],
                        help=f"bit-width choices (default: 4 8; {FLOAT_BITS}: leave a layer float)")
    parser.add_argument("--latency-table", type=Path, metavar="FILE",
                        help="per-layer latency table (python -m tinym2net.latency) for a latency limit")
    parser.add_argument("--pin", type=_pin, action="append", default=[], metavar="NAME=BITS",
                        help="fix a layer's width (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Solve the ILP for a sensitivity file and write the allocation; 0 on success, 1 with `error: ...`."""
    args = cli(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        try:
            sens = json.loads(args.sensitivity.read_text())
        except FileNotFoundError:
            raise DataError(f"{args.sensitivity}: not found (run the sensitivity stage first)") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{args.sensitivity}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        pins = dict(args.pin)
        if len(pins) != len(args.pin):
            raise ParamsError("a layer is pinned twice")
        limits = {"size_limit": args.size_limit, "size_lambda": args.size_lambda, "bops_limit": args.bops_limit,
                  "bops_lambda": args.bops_lambda, "pins": pins}
        budgets = []
        for value, flag in ((args.flash_limit, "--flash-limit"), (args.ram_limit, "--ram-limit")):
            if value is not None and not value >= 0:
                raise ParamsError(f"{flag} must be a number of bytes >= 0 (got {value!r})")
        if args.flash_limit is not None:
            budgets.append(flash_budget(sens, args.bits, args.flash_limit))
        if args.ram_limit is not None:
            budgets += ram_budgets(sens, args.bits, args.ram_limit, args.activation_storage)
        if budgets:
            limits["budgets"] = budgets
        if args.latency_limit is not None or args.latency_lambda is not None:
            if args.latency_table is None:
                raise ParamsError("a latency limit needs --latency-table")
            limits["budgets"] = budgets + latency_budgets(sens, args.bits, read_table(args.latency_table), args.latency_limit,
                                                args.latency_lambda, **limits)
        result = solve(sens, args.bits, **limits)
        write_json(args.out, result)
    except TinyM2NetError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    log.info("ILP allocation -> %s", args.out)
    return 0
