"""Per-layer profile of one case: each conv/linear layer in ONNX Runtime FP32 (its profiler, the fp32 artifact's
graph) beside the latency table of the deployed runtime (LiteRT/XNNPACK: the layer alone, int8 and FP32)
and the width the MP artifact gives it. Explains where the MP artifact's time goes and where it loses.

    .venv/bin/python benchmarks/op_profile.py --case covid [--runs 500]
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def paths(root: Path, case: str) -> dict[str, Path]:
    """The pipeline outputs this profile reads (the one place their paths are built)."""
    return {"artifacts": root / "models" / case / "artifacts", "latency": root / "models" / case / "latency.json"}


def ort_profile(artifact: Path, runs: int) -> dict[str, float]:
    """Median microseconds per layer of the artifact's ONNX graph in ONNX Runtime (one thread, batch 1): each node
    counted to the layer it comes from (a fused conv + relu node carries the relu's name), others by node name."""
    import onnxruntime as ort

    from tinym2net import tm2
    from tinym2net.backends.ort import build, session_options

    art = tm2.read(artifact)
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(1)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(build(art).SerializeToString(), opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {m: rng.standard_normal((1, *s)).astype(np.float32) for m, s in art.header["inputs"].items()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    producer = {n["output"]: n for n in art.header["nodes"]}
    owner = {n["output"]: n["name"] for n in art.header["nodes"] if n["op"] in ("conv", "linear")}
    owner.update({n["output"]: producer[n["inputs"][0]]["name"] for n in art.header["nodes"]
                  if n["op"] == "relu" and producer.get(n["inputs"][0], {}).get("op") in ("conv", "linear")})
    per_run: dict[str, dict[int, float]] = {}
    run = -1
    for e in events:
        if e.get("cat") == "Session" and e["name"] == "model_run":
            run += 1
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = re.sub(r"^fused ", "", e["name"][:-len("_kernel_time")])
            key = owner.get(re.sub(r"_\d+(_[A-Za-z]+)?$", "", node), node)
            per_run.setdefault(key, {}).setdefault(run, 0.0)
            per_run[key][run] += e["dur"]
    return {name: float(np.median(list(d.values()))) for name, d in per_run.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--case", default="covid")
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    from tinym2net import tm2

    p = paths(args.root, args.case)
    table = json.loads(p["latency"].read_text())
    bits = tm2.read(p["artifacts"] / "mp.tm2").header["bits"]
    nodes = ort_profile(p["artifacts"] / "fp32.tm2", args.runs)
    print(f"{args.case}: median us per layer, batch 1, one thread ({table['backend_version']}: the layer alone; "
          f"ONNX Runtime FP32: its profiler, {args.runs} runs)\n")
    print("| layer | MP width | LiteRT int8 | LiteRT FP32 | ORT FP32 |")
    print("|---|---|---|---|---|")
    sums = [0.0, 0.0, 0.0, 0.0]
    for name, row in table["layers"].items():
        ort_us = nodes.get(name, 0.0)
        mp = bits[name]
        chosen = row[str(mp)]
        sums = [sums[0] + chosen, sums[1] + row["8"], sums[2] + row["32"], sums[3] + ort_us]
        print(f"| {name.replace('branches.', '').replace('features.', '')} | {mp} | {row['8']:.1f} | {row['32']:.1f} "
              f"| {ort_us:.1f} |")
    others = sum(us for node, us in nodes.items() if node not in table["layers"])
    print(f"| layers, total (MP as allocated: {sums[0]:.1f}) | | {sums[1]:.1f} | {sums[2]:.1f} | {sums[3]:.1f} |")
    print(f"| the rest (LiteRT: table constant; ORT: other nodes) | | {table['constant']:.1f} | | {others:.1f} |")


if __name__ == "__main__":
    main()
