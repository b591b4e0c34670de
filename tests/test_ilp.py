"""Bit allocation ILP: optimal against brute force, honours ties/pins/limits, explains infeasibility, CLI."""
import itertools
import json
import random

import numpy as np
import pytest

from tinym2net import ilp
from tinym2net.errors import DataError, ParamsError
from tinym2net.ilp import IlpInfeasible, solve


def random_instance(rng: random.Random, n: int, choices: list[int]) -> dict:
    """n layers with random sizes and sensitivities, plus a few random ties."""
    layers = []
    for i in range(n):
        params = rng.randint(1, 5000)
        omega = {str(b): rng.uniform(0, 10) * 2.0 ** -b for b in choices}  # lower bits hurt more, usually
        layers.append({"name": f"l{i}", "params": params, "macs": params * rng.randint(1, 400), "omega": omega})
    names = [layer["name"] for layer in layers]
    ties = [rng.sample(names, 2) for _ in range(rng.randint(0, n // 3))] if n > 1 else []
    return {"layers": layers, "ties": ties}


def brute_force(sens: dict, choices, size_cap, bops_cap, pins):
    """Enumerate every per-layer assignment: (best objective or None, min size and BOPS under ties/pins)."""
    layers = sens["layers"]
    index = {layer["name"]: i for i, layer in enumerate(layers)}
    combos = np.array(list(itertools.product(range(len(choices)), repeat=len(layers))), dtype=np.int64)  # (K, n)
    bits = np.array(choices)[combos]                                                                   # (K, n)
    ok = np.ones(len(combos), dtype=bool)
    for a, b in sens["ties"]:
        ok &= bits[:, index[a]] == bits[:, index[b]]
    for name, b in pins.items():
        ok &= bits[:, index[name]] == b
    params = np.array([layer["params"] for layer in layers])
    macs = np.array([layer["macs"] for layer in layers])
    omega = np.array([[layer["omega"][str(b)] for b in choices] for layer in layers])  # (n, C)
    size = (bits * params).sum(1) / 8
    bops = (bits ** 2 * macs).sum(1)
    obj = omega[np.arange(len(layers)), combos].sum(1)
    min_size, min_bops = size[ok].min(), bops[ok].min()
    if size_cap is not None:
        ok &= size <= size_cap + 1e-9
    if bops_cap is not None:
        ok &= bops <= bops_cap + 1e-9
    best = obj[ok].min() if ok.any() else None
    return best, min_size, min_bops


def check_solution(result, sens, choices, pins):
    bits = result["bits"]
    assert list(bits) == [layer["name"] for layer in sens["layers"]]
    assert set(bits.values()) <= set(choices)
    for a, b in sens["ties"]:
        assert bits[a] == bits[b]
    for name, b in pins.items():
        assert bits[name] == b
    size, bops = ilp.totals(sens["layers"], bits)
    assert result["size_bytes"] == size and result["bops"] == bops
    if result["size_limit"] is not None:
        assert size <= result["size_limit"] + 1e-9
    if result["bops_limit"] is not None:
        assert bops <= result["bops_limit"] + 1e-9
    assert result["objective"] == pytest.approx(sum(l["omega"][str(bits[l["name"]])] for l in sens["layers"]))


@pytest.mark.parametrize("choices", [[4, 8], [2, 4, 8]])
def test_matches_brute_force_on_random_instances(choices):
    rng = random.Random(1234 + len(choices))
    solved = infeasible = 0
    for trial in range(40):
        n = rng.randint(1, 12 if len(choices) == 2 else 10) if trial else 12 - 2 * (len(choices) == 3)
        sens = random_instance(rng, n, choices)
        names = [layer["name"] for layer in sens["layers"]]
        pins = {names[0]: max(choices), names[-1]: max(choices)} if rng.random() < 0.4 else {}
        kwargs = {}
        mode = trial % 4  # lambdas, absolute limits, size only, BOPS only
        if mode in (0, 2):
            kwargs["size_lambda"] = rng.uniform(0.1, 1)
        if mode in (0, 3):
            kwargs["bops_lambda"] = rng.uniform(0.1, 1)
        if mode == 1:
            lo = sum(layer["params"] for layer in sens["layers"]) * min(choices) / 8
            kwargs["size_limit"] = round(lo * rng.uniform(1, 2), 1)
            kwargs["bops_limit"] = rng.randint(0, sum(layer["macs"] for layer in sens["layers"]) * max(choices) ** 2)
        try:
            result = solve(sens, choices, pins=pins, **kwargs)
        except IlpInfeasible as exc:
            size_cap, bops_cap = _caps(sens, choices, kwargs)
            best, min_size, min_bops = brute_force(sens, choices, size_cap, bops_cap, pins)
            assert best is None, f"trial {trial}: ILP says infeasible, brute force found {best}"
            size_short = size_cap is not None and min_size > size_cap + 1e-9
            bops_short = bops_cap is not None and min_bops > bops_cap + 1e-9
            assert size_short or bops_short
            size_text = f"{min_size:.3f}".rstrip("0").rstrip(".")
            assert (f"smallest feasible size is {size_text} B" in str(exc)) == size_short
            assert (f"smallest feasible BOPS is {min_bops}" in str(exc)) == bops_short
            infeasible += 1
            continue
        best, _, _ = brute_force(sens, choices, result["size_limit"], result["bops_limit"], pins)
        assert best is not None
        check_solution(result, sens, choices, pins)
        assert result["objective"] == pytest.approx(best, rel=1e-9, abs=1e-12), f"trial {trial}: not optimal"
        assert result["status"] == "Optimal"
        solved += 1
    assert solved >= 25 and infeasible >= 1, (solved, infeasible)  # both paths exercised


def test_cbc_preprocessing_bug_instance():
    """CBC 2.10.3's default preprocessing calls a(4)+b(2) optimal here; the optimum is a(2)+b(4)."""
    sens = {"layers": [
        {"name": "a", "params": 2390, "macs": 141010, "omega": {"2": 0.68390, "4": 0.028582, "8": 0.0014586}},
        {"name": "b", "params": 2406, "macs": 310374, "omega": {"2": 1.90616, "4": 0.40505, "8": 0.017899}},
    ], "ties": []}
    result = solve(sens, [2, 4, 8], size_limit=2017, bops_limit=26_724_703)
    assert result["bits"] == {"a": 2, "b": 4}


def cnn_like_instance(n: int, seed: int) -> dict:
    """Large, CNN-like coefficients (params up to 2e5, BOPS terms up to 2.6e10); dw/pw-style ties."""
    rng = random.Random(seed)
    layers = []
    for i in range(n):
        params, trace = rng.randint(9, 200_000), rng.lognormvariate(-4, 2)
        omega = {str(b): trace * params * rng.uniform(0.5, 2) * 4.0 ** -b for b in (4, 8)}
        layers.append({"name": f"l{i}", "params": params, "macs": params * rng.randint(1, 2000), "omega": omega})
    return {"layers": layers, "ties": [[f"l{i}", f"l{i + 1}"] for i in range(1, n - 1, 3)]}


@pytest.mark.parametrize("seed", [93, 116, 136])
def test_optimal_to_the_last_digit_on_large_instances(seed):
    # Near-ties 1e-5 apart in objective: CBC's absolute tolerances pruned the better one before the
    # objective was scaled up.
    rng = random.Random(seed)
    sens = cnn_like_instance(16, seed)
    result = solve(sens, [4, 8], size_lambda=rng.uniform(0.1, 0.9), bops_lambda=rng.uniform(0.1, 0.9))
    best, _, _ = brute_force(sens, [4, 8], result["size_limit"], result["bops_limit"], {})
    assert result["objective"] == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_large_coefficients_give_binary_in_budget_allocations(seed):
    # Unscaled, these rows made CBC's final clean-up return widths like -1.8 and 2.8 ("Optimal").
    rng = random.Random(seed)
    sens = cnn_like_instance(40, seed)
    pins = {"l0": 8, "l39": 8} if seed % 3 == 0 else {}
    result = solve(sens, [4, 8], size_lambda=rng.uniform(0.1, 0.9), bops_lambda=rng.uniform(0.1, 0.9), pins=pins)
    check_solution(result, sens, [4, 8], pins)
    # No single width change of an untied, unpinned layer improves the objective within budget.
    tied = {name for tie in sens["ties"] for name in tie} | set(pins)
    for layer in sens["layers"]:
        if layer["name"] in tied or result["bits"][layer["name"]] == 8:
            continue
        bits = dict(result["bits"], **{layer["name"]: 8})
        size, bops = ilp.totals(sens["layers"], bits)
        assert size > result["size_limit"] or bops > result["bops_limit"]


def _caps(sens, choices, kwargs):
    """The absolute limits that `kwargs` (lambdas or absolute values) stand for."""
    lo = {b: ilp.totals(sens["layers"], {l["name"]: b for l in sens["layers"]}) for b in choices}
    lo_s, lo_b = lo[min(choices)]
    hi_s, hi_b = lo[max(choices)]
    size = kwargs.get("size_limit", lo_s + kwargs["size_lambda"] * (hi_s - lo_s) if "size_lambda" in kwargs else None)
    bops = kwargs.get("bops_limit", lo_b + kwargs["bops_lambda"] * (hi_b - lo_b) if "bops_lambda" in kwargs else None)
    return size, bops


def small():
    """Three layers: a and b would each prefer a different width, but are tied."""
    return {"layers": [
        {"name": "a", "params": 100, "macs": 1000, "omega": {"4": 5.0, "8": 1.0}},
        {"name": "b", "params": 100, "macs": 1000, "omega": {"4": 1.0, "8": 0.9}},
        {"name": "c", "params": 300, "macs": 100, "omega": {"4": 2.0, "8": 0.0}},
    ], "ties": [["a", "b"]]}


def test_ties_pins_and_limits_decide_the_allocation():
    sens = small()
    # Unlimited: everything at 8 bits.
    assert solve(sens)["bits"] == {"a": 8, "b": 8, "c": 8}
    # 360 B: a+b at 8 (200 B) + c at 4 (150 B) costs 1.9 + 2.0; c at 8 (300 B) does not fit beside a+b at 4
    # (100 B); untied, a at 8 + b at 4 + c at 8 would fit but the tie forbids it.
    result = solve(sens, size_limit=360)
    assert result["bits"] == {"a": 8, "b": 8, "c": 4} and result["objective"] == pytest.approx(3.9)
    assert result["size_bytes"] == 350 and result["bops"] == 2000 * 64 + 100 * 16
    # Pin c to 8: a and b must drop to 4 together.
    result = solve(sens, size_limit=400, pins={"c": 8})
    assert result["bits"] == {"a": 4, "b": 4, "c": 8} and result["objective"] == pytest.approx(6.0)
    # BOPS: a+b at 8 cost 2000*64 = 128000 alone, over a 100000 budget.
    assert solve(sens, bops_limit=100_000)["bits"] == {"a": 4, "b": 4, "c": 8}
    # Lambda 0 means all-lowest, lambda 1 all-highest.
    assert set(solve(sens, size_lambda=0)["bits"].values()) == {4}
    result = solve(sens, size_lambda=1, bops_lambda=1)
    assert result["size_limit"] == 500 and result["bops_limit"] == 2100 * 64 and set(result["bits"].values()) == {8}


def test_three_choices_use_the_middle_width():
    sens = {"layers": [{"name": "x", "params": 80, "macs": 10, "omega": {"2": 9.0, "4": 1.0, "8": 0.0}}], "ties": []}
    assert solve(sens, [2, 4, 8], size_limit=40)["bits"] == {"x": 4}
    assert solve(sens, [8, 2, 4], size_limit=79)["bits"] == {"x": 4}  # order of choices is irrelevant


def test_infeasible_budget_names_the_smallest_feasible_limit():
    sens = small()
    pins = {"a": 8}  # ties b to 8 as well: smallest size = 200 + 300*4/8 = 350 B
    with pytest.raises(IlpInfeasible, match=r"size limit 349 B is infeasible .* smallest feasible size is 350 B$"):
        solve(sens, size_limit=349, pins=pins)
    assert solve(sens, size_limit=350, pins=pins)["bits"] == {"a": 8, "b": 8, "c": 4}
    # BOPS: 2000 * 64 + 100 * 16 = 129600
    with pytest.raises(IlpInfeasible, match=r"smallest feasible BOPS is 129600$"):
        solve(sens, bops_lambda=0, pins=pins)
    with pytest.raises(IlpInfeasible, match=r"size limit 250 B \(lambda 0; smallest feasible lambda 0.4\)"):
        solve(sens, size_lambda=0, pins=pins)
    with pytest.raises(IlpInfeasible) as exc:
        solve(sens, size_limit=1, bops_limit=1, pins=pins)
    assert "350 B" in str(exc.value) and "129600" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kwargs, error, text", [
    ({"pins": {"nope": 8}}, ParamsError, "'nope'"),
    ({"pins": {"a": 6}}, ParamsError, "6 is not one of the bit choices"),
    ({"pins": {"a": 8, "b": 4}}, ParamsError, "pinned to different widths"),
    ({"size_limit": 100, "size_lambda": 0.5}, ParamsError, "not both"),
    ({"bops_lambda": 1.5}, ParamsError, "BOPS lambda must be a number in [0, 1]"),
    ({"bit_choices": [4, 4]}, ParamsError, "distinct"),
    ({"bit_choices": [2, 4]}, DataError, "layer a has no omega for 2 bits"),
])
def test_bad_arguments_are_named(kwargs, error, text):
    with pytest.raises(error) as exc:
        solve(small(), **kwargs)
    assert text in str(exc.value)


def test_bad_sensitivity_is_named():
    sens = small()
    sens["ties"].append(["a", "zz"])
    with pytest.raises(DataError, match="'zz'"):
        solve(sens)
    sens = small()
    sens["layers"][1]["params"] = -3
    with pytest.raises(DataError, match="layer b: 'params'"):
        solve(sens)


def test_deterministic():
    sens = random_instance(random.Random(7), 12, [4, 8])
    first, second = (solve(sens, size_lambda=0.4, bops_lambda=0.6) for _ in range(2))
    assert first["bits"] == second["bits"] and first["objective"] == second["objective"]


def test_cli_round_trip(tmp_path, capsys):
    sens_file, out = tmp_path / "sensitivity.json", tmp_path / "out" / "bits.json"
    sens_file.write_text(json.dumps(small()))
    assert ilp.main(["--sensitivity", str(sens_file), "--out", str(out), "--size-limit", "400",
                     "--bops-lambda", "1", "--bits", "4", "8", "--pin", "c=8"]) == 0
    written = json.loads(out.read_text())
    expected = solve(small(), [4, 8], size_limit=400, bops_lambda=1, pins={"c": 8})
    assert written["bits"] == expected["bits"] == {"a": 4, "b": 4, "c": 8}
    assert written["size_limit"] == 400 and written["bops_limit"] == 2100 * 64 and written["pins"] == {"c": 8}
    assert [p.name for p in out.parent.iterdir()] == ["bits.json"]  # atomic: no temporary left behind

    # Errors: one line on stderr, exit code 1, no output written.
    bad = tmp_path / "bad.json"
    assert ilp.main(["--sensitivity", str(sens_file), "--out", str(bad), "--size-limit", "10"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: size limit 10 B is infeasible") and not bad.exists()
    assert ilp.main(["--sensitivity", str(tmp_path / "missing.json"), "--out", str(bad)]) == 1
    assert "missing.json: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: limit and lambda together
        ilp.cli(["--sensitivity", "s", "--out", "o", "--size-limit", "1", "--size-lambda", "0.5"])
    assert ilp.cli(["--sensitivity", "s", "--out", "o", "--pin", "a.b=4", "--pin", "c=8"]).pin == [("a.b", 4), ("c", 8)]


def test_extra_linear_budgets_match_brute_force():
    """A non-monotone per-layer cost (e.g. latency, where a wider kernel can be faster) as a further Budget."""
    rng = random.Random(99)
    binding = 0
    for trial in range(30):
        choices = [4, 8] if trial % 2 else [2, 4, 8]
        sens = random_instance(rng, rng.randint(2, 8), choices)
        sens["ties"] = []
        names = [l["name"] for l in sens["layers"]]
        cost = {n: {b: rng.uniform(1, 100) for b in choices} for n in names}
        combos = list(itertools.product(choices, repeat=len(names)))
        totals_ = sorted(sum(cost[n][b] for n, b in zip(names, c)) for c in combos)
        limit = totals_[len(totals_) // 3] + 0.5
        budget = ilp.Budget("latency", "us", cost, limit, constant=3.0)
        try:
            result = solve(sens, choices, budgets=[budget])
        except IlpInfeasible:
            pytest.fail("a third of the allocations fit the limit")
        feasible = [c for c in combos if 3.0 + sum(cost[n][b] for n, b in zip(names, c)) <= limit]
        best = min(sum(l["omega"][str(b)] for l, b in zip(sens["layers"], c)) for c in feasible)
        assert result["objective"] == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert result["budgets"]["latency"]["total"] <= limit
        unconstrained = solve(sens, choices)["objective"]
        binding += result["objective"] > unconstrained + 1e-12
    assert binding >= 5


def test_extra_budget_infeasibility_is_named():
    sens = small()
    cost = {"a": {4: 5.0, 8: 1.0}, "b": {4: 5.0, 8: 1.0}, "c": {4: 2.0, 8: 2.0}}
    with pytest.raises(IlpInfeasible, match=r"latency limit 3 us is infeasible .* smallest feasible latency is 4 us$"):
        solve(sens, budgets=[ilp.Budget("latency", "us", cost, 3.0)])
    # each limit alone is feasible (latency wants a, b at 8; size 300 B wants them at 4), together not
    with pytest.raises(IlpInfeasible, match="not together"):
        solve(sens, size_limit=300, budgets=[ilp.Budget("latency", "us", cost, 4.5)])


TINY = {"branches": {"a": {"padding": "valid", "layers": [["conv", 4, 3], ["sepconv", 6, 3], ["maxpool", 2]], "dense": 4},
                     "b": {"padding": "same", "layers": [["conv", 3, 3], ["maxpool", 2]], "dense": 4}},
        "head": [], "dropout": 0.0}
TINY_SHAPES = {"a": (1, 12, 10), "b": (2, 8, 8)}


def tiny_cost_file(seed: int):
    """A real two-branch network's cost file (cost.py: schedule, counts, header) with random sensitivities."""
    import torch

    from tinym2net import cost
    from tinym2net.model import build

    torch.manual_seed(seed)
    costs = cost.analyse(build(TINY, TINY_SHAPES, 3).eval(), TINY_SHAPES)
    rng = random.Random(seed)
    layers = [{**l, "omega": {str(b): rng.uniform(0, 10) * 2.0 ** -b for b in (4, 8)}} for l in costs.layer_table()]
    sens = {"layers": layers, "ties": [], "flash": {"header_bytes": costs.header_bytes(8), "header_slack": cost.HEADER_SLACK}, "memory": costs.memory_schedule()}
    return sens, costs


def test_ram_and_flash_limits_match_brute_force():
    """Peak RAM over the schedule (one row per step) and the .tm2 Flash limit against every allocation evaluated
    by the cost model itself; the RAM limit binds in some trials."""
    from tinym2net import cost

    choices, binding = [4, 8, 32], 0
    for seed in range(4):
        sens, costs = tiny_cost_file(seed)
        names = [l["name"] for l in sens["layers"]]
        combos = [dict(zip(names, c)) for c in itertools.product(choices, repeat=len(names))]
        ram = [costs.peak_ram_bytes(bits) for bits in combos]
        flash = [costs.payload_bytes(bits) + sens["flash"]["header_bytes"] + cost.HEADER_SLACK for bits in combos]
        obj = [sum(l["omega"].get(str(bits[l["name"]]), 0.0) for l in sens["layers"]) for bits in combos]
        ram_limit, flash_limit = sorted(ram)[len(ram) // 4], sorted(flash)[len(flash) // 2]
        result = solve(sens, choices, budgets=ilp.ram_budgets(sens, choices, ram_limit)
                       + [ilp.flash_budget(sens, choices, flash_limit)])
        best = min(o for o, r, f in zip(obj, ram, flash) if r <= ram_limit and f <= flash_limit)
        assert result["objective"] == pytest.approx(best, abs=1e-12)
        assert costs.peak_ram_bytes(result["bits"]) <= ram_limit
        assert result["budgets"]["RAM"]["total"] == costs.peak_ram_bytes(result["bits"])
        flash_only = solve(sens, choices, budgets=[ilp.flash_budget(sens, choices, flash_limit)])["objective"]
        binding += result["objective"] > flash_only + 1e-12
    assert binding >= 1


def test_ram_limit_infeasibility_names_the_smallest_peak():
    sens, costs = tiny_cost_file(0)
    least = costs.peak_ram_bytes(4)  # every buffer at the lowest width
    with pytest.raises(IlpInfeasible, match=rf"RAM limit {least - 1} B is infeasible .*the smallest feasible RAM is "
                                            rf"{least} B \(at .+\)$"):
        solve(sens, [4, 8], budgets=ilp.ram_budgets(sens, [4, 8], least - 1))
    assert costs.peak_ram_bytes(solve(sens, [4, 8], budgets=ilp.ram_budgets(sens, [4, 8], least))["bits"]) == least


def test_cli_ram_and_flash_limits(tmp_path, capsys):
    sens, costs = tiny_cost_file(1)
    (tmp_path / "s.json").write_text(json.dumps(sens))
    out = tmp_path / "bits.json"
    assert ilp.main(["--sensitivity", str(tmp_path / "s.json"), "--out", str(out), "--bits", "4", "8",
                     "--ram-limit", "100"]) == 1
    assert f"smallest feasible RAM is {costs.peak_ram_bytes(4)} B" in capsys.readouterr().err
    limit = costs.peak_ram_bytes(8) - 1
    assert ilp.main(["--sensitivity", str(tmp_path / "s.json"), "--out", str(out), "--bits", "4", "8",
                     "--ram-limit", str(limit), "--flash-limit", "100000"]) == 0
    result = json.loads(out.read_text())
    assert costs.peak_ram_bytes(result["bits"]) <= limit < costs.peak_ram_bytes(8)
