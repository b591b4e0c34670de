"""The latency table (each layer alone, measured in LiteRT) as an ILP budget beside size, with FP32 (32) as a
width: the limit binds, the solution is feasible, and brute force over every allocation agrees."""
import itertools
import json
import random

import numpy as np
import pytest
import torch

from tinym2net import ilp, latency, tm2
from tinym2net.errors import DataError, ParamsError
from tinym2net.export import to_artifact
from tinym2net.model import build

CFG = {"branches": {"a": {"padding": "same", "layers": [["conv", 8, 3], ["sepconv", 16, 3], ["maxpool", 2]], "dense": 8},
                    "b": {"padding": "valid", "layers": [["conv", 8, 3], ["maxpool", 2]], "dense": 6}},
       "head": [8], "dropout": 0.0}
SHAPES = {"a": (3, 24, 24), "b": (1, 30, 10)}
CHOICES = [4, 8, 32]


@pytest.fixture(scope="module")
def measured():
    """A small two-branch network's fp32 artifact and its latency table, measured here."""
    torch.manual_seed(0)
    model = build(CFG, SHAPES, 3).eval()
    header, tensors = to_artifact(model, {"case": "t", "variant": "fp32", "classes": ["x", "y", "z"],
                                          "input_shapes": SHAPES, "bits": None})
    artifact = tm2.Artifact(header, {k: np.asarray(v) for k, (v, _) in tensors.items()})
    names = [n["name"] for n in header["nodes"] if n["op"] in ("conv", "linear")]
    check = {"all8": dict.fromkeys(names, 8), "float_convs": {n: 32 if ".dw" in n or "conv1" in n else 8 for n in names}}
    table = latency.measure(artifact, CHOICES, rounds=5, calls=5, check=check)
    return model, names, table


def sensitivity(model, names, seed):
    """Per-layer params and MACs of the model, with random Omegas decreasing in the width (0 at 32)."""
    rng = random.Random(seed)
    layers = {n: m for n, m in model.named_modules() if n in names}
    out = []
    for n in names:
        trace = rng.lognormvariate(0, 1.5)
        out.append({"name": n, "params": layers[n].weight.numel(), "macs": layers[n].weight.numel() * rng.randint(1, 50),
                    "omega": {"4": trace * rng.uniform(0.5, 2), "8": trace * rng.uniform(0.001, 0.01)}})
    return {"layers": out, "ties": []}


def test_table_has_every_layer_at_every_width(measured):
    _, names, table = measured
    assert list(table["layers"]) == names and table["unit"] == "us" and table["backend"] == "litert"
    for n in names:
        assert set(table["layers"][n]) == {"4", "8", "32"} and all(v > 0 for v in table["layers"][n].values())
    assert set(table["check"]) == {"all8", "float_convs"}  # whole networks measured beside the estimate
    assert all(c["measured"] > 0 and c["estimated"] > 0 for c in table["check"].values())


def brute_force(sens, cost, constant, limit, size_cap, producers=None):
    """The best objective over every allocation within the latency and size limits (None if none fits); with
    `producers`, only allocations where every float layer reads float layers."""
    layers = sens["layers"]
    index = {l["name"]: i for i, l in enumerate(layers)}
    best = None
    for combo in itertools.product(CHOICES, repeat=len(layers)):
        lat = constant + sum(cost[l["name"]][b] for l, b in zip(layers, combo))
        size = sum(l["params"] * b / 8 for l, b in zip(layers, combo))
        ordered = all(combo[index[c]] != 32 or combo[index[p]] == 32 for c, ps in (producers or {}).items() for p in ps)
        if lat <= limit + 1e-9 and size <= size_cap + 1e-9 and ordered:
            obj = sum(l["omega"].get(str(b), 0.0) for l, b in zip(layers, combo))
            best = obj if best is None or obj < best else best
    return best


