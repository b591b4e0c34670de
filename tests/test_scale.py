"""The scale MILP against brute force: every (candidate, width) combination of a small grid evaluated by the cost
model of the network it builds (not by the MILP's decomposition of it), including instances where the peak-RAM
limit decides; an infeasible profile names the smallest feasible value of each limit."""
import itertools

import pytest

from tinym2net import cost, scale
from tinym2net.model import build
from tinym2net.params import Profile

TRAIN = {"branches": {"a": {"padding": "valid", "layers": [["conv", 4, 3], ["sepconv", 6, 3], ["maxpool", 2]], "dense": 4},
                      "b": {"padding": "same", "layers": [["conv", 3, 3], ["maxpool", 2]], "dense": 4}},
         "head": [], "dropout": 0.0}
SHAPES = {"a": (1, 12, 10), "b": (2, 8, 8)}
WIDTHS = [4, 8]


@pytest.fixture(scope="module")
def world():
    """The MILP's instance and, for every combination, the brute-force figures and objective."""
    options = {m: scale.candidates(TRAIN["branches"][m], "dscnn", {}, {"width": [0.5, 1.0]}) for m in SHAPES}
    inst = scale.Instance(TRAIN, SHAPES, 3, options, WIDTHS)
    caps = {m: max(sum(l.params for l in inst.branch_layers(c)) for c in inst.cands[m]) for m in SHAPES}
    rows = []
    for pick in itertools.product(*(range(len(options[m])) for m in SHAPES)):
        chosen = dict(zip(SHAPES, pick))
        model = build({**TRAIN, "branches": {m: options[m][i][1] for m, i in chosen.items()}}, SHAPES, 3).eval()
        costs = cost.analyse(model, SHAPES)
        names = costs.names
        groups = [[l for l in costs.layers if l.name.startswith(f"branches.{m}.")] for m in SHAPES]
        groups.append([l for l in costs.layers if not l.name.startswith("branches.")])
        gain = sum(sum(l.params for l in g) / caps[m] for g, m in zip(groups, SHAPES))
        for combo in itertools.product(WIDTHS, repeat=len(names)):
            bits = dict(zip(names, combo))
            loss = sum(l.params / sum(k.params for k in g) * 4.0 ** -(bits[l.name] - 4) for g in groups for l in g)
            rows.append({"chosen": chosen, "bits": bits, "objective": gain - loss,
                         "flash": costs.payload_bytes(bits) + inst.header, "ram": costs.peak_ram_bytes(bits),
                         "macs": costs.macs(), "bops": costs.bops(bits)})
    return inst, rows


def best(rows, profile):
    fits = [r for r in rows if r["flash"] <= profile.flash_bytes and r["ram"] <= profile.ram_bytes
            and (profile.macs is None or r["macs"] <= profile.macs)]
    return max(fits, key=lambda r: r["objective"]) if fits else None


def test_optimum_equals_brute_force_and_the_ram_limit_binds(world):
    inst, rows = world
    flash = sorted({r["flash"] for r in rows})
    ram = sorted({r["ram"] for r in rows})
    macs = sorted({r["macs"] for r in rows})
    binding = 0
    for f, q, m in [(1.0, 0.3, None), (0.6, 0.5, None), (1.0, 0.1, None), (0.4, 0.9, 2), (1.0, 0.6, 1)]:
        profile = Profile(flash_bytes=flash[int(f * (len(flash) - 1))], ram_bytes=ram[int(q * (len(ram) - 1))],
                          macs=None if m is None else macs[m])
        want = best(rows, profile)
        got = scale.choose(inst, profile)
        assert got["objective"] == pytest.approx(want["objective"], abs=1e-6)
        match = [r for r in rows if r["chosen"] == got["chosen"] and r["bits"] == got["bits"]]
        assert match and match[0]["ram"] <= profile.ram_bytes and match[0]["flash"] <= profile.flash_bytes
        loose = best(rows, Profile(flash_bytes=profile.flash_bytes, ram_bytes=10 ** 9, macs=profile.macs))
        binding += loose["objective"] > want["objective"] + 1e-9
    assert binding >= 2  # the RAM limit changed the optimum


def test_infeasible_profile_names_the_smallest_feasible_limits(world):
    inst, rows = world
    least = {k: min(r[k] for r in rows) for k in ("flash", "ram", "macs")}
    profile = Profile(flash_bytes=least["flash"] - 1, ram_bytes=least["ram"] - 1, macs=least["macs"])
    with pytest.raises(scale.ScaleInfeasible, match=rf"Flash {least['flash'] - 1} B \(smallest feasible {least['flash']}\), "
                                                    rf"RAM {least['ram'] - 1} B \(smallest feasible {least['ram']}\), "
                                                    rf"MACs {least['macs']} \(smallest feasible {least['macs']}\)"):
        scale.choose(inst, profile)


def test_candidates_scale_the_paper_branch():
    (point, spec), = scale.candidates(TRAIN["branches"]["a"], "dscnn", {}, {"width": [0.5]})
    assert point == {"width": 0.5} and spec["layers"] == [["conv", 2, 3], ["sepconv", 3, 3], ["maxpool", 2]]
    assert spec["type"] == "dscnn"  # train logs and validates each branch's type
    specs = scale.candidates({}, "phinet", {"num_layers": 5, "dense": 8}, {"alpha": [0.25, 0.5], "t0": [4, 6]})
    assert [s for _, s in specs][-1] == {"type": "phinet", "num_layers": 5, "dense": 8, "alpha": 0.5, "t0": 6}
    assert len(specs) == 4
