"""`pip install tinym2net[runtime]` alone loads, runs and benchmarks an artifact: a clean venv holding the
project's wheel and nothing but numpy and LiteRT (ai-edge-litert, flatbuffers and their small dependencies;
no torch, dvc, mlflow, prefect, librosa, nor ONNX Runtime)."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tinym2net import runtime
from tinym2net.export import export
from tinym2net.model import build
from tinym2net.quant import quantize_model

RUNTIME_PINS = ["numpy==2.4.6", "ai-edge-litert==2.3.0", "flatbuffers==25.12.19"]  # pyproject.toml: base + `runtime`
CFG = {"branches": {"a": {"padding": "same", "layers": [["conv", 4, 3], ["sepconv", 6, 3], ["maxpool", 2]], "dense": 8},
                    "b": {"padding": "valid", "layers": [["conv", 4, 3]], "dense": 6}},
       "head": [8], "dropout": 0.0}
SHAPES = {"a": (1, 8, 8), "b": (2, 5, 4)}


def pip(*args, cwd=None):
    """The project interpreter's pip (it can install into another environment with --python)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def wheelhouse(repo_root):
    """The wheels of the runtime extra, fetched once through pip's configured index and kept in .cache/."""
    path = repo_root / ".cache" / "wheels" / "runtime"
    path.mkdir(parents=True, exist_ok=True)
    constraints = str(repo_root / "constraints.txt")
    offline = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-index", "--find-links", str(path),
                              "-d", str(path), "-c", constraints, *RUNTIME_PINS], capture_output=True, timeout=300)
    if offline.returncode != 0:
        pip("download", "--quiet", "-d", str(path), "-c", constraints, *RUNTIME_PINS)
    return path


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory, repo_root, wheelhouse):
    """A fresh venv with `tinym2net[runtime]` installed from the project's wheel, offline."""
    tmp = tmp_path_factory.mktemp("runtime-install")
    src = tmp / "project"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root / name, src / name)
    shutil.copytree(repo_root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip("--python", str(python), "install", "--quiet", "--no-index", "--find-links", str(wheelhouse),
        "--find-links", str(tmp / "dist"), "-c", str(repo_root / "constraints.txt"), "tinym2net[runtime]")
    return python


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A small mixed-precision model, its artifact, and test inputs with the fake-quantized predictions."""
    torch.manual_seed(0)
    model = build(CFG, SHAPES, 3).eval()
    g = torch.Generator().manual_seed(1)
    calib = [({m: torch.randn(32, *s, generator=g) for m, s in SHAPES.items()}, torch.zeros(32)) for _ in range(3)]
    bits = {"branches.a.features.conv1.conv": 32, "branches.a.features.sepconv2.dw": 4,
            "branches.a.features.sepconv2.pw": 4, "branches.a.dense.fc": 4, "branches.b.features.conv1.conv": 8,
            "branches.b.dense.fc": 8, "head.fc1": 4, "head.out": 8}
    qmodel = quantize_model(model, bits, calib)
    tmp = tmp_path_factory.mktemp("artifact")
    export(qmodel, tmp / "mp.tm2", case="demo", variant="mp", classes=["x", "y", "z"], input_shapes=SHAPES, bits=bits)
    x = {m: torch.randn(64, *s, generator=g) for m, s in SHAPES.items()}
    with torch.no_grad():
        expected = qmodel(x).argmax(1).numpy()
    np.savez(tmp / "test.npz", y=expected, **{f"x_{m}": v.numpy() for m, v in x.items()})
    return tmp / "mp.tm2", tmp / "test.npz", expected


SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    import numpy as np
    from tinym2net import runtime
    model = runtime.load(sys.argv[1])
    with np.load(sys.argv[2]) as z:
        pred = model.predict({m: z[f"x_{m}"] for m in model.modalities})
    importable = []
    for name in ("torch", "dvc", "mlflow", "prefect", "librosa", "onnxruntime"):
        try:
            importlib.import_module(name)
            importable.append(name)
        except ImportError:
            pass
    print(json.dumps({"pred": pred.tolist(), "importable": importable, "modules": sorted(sys.modules)}))
""")


def run_in(python, args, cwd):
    env = {"PATH": str(python.parent), "HOME": str(cwd)}  # nothing of the project's environment leaks in
    proc = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_runtime_extra_alone_loads_and_predicts(runtime_venv, artifact, tmp_path):
    path, test, expected = artifact
    (tmp_path / "predict.py").write_text(SCRIPT)
    answer = json.loads(run_in(runtime_venv, ["predict.py", str(path), str(test)], tmp_path))
    assert answer["importable"] == []  # torch, dvc, mlflow, prefect, librosa, onnxruntime: none installed
    assert not {"torch", "scipy", "sklearn", "yaml"} & {m.split(".")[0] for m in answer["modules"]}
    assert (np.array(answer["pred"]) == expected).mean() >= 0.99
    with np.load(test) as z:  # the same predictions as the full environment's runtimes, LiteRT and ONNX Runtime
        for backend in runtime.BACKENDS:
            np.testing.assert_array_equal(answer["pred"], runtime.load(path, backend=backend).predict(
                {m: z[f"x_{m}"] for m in SHAPES}))


def test_runtime_extra_alone_runs_the_benchmark(runtime_venv, artifact, tmp_path):
    path, test, _ = artifact
    settings = {"threads": 1, "warmup": 2, "runs": 20, "throughput_batch": 8, "throughput_runs": 3,
                "power_command": None, "power": {"idle_seconds": 1, "seconds": 1, "interval_seconds": 0.5}}
    result = json.loads(run_in(runtime_venv, ["-m", "tinym2net.bench", str(path), str(test), json.dumps(settings)],
                               tmp_path))
    assert result["accuracy"] >= 0.99 and result["power"] == "not measured"
    assert result["latency_ms"]["runs"] == 20 and result["file_bytes"] == path.stat().st_size
    assert result["host"]["threads"] == 1 and result["host"]["cpu"]
