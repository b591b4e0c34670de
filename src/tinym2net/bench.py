"""Benchmark an exported artifact on this machine: latency, throughput, load time, memory, accuracy, power.

Runs on the device as well as here, so it imports only numpy and the runtime (no torch). Each
variant is measured in a fresh interpreter (`run_isolated`: `python -m tinym2net.bench`), so its
peak resident memory is its own and not that of the variants measured before it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import runtime, tm2
from .errors import DataError, ModelFileError, ParamsError, TinyM2NetError

log = logging.getLogger(__name__)

NOT_MEASURED = "not measured"


# ---------------------------------------------------------------------------------------------
# the host

def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (`model name` on x86, `Model`/`Hardware` on a Raspberry Pi)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and value.strip():
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    for key in ("model name", "Model", "Hardware", "Processor", "cpu model"):
        if key in fields:
            return fields[key]
    return platform.processor() or platform.machine() or "unknown"


def host_info(threads: int | None, backend: str = runtime.DEFAULT_BACKEND) -> dict:
    """Where the figures were measured: CPU, architecture, cores, threads used, software versions."""
    cores = os.cpu_count() or 1
    return {"cpu": cpu_model(), "architecture": platform.machine(), "cores": cores,
            "threads": cores if threads is None else threads, "system": f"{platform.system()} {platform.release()}",
            "hostname": platform.node(), "python": platform.python_version(), "backend": backend,
            "runtime": runtime.backend_version(backend), "numpy": np.__version__}


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process in bytes."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return peak, peak


# ---------------------------------------------------------------------------------------------
# the test split

def save_testset(path: Path, inputs: dict[str, np.ndarray], y: np.ndarray) -> None:
    """The test split as one npz: `x_<modality>` (N, C, H, W) float32 and `y` (N,)."""
    np.savez(path, y=np.asarray(y, np.int64), **{f"x_{m}": np.asarray(x, np.float32) for m, x in inputs.items()})


def load_testset(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The inputs (modality -> (N, C, H, W)) and labels of a test-set npz written by `save_testset`."""
    try:
        with np.load(path) as z:
            return {k[2:]: z[k] for k in z.files if k.startswith("x_")}, z["y"]
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except KeyError:
        raise DataError(f"{path}: no labels `y` (not a test set written by save_testset)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable npz ({exc})") from None


# ---------------------------------------------------------------------------------------------
# measurements

def _batches(inputs: dict[str, np.ndarray], n: int, size: int):
    for i in range(0, n, size):
        yield {m: x[i:i + size] for m, x in inputs.items()}


def accuracy(model: runtime.Model, inputs: dict[str, np.ndarray], y: np.ndarray, batch_size: int = 256) -> float:
    pred = np.concatenate([model.predict(b) for b in _batches(inputs, len(y), batch_size)])
    return float((pred == y).mean())


def latency(fn: Callable[[], object], warmup: int, runs: int) -> dict:
    """Batch-1 latency: `warmup` untimed calls, then `runs` timed ones (milliseconds)."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    return {"p50": round(float(np.percentile(ms, 50)), 4), "p95": round(float(np.percentile(ms, 95)), 4),
            "p99": round(float(np.percentile(ms, 99)), 4), "mean": round(float(ms.mean()), 4),
            "min": round(float(ms.min()), 4), "runs": runs}


def throughput(model: runtime.Model, inputs: dict[str, np.ndarray], batch: int, runs: int) -> float:
    """Samples per second at batch size `batch` (the first `batch` test samples, repeated if needed)."""
    n = len(next(iter(inputs.values())))
    reps = math.ceil(batch / n)
    feed = {m: np.concatenate([x] * reps)[:batch] for m, x in inputs.items()}
    model.logits(feed)  # warm-up: allocations for this batch size
    start = time.perf_counter()
    for _ in range(runs):
        model.logits(feed)
    return batch * runs / (time.perf_counter() - start)


class PowerMeter:
    """Reads the power draw (watts) through a user-supplied shell command that prints a number."""

    def __init__(self, command: str, timeout: float = 10.0):
        self.command = command
        self.timeout = timeout

    def read(self) -> float:
        try:
            proc = subprocess.run(self.command, shell=True, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise ParamsError(f"params.yaml: benchmark.power_command {self.command!r} took over {self.timeout:g} s") from None
        words = proc.stdout.split()
        try:
            if proc.returncode != 0 or not words:
                raise ValueError
            return float(words[0])
        except ValueError:
            raise ParamsError(f"params.yaml: benchmark.power_command {self.command!r} must print the power in watts "
                              f"(exit {proc.returncode}, printed {proc.stdout.strip()[:60]!r})") from None

    def sample(self, seconds: float, interval: float, stop: threading.Event | None = None) -> list[float]:
        """Readings every `interval` s for `seconds` (or until `stop` is set)."""
        readings, end = [], time.monotonic() + seconds
        while time.monotonic() < end and not (stop and stop.is_set()):
            readings.append(self.read())
            time.sleep(interval)
        return readings or [self.read()]


def measure_power(meter: PowerMeter, work: Callable[[], object], idle_seconds: float, seconds: float,
                  interval: float) -> dict:
    """Mean power while idle, then while `work` runs in a loop; the difference is the inference's."""
    idle = meter.sample(idle_seconds, interval)
    stop, runs = threading.Event(), [0]

    def loop():
        while not stop.is_set():
            work()
            runs[0] += 1

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        busy = meter.sample(seconds, interval)
    finally:
        stop.set()
        worker.join()
    idle_w, busy_w = float(np.mean(idle)), float(np.mean(busy))
    return {"idle_w": round(idle_w, 4), "inference_w": round(busy_w, 4), "delta_w": round(busy_w - idle_w, 4),
            "samples": {"idle": len(idle), "inference": len(busy)}, "inferences": runs[0],
            "command": meter.command}


