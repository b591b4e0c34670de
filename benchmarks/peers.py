"""Every runtime on the same trained weights: batch-1 latency (interleaved rounds, medians with spread),
agreement, accuracy, peak RSS and file size of our artifacts against ONNX Runtime, OpenVINO, LiteRT and
ExecuTorch int8 models of the same network, and PyTorch eager.

Run after `dvc repro export` (the artifacts and the quantize stage's models of each case):
    .venv/bin/pip install -c constraints.txt -e '.[bench]'       # OpenVINO + NNCF, ExecuTorch, ai-edge-quantizer
    .venv/bin/python benchmarks/peers.py [--cases battlefield covid] [--rounds 300] [--out peers.json]

The litert-torch peer (PT2E int8 -> .tflite, the converter a LiteRT user runs) cannot share the project's
environment (its xdsl needs typing-extensions < 4.13); the script builds it in its own venv,
`.cache/peers/litert-torch` (from benchmarks/litert-torch-requirements.txt, on first use; --no-litert-torch
skips it). ExecuTorch is opt-in (--executorch): 1.5.1 failed here in its ChannelsLastTaggedReshapePass on
battlefield and loaded a covid program expecting no inputs, then crashed. Every configuration runs one thread; each round times `--calls` single batch-1 calls of every
configuration in turn and keeps their median, so a load change on the shared machine hits all alike; the
table gives the median over rounds and the interquartile range. Peak RSS: a fresh process per model
(load + one batch-1 inference, VmHWM). Agreement: test-split predictions equal to the PyTorch FP32 model's
(peers) or to the fake-quantized model's (our quantized artifacts).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LITERT_TORCH_VENV = ROOT / ".cache" / "peers" / "litert-torch"
log = logging.getLogger("peers")


def paths(root: Path, case: str) -> dict[str, Path]:
    """The pipeline outputs this benchmark reads (the one place their paths are built)."""
    return {"fp32": root / "models" / case / "trained" / "p0" / "fused.pt", "quantized": root / "models" / case / "quantized",
            "artifacts": root / "models" / case / "artifacts", "features": root / "data" / "features" / case / "features.npz"}


# ---------------------------------------------------------------------------------------------
# peers: each returns (batch-1 call, predict(inputs) -> classes, model file, kind for the RSS probe)

def ours(path: Path, backend: str):
    from tinym2net import runtime
    model = runtime.load(path, threads=1, backend=backend)
    return model.logits, model.predict, path, f"tm2-{backend}"


def ort_session(path: Path):
    import onnxruntime as ort

    from tinym2net.backends.ort import session_options
    session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    out = session.get_outputs()[0].name
    run = lambda x: session.run([out], x)[0]
    return run, lambda x: run(x).argmax(1), path, "onnx"


def ort_quantize_static(fp32_onnx: Path, calib: list[dict], tmp: Path):
    """What an ONNX Runtime user does: quantize_static (QDQ, per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    out = tmp / "ort_int8.onnx"
    quantize_static(str(fp32_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return ort_session(out)


def openvino(fp32_onnx: Path, calib: list[dict] | None, tmp: Path):
    """OpenVINO FP32, or INT8 through NNCF's post-training quantization (calib given)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(fp32_onnx))
    model.reshape({i.get_any_name(): [1, *list(i.get_partial_shape())[1:]] for i in model.inputs})  # static batch 1
    if calib is not None:
        import nncf
        samples = [{m: v[i:i + 1] for m, v in c.items()} for c in calib for i in range(len(next(iter(c.values()))))]
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    path = tmp / ("ov_int8.xml" if calib is not None else "ov_fp32.xml")
    ov.save_model(model, str(path))
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    run = lambda x: request.infer(x)[0]
    return run, lambda x: np.concatenate([run({m: v[i:i + 1] for m, v in x.items()}).argmax(1)
                                          for i in range(len(next(iter(x.values()))))]), path, "openvino"


def litert_file(path: Path):
    """A .tflite in LiteRT (XNNPACK); int8 inputs/outputs (a fully quantized model's) are (de)quantized here."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    runner = interpreter.get_signature_runner()
    inputs, (out, out_detail) = runner.get_input_details(), next(iter(runner.get_output_details().items()))

    def feed(name, x):
        v = x[name] if name in x else x[_modality(name, x)]
        d = inputs[name]
        if d["dtype"] == np.int8:
            scale, zp = d["quantization"]
            v = np.clip(np.rint(v / scale) + zp, -128, 127).astype(np.int8)
        return np.ascontiguousarray(v)

    def run(x):
        y = runner(**{n: feed(n, x) for n in inputs})[out]
        if out_detail["dtype"] == np.int8:
            scale, zp = out_detail["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y

    return run, lambda x: np.concatenate([run({m: v[i:i + 1] for m, v in x.items()}).argmax(1)
                                          for i in range(len(next(iter(x.values()))))]), path, "tflite"


def _modality(name: str, x: dict) -> str:
    """litert-torch names inputs args_0, args_1, ... in the wrapper's argument order (the modalities' order)."""
    return list(x)[int(name.rsplit("_", 1)[-1])]


def ai_edge_quantizer(fp32_artifact: Path, calib: list[dict], tmp: Path):
    """LiteRT fully int8 through ai-edge-quantizer (static int8 weights and activations) from the FP32 flatbuffer."""
    from ai_edge_quantizer import quantizer, recipe

    from tinym2net import tm2
    from tinym2net.backends import litert
    float_model = litert.build(tm2.read(fp32_artifact))
    q = quantizer.Quantizer(float_model)
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    samples = [{m: v[i:i + 1] for m, v in c.items()} for c in calib for i in range(len(next(iter(c.values()))))]
    result = q.quantize(q.calibrate({"serving_default": samples}, num_threads=1))
    path = tmp / "aeq_int8.tflite"
    path.write_bytes(bytes(result.quantized_model))
    return litert_file(path)


class _Positional:
    """TinyM2Net taking its modalities as positional tensors (exporters want tuples)."""

    def __new__(cls, model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *xs):
                return self.model(dict(zip(model.modalities, xs)))
        return Wrapped().eval()


def executorch(fp32_model, calib: list[dict], tmp: Path):
    """ExecuTorch int8 through PT2E (XNNPACKQuantizer, per-channel symmetric) lowered to XNNPACK."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                        get_symmetric_quantization_config)
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    wrapped = _Positional(fp32_model)
    mods = fp32_model.modalities
    example = tuple(torch.from_numpy(calib[0][m][:1]) for m in mods)
    graph = torch.export.export(wrapped, example).module()
    prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    for c in calib:  # the exported graph takes batch 1
        for i in range(len(c[mods[0]])):
            prepared(*(torch.from_numpy(c[m][i:i + 1]) for m in mods))
    lowered = to_edge_transform_and_lower(torch.export.export(convert_pt2e(prepared), example),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    path = tmp / "executorch_int8.pte"
    path.write_bytes(lowered.buffer)
    return executorch_file(path, mods)


def executorch_file(path: Path, modalities: list[str]):
    import torch
    from executorch.runtime import Runtime

    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        _unsafe_reset_threadpool(1)
    except ImportError:
        pass
    method = Runtime.get().load_program(path.read_bytes()).load_method("forward")
    run = lambda x: method.execute([torch.from_numpy(np.ascontiguousarray(x[m])) for m in modalities])[0].numpy()
    return run, lambda x: np.concatenate([run({m: v[i:i + 1] for m, v in x.items()}).argmax(1)
                                          for i in range(len(next(iter(x.values()))))]), path, "pte"


def eager(fp32_model, tmp: Path):
    import torch

    torch.set_num_threads(1)
    path = tmp / "eager.pt"
    torch.save(fp32_model.state_dict(), path)

    def run(x):
        with torch.inference_mode():
            return fp32_model({m: torch.from_numpy(v) for m, v in x.items()}).numpy()
    return run, lambda x: run(x).argmax(1), path, "torch"


def litert_torch(fp32_model, calib: list[dict], tmp: Path):
    """litert-torch's PT2E int8 conversion, in its own venv (the model handed over as a torch.export program)."""
    import torch

    python = LITERT_TORCH_VENV / "bin" / "python"
    if not python.exists():
        log.info("creating %s (litert-torch and its pins)", LITERT_TORCH_VENV)
        subprocess.run([sys.executable, "-m", "venv", str(LITERT_TORCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                        str(ROOT / "benchmarks" / "litert-torch-requirements.txt")], check=True)
    mods = fp32_model.modalities
    program = tmp / "litert_torch_in.pt2"
    example = tuple(torch.from_numpy(calib[0][m][:1]) for m in mods)
    torch.export.save(torch.export.export(_Positional(fp32_model), example), program)
    np.savez(tmp / "litert_torch_calib.npz", **{f"{m}_{i}": c[m] for i, c in enumerate(calib) for m in mods})
    out = tmp / "litert_torch_int8.tflite"
    script = (
        "import sys, numpy as np, torch, litert_torch\n"
        "from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config\n"
        "from litert_torch.quantize.quant_config import QuantConfig\n"
        "from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, convert_pt2e\n"
        "mods, z = sys.argv[3].split(','), np.load(sys.argv[4])\n"
        "batches = sorted({int(k.rsplit('_', 1)[1]) for k in z.files})\n"
        "example = tuple(torch.from_numpy(z[f'{m}_0'][:1]) for m in mods)\n"
        "quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))\n"
        "prepared = prepare_pt2e(torch.export.load(sys.argv[1]).module(), quantizer)\n"
        "for b in batches:\n"
        "    for i in range(len(z[f'{mods[0]}_{b}'])):\n"
        "        prepared(*(torch.from_numpy(z[f'{m}_{b}'][i:i + 1]) for m in mods))\n"
        "converted = convert_pt2e(prepared, fold_quantize=False)\n"
        "litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(sys.argv[2])\n")
    proc = subprocess.run([str(python), "-c", script, str(program), str(out), ",".join(mods),
                           str(tmp / "litert_torch_calib.npz")], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"litert-torch conversion failed: {proc.stderr.strip().splitlines()[-1][:300]}")
    return litert_file(out)


# ---------------------------------------------------------------------------------------------
# peak RSS: a fresh process per model file

RSS_PROBE = """
import json, sys
from pathlib import Path
import numpy as np
def hwm():
    s = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
    return int(s["VmHWM"].split()[0]) / 1024
kind, path, testset = sys.argv[1], Path(sys.argv[2]), np.load(sys.argv[3])
x = {k[2:]: np.ascontiguousarray(testset[k][:1]) for k in testset.files if k.startswith("x_")}
sys.path.insert(0, sys.argv[4])
import peers
if kind.startswith("tm2-"):
    import tinym2net.runtime
    base = hwm(); run = peers.ours(path, kind[4:])[0]
elif kind == "onnx":
    import onnxruntime
    base = hwm(); run = peers.ort_session(path)[0]
elif kind == "tflite":
    import ai_edge_litert.interpreter
    base = hwm(); run = peers.litert_file(path)[0]
elif kind == "openvino":
    import openvino
    base = hwm()
    import openvino as ov
    c = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1})
    req = c.create_infer_request(); run = lambda x: req.infer(x)[0]
elif kind == "pte":
    import torch, executorch.runtime
    base = hwm(); run = peers.executorch_file(path, list(x))[0]
else:
    import torch
    from tinym2net.training import load_model
    base = hwm(); model = load_model(Path(sys.argv[5])); run = lambda x: model({m: torch.from_numpy(v) for m, v in x.items()})
run(x)
print(json.dumps({"peak_mib": hwm(), "runtime_mib": base}))
"""


def peak_rss(kind: str, path: Path, testset: Path, fp32_path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, kind, str(path), str(testset), str(ROOT / "benchmarks"),
                           str(fp32_path)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------

def run_case(root: Path, case: str, args, tmp: Path) -> dict:
    import torch

    from tinym2net import bench
    from tinym2net.backends import ort
    from tinym2net import tm2
    from tinym2net.export import load_variant
    from tinym2net.training import Features, load_model, predict

    torch.set_num_threads(1)
    p = paths(root, case)
    fp32 = load_model(p["fp32"])
    mp_model, _ = load_variant(p["fp32"], p["quantized"] / "mp.pt")
    data = Features(p["features"], fp32.modalities)
    test = data.rows("test")
    x = {m: np.ascontiguousarray(v.numpy()) for m, v in data.batch(test, fp32.modalities).items()}  # (N, C, H, W)
    y = data.y[test].numpy()
    rng = np.random.default_rng(0)
    train = rng.permutation(data.rows("train"))[:args.calibration_samples]
    calib = [{m: np.ascontiguousarray(v.numpy()) for m, v in data.batch(train[i:i + 32], fp32.modalities).items()}
             for i in range(0, len(train), 32)]
    reference = {"fp32": predict(fp32, data, test).argmax(1), "fake-quantized mp": predict(mp_model, data, test).argmax(1)}
    fp32_onnx = tmp / "fp32.onnx"
    fp32_onnx.write_bytes(ort.build(tm2.read(p["artifacts"] / "fp32.tm2")).SerializeToString())
    np.savez(tmp / "one.npz", **{f"x_{m}": v[:1] for m, v in x.items()})

    builders = {
        "ours, mp.tm2 (LiteRT/XNNPACK, deployed)": lambda: ours(p["artifacts"] / "mp.tm2", "litert"),
        "ours, w8a8.tm2 (LiteRT/XNNPACK)": lambda: ours(p["artifacts"] / "w8a8.tm2", "litert"),
        "ours, fp32.tm2 (LiteRT/XNNPACK)": lambda: ours(p["artifacts"] / "fp32.tm2", "litert"),
        "ours, mp.tm2 in ONNX Runtime (int8 QDQ)": lambda: ours(p["artifacts"] / "mp.tm2", "onnx"),
        "ORT FP32": lambda: ort_session(fp32_onnx),
        "ORT quantize_static int8": lambda: ort_quantize_static(fp32_onnx, calib, tmp),
        "OpenVINO FP32": lambda: openvino(fp32_onnx, None, tmp),
        "OpenVINO INT8 (NNCF)": lambda: openvino(fp32_onnx, calib, tmp),
        "LiteRT int8, XNNPACK (ai-edge-quantizer, all int8)": lambda: ai_edge_quantizer(p["artifacts"] / "fp32.tm2", calib, tmp),
        "LiteRT int8, XNNPACK (PT2E via litert-torch)": lambda: litert_torch(fp32, calib, tmp),
        "ExecuTorch int8, XNNPACK (PT2E)": lambda: executorch(fp32, calib, tmp),
        "PyTorch eager FP32": lambda: eager(fp32, tmp),
    }
    if args.no_litert_torch:
        builders.pop("LiteRT int8, XNNPACK (PT2E via litert-torch)")
    if not args.executorch:
        builders.pop("ExecuTorch int8, XNNPACK (PT2E)")
    configs, failed = {}, {}
    for name, build in builders.items():
        try:
            configs[name] = build()
        except Exception as exc:  # a peer that cannot be built here is reported, not fatal
            failed[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
            log.warning("%s: %s", name, failed[name])
    one = {m: v[:1] for m, v in x.items()}
    times = bench.interleaved({n: (lambda f: lambda: f(one))(c[0]) for n, c in configs.items()}, args.rounds, args.calls)
    rows = {}
    for name, (_, predict_all, path, kind) in configs.items():
        pred = predict_all(x)
        ref = "fake-quantized mp" if name.startswith("ours, mp") else "fp32"
        rows[name] = {**bench.spread(times[name]), "agreement": round(float((pred == reference[ref]).mean()), 4),
                      "agreement_with": ref, "accuracy": round(float((pred == y).mean()), 4),
                      "file_kib": round(path.stat().st_size / 1024, 1),
                      "rss": peak_rss(kind, path, tmp / "one.npz", p["fp32"])}
    base = rows["ORT FP32"]["median_us"]
    for r in rows.values():
        r["vs_ort_fp32"] = round(base / r["median_us"], 3)
    return {"rows": rows, "failed": failed, "test_samples": int(len(y)),
            "accuracy": {k: round(float((v == y).mean()), 4) for k, v in reference.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--cases", nargs="+", default=["battlefield", "covid"])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--calls", type=int, default=5, help="single batch-1 calls per configuration and round")
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--no-litert-torch", action="store_true", help="skip the litert-torch peer (its own venv)")
    parser.add_argument("--executorch", action="store_true",
                        help="include ExecuTorch (1.5.1 failed to lower battlefield and crashed on covid's program here)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tinym2net.bench import cpu_model

    results = {"date": str(datetime.date.today()), "cpu": cpu_model(), "machine": platform.machine(),
               "cores": os.cpu_count(), "load_average": os.getloadavg(), "rounds": args.rounds, "calls": args.calls,
               "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            (Path(tmp) / case).mkdir()
            results["cases"][case] = run_case(args.root, case, args, Path(tmp) / case)
    results["load_average_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(f"{results['date']}, {results['cpu']} ({results['machine']}, {results['cores']} cores, load average "
          f"{results['load_average'][0]:.1f} before / {results['load_average_after'][0]:.1f} after: shared), batch 1, "
          f"1 thread, {args.rounds} interleaved rounds x {args.calls} calls; median (IQR) us")
    for case, r in results["cases"].items():
        print(f"\n{case} ({r['test_samples']} test samples; accuracy fp32 {r['accuracy']['fp32']:.4f}, "
              f"fake-quantized mp {r['accuracy']['fake-quantized mp']:.4f})\n")
        print("| runtime / variant | median us (IQR) | vs ORT FP32 | agreement | accuracy | peak RSS MiB (runtime alone) | file KiB |")
        print("|---|---|---|---|---|---|---|")
        for name, row in r["rows"].items():
            rss = row["rss"]
            rss_text = f"{rss['peak_mib']:.0f} ({rss['runtime_mib']:.0f})" if "peak_mib" in rss else rss["error"]
            print(f"| {name} | {row['median_us']:.0f} ({row['q25_us']:.0f}-{row['q75_us']:.0f}) | "
                  f"{row['vs_ort_fp32']:.2f}x | {100 * row['agreement']:.1f}% vs {row['agreement_with']} | "
                  f"{100 * row['accuracy']:.1f}% | {rss_text} | {row['file_kib']:.1f} |")
        for name, why in r["failed"].items():
            print(f"| {name} | not built: {why} | | | | | |")


if __name__ == "__main__":
    main()
