"""Export -> load -> predict: the artifact agrees with the fake-quantized model, is as small as its bits, and
refuses damaged files with one line; the export stage writes and checks every variant."""
import ast
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from tinym2net import bitpack, runtime, tm2
from tinym2net.backends import ort
from tinym2net.errors import ModelFileError
from tinym2net.export import export, load_variant
from tinym2net.model import build
from tinym2net.quant import fold_batchnorm, quantizable_layers, quantize_model, weight_scale
from tinym2net.training import save_model

CASE = "battlefield"
SHAPES = {"image": (3, 32, 32), "audio": (1, 44, 13)}  # the battlefield architecture of params.yaml
CLASSES = ["helicopter", "bomb", "gun", "tank"]
N_TRAIN, N_TEST = 384, 600


def synthetic(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Four classes, each a fixed random pattern per modality, under heavy noise (so margins vary)."""
    patterns = {m: torch.randn(len(CLASSES), *s, generator=torch.Generator().manual_seed(100 + i))
                for i, (m, s) in enumerate(SHAPES.items())}
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    return {m: patterns[m][y] + 2.0 * torch.randn(n, *s, generator=g) for m, s in SHAPES.items()}, y


def mixed_bits(model) -> dict[str, int]:
    """A mixed allocation like the ILP's: first convolutions and output at 8 bits, the rest at 4."""
    return {n: 8 if n.endswith("conv1.conv") or n == "head.out" else 4 for n in quantizable_layers(model)}


def float_mixed_bits(model) -> dict[str, int]:
    """First convolutions and first depthwise convolutions float (32), the rest at 8 or 4: precision changes
    inside each branch (float -> int8 between the depthwise and pointwise convolutions)."""
    return {n: 32 if n.endswith("conv1.conv") or n.endswith("sepconv2.dw") else 8 if n == "head.out" else 4
            for n in quantizable_layers(model)}


@pytest.fixture(scope="module")
def trained(small_params):
    """The battlefield fused model, trained briefly on synthetic data; the calibration and test inputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = small_params["train"][CASE]
    model = build(cfg, SHAPES, len(CLASSES))
    x, y = synthetic(N_TRAIN, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        for i in range(0, N_TRAIN, 64):
            opt.zero_grad()
            F.cross_entropy(model({m: v[i:i + 64] for m, v in x.items()}), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    calib = [({m: v[i:i + 64] for m, v in x.items()}, y[i:i + 64]) for i in range(0, 256, 64)]
    test = synthetic(N_TEST, 2)
    yield model, cfg, calib, test
    torch.set_num_threads(threads)


_VARIANTS: dict = {}


def variant_model(trained, variant):
    """The fake-quantized `variant` of the trained model (built once per test session) and its bits."""
    model, _, calib, _ = trained
    key = (id(model), variant)
    if key not in _VARIANTS:
        bits = {"fp32": None, "w8a8": dict.fromkeys(quantizable_layers(model), 8), "mp": mixed_bits(model),
                "w4a4": dict.fromkeys(quantizable_layers(model), 4), "mp32": float_mixed_bits(model)}[variant]
        _VARIANTS[key] = (model if bits is None else quantize_model(model, bits, calib)), bits
    return _VARIANTS[key]


def write(model, bits, path: Path, variant="mp") -> int:
    return export(model, path, case=CASE, variant=variant, classes=CLASSES, input_shapes=SHAPES, bits=bits)


@pytest.mark.parametrize("backend", runtime.BACKENDS)
@pytest.mark.parametrize("variant", ["fp32", "w8a8", "mp", "w4a4", "mp32"])
def test_exported_model_agrees_with_the_fake_quantized_model(trained, variant, backend, tmp_path):
    qmodel, bits = variant_model(trained, variant)
    x, _ = trained[3]
    write(qmodel, bits, tmp_path / f"{variant}.tm2", variant)
    deployed = runtime.load(tmp_path / f"{variant}.tm2", backend=backend)
    with torch.no_grad():
        expected = qmodel(x).numpy()                                       # (N, 4) logits
    got = deployed.logits({m: v.numpy() for m, v in x.items()})
    agreement = (got.argmax(1) == expected.argmax(1)).mean()
    assert agreement >= 0.99, f"{variant}: {agreement:.3f}"
    # float layers match to rounding; at 8 bits only the int32 biases (rounded to the accumulator's
    # scale, as integer kernels need) move a few activations by one step
    tolerance = {"fp32": 1e-4, "w8a8": 0.03}.get(variant)
    if tolerance:
        assert np.abs(got - expected).max() < tolerance * np.abs(expected).max()
    assert deployed.classes == CLASSES and deployed.modalities == qmodel.modalities
    assert deployed.backend == backend


@pytest.mark.parametrize("variant", ["w8a8", "w4a4", "mp32"])
def test_the_two_runtimes_compute_the_same_integers(trained, variant, tmp_path):
    """LiteRT (int8 tensors relabelled for exact b-bit clamps) and ONNX Runtime (uint8 QDQ with Clips) are built
    independently from the same file; their logits differ only by the kernels' requantization rounding."""
    qmodel, bits = variant_model(trained, variant)
    x, _ = trained[3]
    write(qmodel, bits, tmp_path / f"{variant}.tm2", variant)
    feed = {m: v.numpy() for m, v in x.items()}
    lite, onnx_ = (runtime.load(tmp_path / f"{variant}.tm2", backend=b).logits(feed) for b in ("litert", "onnx"))
    assert (lite.argmax(1) == onnx_.argmax(1)).mean() >= 0.995
    assert np.median(np.abs(lite - onnx_)) < 0.01 * np.abs(onnx_).max()


def test_litert_graph_holds_the_exact_integers_and_b_bit_ranges(trained, tmp_path):
    """4-bit weights are the fake quantizer's integers; a 4-bit unsigned activation is stored with zero point
    127 - 15 = 112 (int8 saturation is its upper clamp), a 4-bit signed one with scale 1/7 (RELU_N1_TO_1 clamps it)."""
    from ai_edge_litert.interpreter import Interpreter

    qmodel, bits = variant_model(trained, "mp")
    write(qmodel, bits, tmp_path / "mp.tm2")
    session = runtime.load(tmp_path / "mp.tm2", backend="litert").session
    details = {d["name"]: d for d in session.interpreter.get_tensor_details()}
    interp = Interpreter(model_content=session.flatbuffer)  # without a delegate: constant tensors stay readable
    interp.allocate_tensors()
    name = "branches.image.dense.fc"
    layer = dict(qmodel.named_modules())[name]
    scale = weight_scale(layer.weight, 4)
    reference = torch.clamp(torch.round(layer.weight.detach() / scale[:, None]), -7, 7).numpy()
    stored = interp.get_tensor(details[f"{name}.weight"]["index"])
    np.testing.assert_array_equal(np.sort(stored.ravel()), np.sort(reference.ravel()))  # columns permuted (NHWC)
    zero_points = {d["quantization_parameters"]["zero_points"][0] for d in details.values()
                   if d["dtype"] == np.int8 and d["quantization_parameters"]["zero_points"].size == 1}
    assert 112 in zero_points  # unsigned 4-bit activations
    scales = {round(float(d["quantization_parameters"]["scales"][0]), 6) for d in details.values()
              if d["dtype"] == np.int8 and d["quantization_parameters"]["scales"].size == 1}
    assert round(1 / 7, 6) in scales  # signed 4-bit activations (a pointwise input after a depthwise conv)


def test_four_bit_weights_keep_exactly_the_fake_quantized_integers(trained, tmp_path):
    qmodel, bits = variant_model(trained, "mp")
    write(qmodel, bits, tmp_path / "mp.tm2")
    artifact = tm2.read(tmp_path / "mp.tm2")
    name = "branches.image.dense.fc"
    assert bits[name] == 4
    layer = dict(qmodel.named_modules())[name]
    scale = weight_scale(layer.weight, 4)
    reference = torch.clamp(torch.round(layer.weight.detach() / scale[:, None]), -7, 7).numpy()
    stored = artifact.tensors[f"{name}.weight"]
    np.testing.assert_array_equal(stored, reference)
    entry = artifact.header["tensors"][f"{name}.weight"]
    assert entry["dtype"] == "int4" and entry["nbytes"] == stored.size // 2  # two weights per byte
    # the ONNX graph runs them on int8 kernels, holding exactly the 4-bit values
    proto = ort.build(artifact)
    onnx.checker.check_model(proto)
    int8 = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8
            and numpy_helper.to_array(t).size == stored.size]
    assert any(np.array_equal(np.sort(w.ravel()), np.sort(reference.ravel())) for w in int8)
    assert all(np.abs(w).max() <= 7 for w in int8 if w.size == stored.size)