# ---------------------------------------------------------------------------------------------
# one variant

def settings_from_params(cfg: dict) -> dict:
    """The measurement settings of `benchmark:` in params.yaml, validated."""
    def count(key, allow_zero=False):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (v == 0 and not allow_zero):
            raise ParamsError(f"params.yaml: benchmark.{key} must be a {'non-negative' if allow_zero else 'positive'} "
                              f"integer (got {v!r})")
        return v
    threads = cfg.get("threads")
    if threads is not None:
        threads = count("threads")
    backend = cfg.get("backend", runtime.DEFAULT_BACKEND)
    if backend not in runtime.BACKENDS:
        raise ParamsError(f"params.yaml: benchmark.backend: unknown value {backend!r} (choose from {', '.join(runtime.BACKENDS)})")
    power = cfg.get("power") or {}
    command = cfg.get("power_command")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise ParamsError(f"params.yaml: benchmark.power_command must be a shell command or null (got {command!r})")
    for key in ("idle_seconds", "seconds", "interval_seconds"):
        v = power.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ParamsError(f"params.yaml: benchmark.power.{key} must be a number > 0 (got {v!r})")
    return {"threads": threads, "backend": backend, "warmup": count("warmup", True), "runs": count("runs"),
            "compare_rounds": count("compare_rounds"), "compare_calls": count("compare_calls"),
            "throughput_batch": count("throughput_batch"), "throughput_runs": count("throughput_runs"),
            "power_command": command, "power": {k: float(power[k]) for k in ("idle_seconds", "seconds", "interval_seconds")}}


def run(artifact_path: Path, testset_path: Path, settings: dict) -> dict:
    """Every measurement of one artifact, in this process."""
    backend = settings.get("backend", runtime.DEFAULT_BACKEND)
    runtime.backend_version(backend)  # the runtime library loaded first: `model_rss_mib` is the model's own memory
    inputs, y = load_testset(testset_path)
    base_rss, _ = rss_bytes()
    model = runtime.load(artifact_path, threads=settings["threads"], backend=backend,
                         limits=tm2.Limits.from_dict(settings.get("tm2_limits")))
    loaded_rss, _ = rss_bytes()
    missing = [m for m in model.modalities if m not in inputs]
    if missing:
        raise DataError(f"{testset_path}: no inputs for modality {missing[0]!r} of {artifact_path}")
    one = {m: x[:1] for m, x in inputs.items()}
    lat = latency(lambda: model.logits(one), settings["warmup"], settings["runs"])
    _, peak = rss_bytes()  # the peak of loading and batch-1 inference, before bigger batches
    tput = throughput(model, inputs, settings["throughput_batch"], settings["throughput_runs"])
    acc = accuracy(model, inputs, y, settings["throughput_batch"])
    if settings.get("power_command"):
        p = settings["power"]
        power = measure_power(PowerMeter(settings["power_command"]), lambda: model.logits(one),
                              p["idle_seconds"], p["seconds"], p["interval_seconds"])
    else:
        power = NOT_MEASURED
    size = Path(artifact_path).stat().st_size
    return {"variant": model.header.get("variant"), "file_bytes": size, "file_kib": round(size / 1024, 2),
            "bits": model.header.get("bits"), "load_seconds": round(model.load_seconds, 4), "latency_ms": lat,
            "throughput_sps": round(tput, 1), "throughput_batch": settings["throughput_batch"],
            "peak_rss_mib": round(peak / 2 ** 20, 2), "model_rss_mib": round((loaded_rss - base_rss) / 2 ** 20, 2),
            "accuracy": round(acc, 4), "test_samples": int(len(y)), "power": power,
            "backend": backend, "host": host_info(settings["threads"], backend)}


