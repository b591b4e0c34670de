"""`make check-aarch64`: the runtime extra and exported artifacts, run by an aarch64 Python under qemu-user,
predict exactly what they predict on this machine.

Everything comes from Debian's and PyPI's registries, unpacked under .cache/aarch64 (no system change):
qemu-user-static (this machine's architecture) and an arm64 Python 3.11 userland (`apt-get download` with a
private package-list state, `dpkg -x`), the runtime extra's aarch64 wheels (`pip download --platform`) and
this project's wheel, unpacked into one site-packages. The emulated CPU is a Cortex-A72, the Raspberry Pi 4's
core (`-cpu cortex-a72`, with its /proc/cpuinfo and /sys cpu tree under the emulated root, which XNNPACK's
cpuinfo reads). Emulated timings are not figures: nothing here is timed.

    python scripts/check_aarch64.py              # the pipeline's artifacts (models/*/artifacts/*.tm2) if any, else:
    python scripts/check_aarch64.py --synthetic  # a small model exported here at fp32, w8a8, w4a4 and mixed with FP32
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "aarch64"
CPU = "cortex-a72"
RUNTIME_PINS = ["numpy==2.4.6", "ai-edge-litert==2.3.0", "flatbuffers==25.12.19"]  # pyproject.toml: base + runtime
# python3.11 and the shared libraries it and the wheels load (Debian 12 arm64)
USERLAND = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1", "zlib1g",
            "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libstdc++6", "libgcc-s1", "libzstd1", "libsqlite3-0",
            "libuuid1", "libtinfo6", "libncursesw6", "libreadline8", "libdb5.3", "libcrypt1", "libnsl2", "libtirpc3",
            "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libcom-err2", "libkrb5support0", "libkeyutils1",
            "media-types"]
log = logging.getLogger("check-aarch64")


class CheckError(Exception):
    """The check could not run or the predictions differ (one line)."""


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()][-1:] or [f"exit {proc.returncode}"]
        raise CheckError(f"{' '.join(cmd[:3])} ...: {tail[0][:300]}")
    return proc


def apt_download(arch: str, packages: list[str], dest: Path) -> list[Path]:
    """`apt-get download` of `packages` for `arch` with package lists kept under .cache (the system's apt state untouched)."""
    state = CACHE / f"apt-{arch}"
    for d in ("lists/partial", "cache/archives/partial"):
        (state / d).mkdir(parents=True, exist_ok=True)
    opts = ["-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures::={arch}", "-o", f"Dir::State::Lists={state}/lists",
            "-o", f"Dir::Cache={state}/cache", "-o", "Dir::State::status=/dev/null"]
    if not any((state / "lists").glob("*Packages*")):
        run(["apt-get", *opts, "update"], timeout=600)
    dest.mkdir(parents=True, exist_ok=True)
    run(["apt-get", *opts, "download", *packages], cwd=dest, timeout=900)
    return sorted(dest.glob("*.deb"))


def qemu() -> Path:
    binary = CACHE / "qemu" / "usr" / "bin" / "qemu-aarch64-static"
    if not binary.exists():
        for deb in apt_download("amd64" if sys.maxsize > 2 ** 32 else "i386", ["qemu-user-static"], CACHE / "debs-host"):
            run(["dpkg", "-x", str(deb), str(CACHE / "qemu")])
    return binary


def sysroot(cores: int = 2) -> Path:
    """An arm64 Python 3.11 userland, with a Raspberry Pi 4's /proc/cpuinfo and /sys cpu tree."""
    root = CACHE / "sysroot"
    if not (root / "usr" / "bin" / "python3.11").exists():
        for deb in apt_download("arm64", USERLAND, CACHE / "debs-arm64"):
            run(["dpkg", "-x", str(deb), str(root)])
    core = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
            "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text("".join(core.format(i=i) for i in range(cores))
                                           + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B (emulated)\n")
    cpu = root / "sys" / "devices" / "system" / "cpu"
    span = f"0-{cores - 1}"
    files = {"possible": span, "present": span, "online": span, "kernel_max": str(cores - 1)}
    for i in range(cores):
        files.update({f"cpu{i}/cpufreq/cpuinfo_max_freq": "1500000", f"cpu{i}/cpufreq/cpuinfo_min_freq": "600000",
                      f"cpu{i}/topology/physical_package_id": "0", f"cpu{i}/topology/cluster_cpus_list": span,
                      f"cpu{i}/topology/core_siblings_list": span, f"cpu{i}/topology/thread_siblings_list": str(i),
                      f"cpu{i}/cache/index2/level": "2", f"cpu{i}/cache/index2/size": "1024K",
                      f"cpu{i}/cache/index2/shared_cpu_list": span})
    for name, value in files.items():
        (cpu / name).parent.mkdir(parents=True, exist_ok=True)
        (cpu / name).write_text(value + "\n")
    return root


def site_packages() -> Path:
    """The runtime extra's aarch64 wheels and this project's wheel, unpacked (what `pip install` would put there)."""
    site, wheels = CACHE / "site", CACHE / "wheels"
    shutil.rmtree(site, ignore_errors=True)
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                             "manylinux2014_aarch64") for a in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", *platforms, "--python-version", "3.11",
         "--implementation", "cp", "-c", str(ROOT / "constraints.txt"), "-d", str(wheels), *RUNTIME_PINS], timeout=900)
    with tempfile.TemporaryDirectory() as tmp:  # the wheel is built from a copy: no build/ in the work tree
        src = Path(tmp) / "project"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp, str(src)],
            timeout=600)
        own = list(Path(tmp).glob("tinym2net-*.whl"))
        for wheel in [*sorted(wheels.glob("*.whl")), *own]:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
    return site


