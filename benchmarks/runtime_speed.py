"""Batch-1 latency of the exported MP artifact against PyTorch eager FP32 and the FP32 model in ONNX Runtime,
single- and multi-threaded, in one run on one machine; target: MP >= 5x faster than PyTorch eager FP32 on one thread.

Run (after `dvc repro export@battlefield`, or at least `quantize@battlefield`):
    .venv/bin/python benchmarks/runtime_speed.py [--case battlefield] [--variant mp] [--rounds 20] [--calls 100]

The configurations are measured in interleaved rounds (each round times `--calls` calls of every
configuration in turn), so a load change on a shared machine hits them all alike; figures are medians.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from tinym2net import runtime
from tinym2net.bench import cpu_model
from tinym2net.export import export, load_variant
from tinym2net.training import Features, load_model

TARGET = 5.0


def artifact(root: Path, case: str, variant: str, tmp: Path, input_shapes: dict, classes: list[str]) -> Path:
    """models/<case>/artifacts/<variant>.tm2, or an export of models/<case>/quantized/<variant>.pt made now."""
    path = root / "models" / case / "artifacts" / f"{variant}.tm2"
    if path.is_file():
        return path
    model, bits = load_variant(root / "models" / case / "fp32" / "fused.pt", root / "models" / case / "quantized" / f"{variant}.pt")
    export(model, tmp / f"{variant}.tm2", case=case, variant=variant, classes=classes, input_shapes=input_shapes, bits=bits)
    return tmp / f"{variant}.tm2"


def time_calls(fn, calls: int) -> np.ndarray:
    out = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--case", default="battlefield")
    parser.add_argument("--variant", default="mp")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=100, help="timed calls per configuration and round")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the multi-threaded setting")
    args = parser.parse_args()

    fp32 = load_model(args.root / "models" / args.case / "fp32" / "fused.pt")
    data = Features(args.root / "data" / "features" / args.case / "features.npz", fp32.modalities)
    row = data.rows("test")[:1]
    x_torch = {m: v.contiguous() for m, v in data.batch(row, fp32.modalities).items()}          # (1, C, H, W) NCHW
    x_cl = {m: v.contiguous(memory_format=torch.channels_last) for m, v in x_torch.items()}
    x_np = {m: v.numpy() for m, v in x_torch.items()}
    fp32_cl = load_model(args.root / "models" / args.case / "fp32" / "fused.pt").to(memory_format=torch.channels_last)
    classes = [str(i) for i in range(fp32.head.out.out_features)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {v: artifact(args.root, args.case, v, Path(tmp), data.input_shapes(), classes) for v in ("fp32", args.variant)}
        configs = {}
        for threads in sorted({1, args.threads}):
            sessions = {v: runtime.load(p, threads=threads) for v, p in paths.items()}

            def eager(model, x):
                def call():
                    with torch.inference_mode():
                        model(x)
                return call
            configs[("PyTorch eager FP32", threads)] = eager(fp32, x_torch)
            configs[("PyTorch eager FP32 channels-last", threads)] = eager(fp32_cl, x_cl)
            configs[("ORT FP32", threads)] = (lambda s: lambda: s.session.run(["logits"], x_np))(sessions["fp32"])
            configs[(f"ORT {args.variant} (int8 QDQ)", threads)] = \
                (lambda s: lambda: s.session.run(["logits"], x_np))(sessions[args.variant])
        for (_, threads), fn in configs.items():  # warm-up
            torch.set_num_threads(threads)
            time_calls(fn, 50)
        times = {k: [] for k in configs}
        for _ in range(args.rounds):
            for (name, threads), fn in configs.items():
                torch.set_num_threads(threads)  # PyTorch's intra-op threads; ONNX Runtime's are per session
                times[(name, threads)].append(time_calls(fn, args.calls))
        sizes = {v: p.stat().st_size for v, p in paths.items()}

    med = {k: float(np.median(np.concatenate(v))) * 1e6 for k, v in times.items()}                    # microseconds
    print(f"date: {datetime.date.today()}  cpu: {cpu_model()} ({platform.machine()}, {os.cpu_count()} cores)  "
          f"torch {torch.__version__}  onnxruntime {onnxruntime.__version__}")
    print(f"case {args.case}, batch 1, {args.rounds} rounds x {args.calls} calls, median latency; "
          f"artifacts: fp32 {sizes['fp32'] / 1024:.1f} KiB, {args.variant} {sizes[args.variant] / 1024:.1f} KiB")
    print(f"{'configuration':36s} {'threads':>7s} {'p50 us':>9s} {'vs eager':>9s} {'vs ORT FP32':>12s}")
    for (name, threads), us in med.items():
        print(f"{name:36s} {threads:7d} {us:9.1f} {med[('PyTorch eager FP32', threads)] / us:8.2f}x "
              f"{med[('ORT FP32', threads)] / us:11.2f}x")
    ratio = med[("PyTorch eager FP32", 1)] / med[(f"ORT {args.variant} (int8 QDQ)", 1)]
    ratio_cl = med[("PyTorch eager FP32 channels-last", 1)] / med[(f"ORT {args.variant} (int8 QDQ)", 1)]
    print(f"single-threaded: {args.variant} artifact is {ratio:.2f}x faster than PyTorch eager FP32 "
          f"({ratio_cl:.2f}x vs its channels-last form); target {TARGET:g}x: {'PASS' if ratio >= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