def interleaved(calls: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, np.ndarray]:
    """Each function's typical seconds per call, in interleaved rounds: every round times `per_round` single
    calls of each function in turn, so that a load change on a shared machine hits them all alike, and keeps
    their median (a call the scheduler preempted does not move it): (rounds,) per function."""
    for fn in calls.values():
        for _ in range(per_round):
            fn()
    times = {k: np.empty(rounds) for k in calls}
    one = np.empty(per_round)
    clock = time.perf_counter
    for r in range(rounds):
        for key, fn in calls.items():
            for i in range(per_round):
                start = clock()
                fn()
                one[i] = clock() - start
            times[key][r] = np.median(one)
    return times


def spread(seconds: np.ndarray) -> dict:
    """Median and interquartile range of per-round times (`interleaved`), in microseconds."""
    us = np.asarray(seconds) * 1e6
    return {"median_us": round(float(np.median(us)), 2), "q25_us": round(float(np.percentile(us, 25)), 2),
            "q75_us": round(float(np.percentile(us, 75)), 2), "rounds": int(len(us))}


def compare(artifacts: dict[str, Path], testset_path: Path, settings: dict, reference: str = "fp32") -> dict:
    """Batch-1 latency of every artifact in this one process, interleaved, and each one's speed-up over `reference`."""
    backend = settings.get("backend", runtime.DEFAULT_BACKEND)
    inputs, _ = load_testset(testset_path)
    one = {m: x[:1] for m, x in inputs.items()}
    models = {name: runtime.load(path, threads=settings["threads"], backend=backend,
                                 limits=tm2.Limits.from_dict(settings.get("tm2_limits")))
              for name, path in artifacts.items()}
    times = interleaved({name: (lambda m: lambda: m.logits(one))(m) for name, m in models.items()},
                        settings.get("compare_rounds", 30), settings.get("compare_calls", 20))
    out = {name: spread(t) for name, t in times.items()}
    if reference in times:
        for name, t in times.items():
            out[name]["speedup_vs_" + reference] = round(float(np.median(times[reference]) / np.median(t)), 3)
    return {"backend": backend, "runtime": runtime.backend_version(backend), "variants": out}


def run_isolated(artifact_path: Path, testset_path: Path, settings: dict, timeout: float = 1800,
                 others: dict[str, Path] | None = None) -> dict:
    """`run` in a fresh interpreter (its own peak memory); its errors are raised here, as one line.
    With `others` (name -> artifact), `compare` of `artifact_path` (as "fp32") and them instead."""
    cmd = [sys.executable, "-m", "tinym2net.bench", str(artifact_path), str(testset_path), json.dumps(settings)]
    if others:
        cmd += ["--compare", json.dumps({k: str(v) for k, v in others.items()})]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DataError(f"{artifact_path}: the benchmark took over {timeout:g} s") from None
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        tail = [l for l in proc.stderr.splitlines() if l.strip()][-1:] or [f"exit {proc.returncode}"]
        raise DataError(f"{artifact_path}: the benchmark process failed ({tail[0][:200]})") from None
    if "error" in answer:
        errors = {cls.__name__: cls for cls in (DataError, ModelFileError, ParamsError)}
        raise errors.get(answer["type"], TinyM2NetError)(answer["error"])
    return answer


def main(argv=None) -> None:
    """`python -m tinym2net.bench ARTIFACT TESTSET SETTINGS_JSON`: one variant's figures as JSON on stdout."""
    parser = argparse.ArgumentParser(prog="python -m tinym2net.bench", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("testset", type=Path, help="npz with x_<modality> and y")
    parser.add_argument("settings", help="JSON of the measurement settings (see settings_from_params)")
    parser.add_argument("--compare", help="JSON {name: artifact}: batch-1 latency of these against ARTIFACT (fp32), "
                                          "interleaved in this process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        if args.compare:
            others = {k: Path(v) for k, v in json.loads(args.compare).items()}
            result = compare({"fp32": args.artifact, **others}, args.testset, json.loads(args.settings))
        else:
            result = run(args.artifact, args.testset, json.loads(args.settings))
    except TinyM2NetError as exc:
        json.dump({"error": str(exc), "type": type(exc).__name__}, sys.stdout)
        raise SystemExit(1) from None
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
