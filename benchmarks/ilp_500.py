"""Solve time of the bit-allocation ILP on a random 500-layer instance, against a 2 s target.

Run: .venv/bin/python benchmarks/ilp_500.py [--layers 500] [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import time

from tinym2net.ilp import solve

TARGET_S = 2.0


def instance(n_layers: int, bit_choices: list[int], seed: int) -> dict:
    """Random layers shaped like a CNN's (sensitivity falling with width), every third pair tied dw/pw-style."""
    rng = random.Random(seed)
    layers = []
    for i in range(n_layers):
        params = rng.randint(9, 200_000)
        trace = rng.lognormvariate(-4, 2)
        omega = {str(b): trace * params * rng.uniform(0.5, 2) * 4.0 ** -b for b in bit_choices}
        layers.append({"name": f"layer{i}", "params": params, "macs": params * rng.randint(1, 2000), "omega": omega})
    ties = [[f"layer{i}", f"layer{i + 1}"] for i in range(1, n_layers - 1, 3)]
    return {"layers": layers, "ties": ties}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for choices in ([4, 8], [2, 4, 8]):
        sens = instance(args.layers, choices, args.seed)
        pins = {sens["layers"][0]["name"]: 8, sens["layers"][-1]["name"]: 8}
        start = time.perf_counter()
        result = solve(sens, choices, size_lambda=0.5, bops_lambda=0.5, pins=pins)
        wall = time.perf_counter() - start
        print(f"{args.layers} layers, bits {choices}: solve() {wall:.3f} s "
              f"({wall / TARGET_S:.2f}x the {TARGET_S:g} s target), status {result['status']}")


if __name__ == "__main__":
    main()