@pytest.mark.parametrize("seed", range(6))
def test_latency_limit_binds_and_matches_brute_force(measured, seed):
    model, names, table = measured
    sens = sensitivity(model, names, seed)
    free = ilp.solve(sens, CHOICES, size_lambda=1.0)           # size only: the all-8 size, FP32 where it fits
    # The limit halfway between the fastest allocation and the size-only optimum's estimate, so it binds
    # whatever the measured timings are (a fixed lambda binds or not by the machine's load).
    fastest, slowest = ilp.latency_budget(table, names, CHOICES, lam=0.0).span
    free_total = ilp.latency_budget(table, names, CHOICES, lam=0.0).total(free["bits"])
    assert free_total > fastest                                  # the size-only optimum is not the fastest one
    lam = 0.5 * (free_total - fastest) / (slowest - fastest)
    budget = ilp.latency_budget(table, names, CHOICES, lam=lam)
    assert budget.limit == pytest.approx(fastest + lam * (slowest - fastest))
    result = ilp.solve(sens, CHOICES, size_lambda=1.0, budgets=[budget])
    estimate = result["budgets"]["latency"]["total"]
    assert estimate <= budget.limit + 1e-9                      # feasible
    assert budget.total(free["bits"]) > budget.limit            # binding: the size-only optimum is too slow
    assert result["objective"] > free["objective"]
    best = brute_force(sens, budget.cost, budget.constant, budget.limit, result["size_limit"])
    assert result["objective"] == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_float_layers_stay_in_front_of_int8_ones(measured, seed):
    model, names, table = measured
    sens = sensitivity(model, names, seed)
    producers = table["producers"]
    assert producers[names[0]] == [] and any(len(p) == 2 for p in producers.values())  # an input; the concat
    budget = ilp.latency_budget(table, names, CHOICES, lam=0.3)
    order = ilp.float_order_budgets(producers, names, CHOICES)
    result = ilp.solve(sens, CHOICES, size_lambda=1.0, budgets=[budget, *order])
    bits = result["bits"]
    assert all(bits[p] == 32 for c, ps in producers.items() if bits[c] == 32 for p in ps)
    best = brute_force(sens, budget.cost, budget.constant, budget.limit, result["size_limit"], producers)
    assert result["objective"] == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert not any(name.startswith("float order") for name in result["budgets"])
    # lambda 0 is the fastest allocation the size limit and the order allow: feasible, and it binds exactly
    rows = ilp.latency_budgets(sens, CHOICES, table, lam=0.0, size_lambda=1.0)
    fastest = ilp.solve(sens, CHOICES, size_lambda=1.0, budgets=rows)
    assert fastest["budgets"]["latency"]["total"] == pytest.approx(rows[-1].limit, abs=1e-6)


def test_float_width_has_no_error_and_lambdas_span_the_quantized_widths():
    sens = {"layers": [{"name": "a", "params": 80, "macs": 10, "omega": {"4": 3.0, "8": 1.0}},
                       {"name": "b", "params": 800, "macs": 10, "omega": {"4": 2.0, "8": 0.5}}], "ties": []}
    # no limits: every layer float (Omega 0 at 32, filled in when the file has no entry)
    assert set(ilp.solve(sens, CHOICES)["bits"].values()) == {32}
    # lambda 1 = the all-8 size (880 B), not the all-float one: only the small layer can stay float (320 + 800)
    result = ilp.solve(sens, CHOICES, size_lambda=1.0)
    assert result["size_limit"] == 880 and result["bits"] == {"a": 8, "b": 8}
    assert ilp.solve(sens, CHOICES, size_limit=1120)["bits"] == {"a": 32, "b": 8}


def test_latency_infeasible_and_bad_tables_are_named(measured):
    model, names, table = measured
    sens = sensitivity(model, names, 0)
    fastest = ilp.latency_budget(table, names, CHOICES, lam=0).span[0]
    budget = ilp.latency_budget(table, names, CHOICES, limit=0.9 * fastest)
    with pytest.raises(ilp.IlpInfeasible, match=r"latency limit .* us is infeasible .* smallest feasible latency is"):
        ilp.solve(sens, CHOICES, budgets=[budget])
    broken = {**table, "layers": {k: v for k, v in table["layers"].items() if k != names[2]}}
    with pytest.raises(DataError, match=f"latency table: layer {names[2]} has no latency at 4 bits"):
        ilp.latency_budget(broken, names, CHOICES, lam=0.5)
    with pytest.raises(ParamsError, match="needs a latency limit"):
        ilp.latency_budget(table, names, CHOICES)


def test_cli_takes_a_latency_table(measured, tmp_path):
    model, names, table = measured
    (tmp_path / "sens.json").write_text(json.dumps(sensitivity(model, names, 1)))
    (tmp_path / "lat.json").write_text(json.dumps(table))
    out = tmp_path / "bits.json"
    assert ilp.main(["--sensitivity", str(tmp_path / "sens.json"), "--out", str(out), "--bits", "4", "8", "32",
                     "--size-lambda", "1", "--latency-table", str(tmp_path / "lat.json"), "--latency-lambda", "0.15"]) == 0
    written = json.loads(out.read_text())
    assert written["budgets"]["latency"]["total"] <= written["budgets"]["latency"]["limit"]
    assert ilp.main(["--sensitivity", str(tmp_path / "sens.json"), "--out", str(out), "--latency-limit", "5"]) == 1