EMULATED = """
import importlib, json, platform, sys
import numpy as np
from tinym2net import runtime
out, z = {}, np.load(sys.argv[2])
x = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
for path in json.loads(sys.argv[1]):
    out[path] = runtime.load(path, threads=1).logits(x)
np.savez(sys.argv[3], **{str(i): out[p] for i, p in enumerate(out)})
absent = [m for m in ("torch", "onnxruntime", "dvc", "mlflow", "prefect", "librosa") if importlib.util.find_spec(m)]
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), "importable": absent,
                  "litert": runtime.backend_version("litert")}))
"""


def emulated_logits(artifacts: list[Path], testset: Path, tmp: Path) -> tuple[list[np.ndarray], dict]:
    """Logits of each artifact from the aarch64 Python under qemu (Cortex-A72)."""
    binary, root, site = qemu(), sysroot(), site_packages()
    out = tmp / "aarch64.npz"
    env = {"PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    proc = run([str(binary), "-cpu", CPU, "-L", str(root), str(root / "usr" / "bin" / "python3.11"), "-c", EMULATED,
                json.dumps([str(a) for a in artifacts]), str(testset), str(out)], env=env, timeout=3600)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as z:
        return [z[str(i)] for i in range(len(artifacts))], info


def pipeline_artifacts(tmp: Path) -> list[tuple[list[Path], Path]]:
    """Each case's exported artifacts and its test split (from the pipeline's outputs)."""
    from tinym2net.bench import save_testset
    from tinym2net.training import Features

    sets = []
    for case_dir in sorted((ROOT / "models").glob("*/artifacts")):
        case = case_dir.parent.name
        artifacts = sorted(case_dir.glob("*.tm2"))
        features = ROOT / "data" / "features" / case / "features.npz"
        if not artifacts or not features.exists():
            continue
        from tinym2net import tm2
        modalities = list(tm2.read(artifacts[0]).header["inputs"])
        data = Features(features, modalities)
        test = data.rows("test")
        testset = tmp / f"{case}.npz"
        save_testset(testset, {m: v.numpy() for m, v in data.batch(test, modalities).items()}, data.y[test].numpy())
        sets.append((artifacts, testset))
    return sets


def synthetic_artifacts(tmp: Path) -> list[tuple[list[Path], Path]]:
    """A small two-branch model exported at fp32, w8a8, w4a4 and a mixed allocation with float layers."""
    import torch

    from tinym2net.bench import save_testset
    from tinym2net.export import export
    from tinym2net.model import build
    from tinym2net.quant import quantizable_layers, quantize_model

    cfg = {"branches": {"a": {"padding": "same", "layers": [["conv", 8, 3], ["sepconv", 12, 3], ["maxpool", 2]],
                              "dense": 8},
                        "b": {"padding": "valid", "layers": [["conv", 6, 3], ["sepconv", 8, 3], ["maxpool", 2]],
                              "dense": 6}}, "head": [8], "dropout": 0.0}
    shapes = {"a": (3, 16, 16), "b": (1, 24, 9)}
    torch.manual_seed(0)
    model = build(cfg, shapes, 3).eval()
    g = torch.Generator().manual_seed(1)
    calib = [({m: torch.randn(32, *s, generator=g) for m, s in shapes.items()}, torch.zeros(32)) for _ in range(3)]
    names = list(quantizable_layers(model))
    variants = {"fp32": None, "w8a8": dict.fromkeys(names, 8), "w4a4": dict.fromkeys(names, 4),
                "mp": {n: 32 if "conv1" in n or ".dw" in n else 4 if "dense" in n else 8 for n in names}}
    paths = []
    for name, bits in variants.items():
        q = model if bits is None else quantize_model(model, bits, calib)
        export(q, tmp / f"{name}.tm2", case="synthetic", variant=name, classes=["x", "y", "z"], input_shapes=shapes,
               bits=bits)
        paths.append(tmp / f"{name}.tm2")
    x = {m: torch.randn(128, *s, generator=g).numpy() for m, s in shapes.items()}
    save_testset(tmp / "synthetic.npz", x, np.zeros(128, np.int64))
    return [(paths, tmp / "synthetic.npz")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="a small model exported here, not the pipeline's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from tinym2net import runtime

    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sets = [] if args.synthetic else pipeline_artifacts(tmp)
            if not sets:
                log.info("checking a small model exported here (%s)", "--synthetic" if args.synthetic else
                         "no pipeline artifacts under models/*/artifacts")
                args.synthetic, sets = True, synthetic_artifacts(tmp)
            for artifacts, testset in sets:
                with np.load(testset) as z:
                    x = {k[2:]: z[k] for k in z.files if k.startswith("x_")}
                here = [runtime.load(a, threads=1).logits(x) for a in artifacts]
                there, info = emulated_logits(artifacts, testset, tmp)
                if info["machine"] != "aarch64" or info["importable"]:
                    raise CheckError(f"the emulated environment is not a bare aarch64 runtime install: {info}")
                for path, h, a in zip(artifacts, here, there):
                    same = float((h.argmax(1) == a.argmax(1)).mean())
                    log.info("%s: aarch64 (%s, %s, qemu -cpu %s) predictions equal x86_64 on %d/%d samples; "
                             "max |logit difference| %.3g", path.relative_to(path.parents[2]) if not args.synthetic
                             else path.name, info["python"], info["litert"], CPU, round(same * len(h)), len(h),
                             float(np.abs(h - a).max()))
                    if same < 1.0:
                        raise CheckError(f"{path}: aarch64 predictions differ from x86_64 on {1 - same:.1%} of the samples")
    except CheckError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