@pytest.mark.parametrize("variant", ["w8a8", "mp", "w4a4"])
def test_artifact_size_is_params_times_bits_plus_scales(trained, variant, tmp_path):
    qmodel, bits = variant_model(trained, variant)
    size = write(qmodel, bits, tmp_path / f"{variant}.tm2", variant)
    assert size == (tmp_path / f"{variant}.tm2").stat().st_size
    expected = 0
    for name, layer in quantizable_layers(fold_batchnorm(qmodel)).items():
        expected += layer.weight.numel() * bits[name] / 8 + 4 * layer.weight.shape[0]  # packed weights + scales
        expected += 4 * layer.bias.numel()                                              # float32 biases
    assert abs(size - expected) / expected < 0.05, (size, expected)
    assert size >= expected  # nothing is missing


def test_sizes_follow_the_bit_allocation(trained, tmp_path):
    sizes = {v: write(*variant_model(trained, v), tmp_path / f"{v}.tm2", v) for v in ("fp32", "w8a8", "mp", "w4a4")}
    assert sizes["fp32"] > 3.8 * sizes["w8a8"] and sizes["w8a8"] > sizes["mp"] > sizes["w4a4"]
    assert sizes["w8a8"] > 1.9 * sizes["w4a4"]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 12])
def test_bit_packing_round_trips(bits):
    rng = np.random.default_rng(bits)
    qmax = 2 ** (bits - 1) - 1
    values = rng.integers(-qmax, qmax + 1, 1001)  # odd count: the last byte is partial
    packed = bitpack.pack_bits(values, bits)
    assert len(packed) == (1001 * bits + 7) // 8
    np.testing.assert_array_equal(bitpack.unpack_bits(packed, bits, 1001), values)


def test_four_bit_packing_is_two_per_byte_low_nibble_first():
    assert bitpack.pack_bits(np.array([1, -1, 7, -7]), 4) == bytes([0xF1, 0x97])


@pytest.fixture
def artifact_file(trained, tmp_path):
    path = tmp_path / "mp.tm2"
    write(*variant_model(trained, "mp"), path)
    return path


def one_line_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as err:
        runtime.load(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_truncated_artifact_is_a_clear_error(artifact_file):
    data = artifact_file.read_bytes()
    artifact_file.write_bytes(data[:len(data) // 2])
    assert "truncated" in one_line_error(artifact_file)
    artifact_file.write_bytes(data[:10])
    assert "not a tinym2net artifact" in one_line_error(artifact_file) or "truncated" in one_line_error(artifact_file)


def test_corrupt_artifact_is_a_clear_error(artifact_file):
    data = bytearray(artifact_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the packed weights
    artifact_file.write_bytes(bytes(data))
    assert "corrupt" in one_line_error(artifact_file)


def test_other_files_are_refused(artifact_file, tmp_path):
    other = tmp_path / "model.tm2"
    torch.save({"state_dict": {}}, other)
    assert "not a tinym2net artifact" in one_line_error(other)
    assert "not found" in one_line_error(tmp_path / "missing.tm2")


DEVICE_MODULES = ["runtime.py", "tm2.py", "bitpack.py", "graph.py", "bench.py", "latency.py", "io.py", "errors.py",
                  "backends/__init__.py", "backends/litert.py", "backends/ort.py"]


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_modules_import_only_the_device_stack(repo_root, module):
    tree = ast.parse((repo_root / "src" / "tinym2net" / module).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    relative = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0}
    third_party = imported - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "onnx", "onnxruntime", "ai_edge_litert", "flatbuffers"}, third_party
    assert {r.split(".")[0] for r in relative if r} <= {m.split("/")[0].removesuffix(".py") for m in DEVICE_MODULES}, \
        relative


# --- the export stage ----------------------------------------------------------------------------

def write_case(root: Path, trained, variants=("fp32", "w8a8", "mp")) -> None:
    """A case as the earlier stages leave it: partition 0's fused.pt, quantized/<variant>.pt, features.npz
    (the inputs as they are, so statistics of mean 0 and std 1) with stats.json."""
    model, cfg, _, (x, y) = trained
    fused = root / "models" / CASE / "trained" / "p0" / "fused.pt"
    fused.parent.mkdir(parents=True)
    save_model(fused, model, model.modalities, SHAPES, len(CLASSES), cfg)
    (root / "models" / CASE / "quantized").mkdir(parents=True)
    for v in variants:
        qmodel, bits = variant_model(trained, v)
        torch.save({"bits": bits, "state_dict": qmodel.state_dict()}, root / "models" / CASE / "quantized" / f"{v}.pt")
    features = root / "data" / "features" / CASE
    features.mkdir(parents=True)
    n = len(y)
    np.savez(features / "features.npz", y=y.numpy(), split=np.array([["test"] * n]), subject=np.arange(n).astype(str),
             unit=np.arange(n).astype(str), group=np.array([""] * n), **{f"x_{m}": v.numpy() for m, v in x.items()},
             **{f"idx_{m}": np.arange(n) for m in x})
    (features / "stats.json").write_text(json.dumps({"partitions": [{m: {
        "shape": list(v.shape[1:]), "stat_shape": [1, 1, 1], "mean": [0.0], "std": [1.0]} for m, v in x.items()}]}))


def test_saved_variant_rebuilds_to_the_same_model(trained, tmp_path):
    write_case(tmp_path, trained, ("mp",))
    rebuilt, bits = load_variant(tmp_path / "models" / CASE / "trained" / "p0" / "fused.pt",
                                 tmp_path / "models" / CASE / "quantized" / "mp.pt")
    qmodel, _ = variant_model(trained, "mp")
    x, _ = trained[3]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), qmodel(x))
    assert bits == mixed_bits(trained[0])


def test_export_stage_writes_checked_artifacts_and_logs_them(trained, tmp_path, small):
    import mlflow

    from pipelines.export import export as export_stage

    write_case(tmp_path, trained)
    export_stage(small, CASE, tmp_path)
    result = json.loads((tmp_path / "metrics" / CASE / "export.json").read_text())
    assert list(result["variants"]) == ["fp32", "mp", "w8a8"]
    for name, r in result["variants"].items():
        path = tmp_path / "models" / CASE / "artifacts" / f"{name}.tm2"
        assert r["file_bytes"] == path.stat().st_size and r["agreement"] >= 0.99
        assert r["deployed"]["accuracy"]["value"] == r["accuracy"]
        assert abs(r["overhead"]) < 0.05
    runs = mlflow.search_runs(experiment_names=[f"tinym2net-{CASE}"], output_format="list")
    parent = next(r for r in runs if r.info.run_name == f"{CASE}/export")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.run_name for r in children} == {f"{CASE}/export/{n}" for n in ("fp32", "mp", "w8a8")}
    mp = next(r for r in children if r.info.run_name == f"{CASE}/export/mp")
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(mp.info.run_id)] == ["mp.tm2"]
