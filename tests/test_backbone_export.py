"""PhiNet and XiNet branches through quantization and export: the artifact agrees with the fake-quantized model in
both runtimes (the thresholds of test_export.py), with the residual adds, the broadcast skips, squeeze-excite,
attention, hard swish and SiLU of the backbones; each branch type builds for the demo cases' inputs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_export import CLASSES, SHAPES, synthetic
from tinym2net import graph, runtime, tm2
from tinym2net.errors import ParamsError
from tinym2net.export import export
from tinym2net.model import build
from tinym2net.params import load
from tinym2net.quant import quantizable_layers, quantize_model

PHINET = {"type": "phinet", "alpha": 0.25, "beta": 1.0, "t0": 4, "num_layers": 5, "downsampling_layers": [5],
          "dense": 32}
XINET = {"type": "xinet", "alpha": 0.5, "gamma": 4, "num_layers": 4, "dense": 32}
CONFIGS = {  # image: PhiNet, audio: XiNet (battlefield's inputs: 3x32x32 and 1x44x13)
    "plain": {"image": PHINET, "audio": XINET},  # micromind's compatibility form; XiNet with ReLU6, no attention
    "full": {"image": {**PHINET, "squeeze_excite": True, "h_swish": True},
             "audio": {**XINET, "attention": True, "activation": "silu"}},
}


@pytest.fixture(scope="module")
def trained(request):
    """A fused PhiNet + XiNet model per configuration, trained briefly on synthetic data."""
    cache = {}

    def get(config):
        if config not in cache:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            torch.manual_seed(0)
            model = build({"branches": CONFIGS[config], "head": [32], "dropout": 0.1}, SHAPES, len(CLASSES))
            x, y = synthetic(384, 1)
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            model.train()
            for _ in range(6):
                for i in range(0, 384, 64):
                    opt.zero_grad()
                    F.cross_entropy(model({m: v[i:i + 64] for m, v in x.items()}), y[i:i + 64]).backward()
                    opt.step()
            torch.set_num_threads(threads)
            calib = [({m: v[i:i + 64] for m, v in x.items()}, y[i:i + 64]) for i in range(0, 256, 64)]
            cache[config] = (model.eval(), calib, synthetic(400, 2))
        return cache[config]
    return get


def bits_of(model, variant):
    names = list(quantizable_layers(model))
    return {"fp32": None, "w8a8": dict.fromkeys(names, 8), "w4a4": dict.fromkeys(names, 4),
            # stems float, the output layer at 8, the rest at 4: precision changes inside each branch
            "mp32": {n: 32 if ".features.conv1." in n else 8 if n == "head.out" else 4 for n in names}}[variant]


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("variant", ["fp32", "w8a8", "w4a4", "mp32"])
def test_backbone_artifact_agrees_with_the_fake_quantized_model(trained, config, variant, tmp_path):
    model, calib, (x, y) = trained(config)
    bits = bits_of(model, variant)
    qmodel = model if bits is None else quantize_model(model, bits, calib)
    path = tmp_path / f"{variant}.tm2"
    export(qmodel, path, case="battlefield", variant=variant, classes=CLASSES, input_shapes=SHAPES, bits=bits)
    with torch.no_grad():
        expected = qmodel(x).numpy()                                       # (N, 4) logits
    assert (expected.argmax(1) == y.numpy()).mean() > 0.5                  # a trained model: margins vary
    feed = {m: v.numpy() for m, v in x.items()}
    for backend in runtime.BACKENDS:
        got = runtime.load(path, backend=backend).logits(feed)
        agreement = (got.argmax(1) == expected.argmax(1)).mean()
        assert agreement >= 0.99, f"{config}/{variant}/{backend}: {agreement:.3f}"
        tolerance = {"fp32": 1e-4, "w8a8": 0.03}.get(variant)
        if tolerance:
            assert np.abs(got - expected).max() < tolerance * np.abs(expected).max(), (config, variant, backend)


def test_the_graph_holds_the_backbone_ops_and_float_tensors_only_where_needed(trained, tmp_path):
    """Residual adds, broadcast skips (avgpool + add), squeeze-excite and attention multiplies are nodes; a tensor a
    float op reads stays float and the quantized layers reading it quantize their own copies."""
    model, calib, _ = trained("full")
    bits = bits_of(model, "w8a8")
    export(quantize_model(model, bits, calib), tmp_path / "a.tm2", case="battlefield", variant="w8a8",
           classes=CLASSES, input_shapes=SHAPES, bits=bits)
    nodes = tm2.read(tmp_path / "a.tm2").header["nodes"]
    ops = {n["op"] for n in nodes}
    assert {"add", "mul", "sigmoid", "hardswish", "avgpool", "conv", "linear"} <= ops
    points, _ = graph.quant_points(nodes)
    assert all(i not in points for n in nodes if n["op"] in graph.FLOAT_OPS for i in n["inputs"])
    own = graph.own_quantizers(nodes)
    assert any(".block" in name for name in own) and any(".layers." in name for name in own)


SHAPES_OF = {"covid": {"cough": (1, 203, 20), "speech": (1, 333, 13)},
             "battlefield": {"audio": (1, 44, 13), "image": (3, 32, 32)}}


@pytest.mark.parametrize("case", ["covid", "battlefield"])
@pytest.mark.parametrize("kind", ["phinet", "xinet"])
def test_each_branch_type_builds_for_the_demo_inputs_and_32x32_frames(repo_root, case, kind):
    params = load(repo_root / "params.yaml")
    spec = {"phinet": PHINET, "xinet": {**XINET, "num_layers": 3}}[kind]
    cfg = params.train[case].model_dump()
    cfg["branches"] = {m: spec for m in SHAPES_OF[case]}
    shapes = {**SHAPES_OF[case]}
    model = build(cfg, shapes, len(params.cases[case].classes))
    out = model({m: torch.randn(2, *s) for m, s in shapes.items()})
    assert out.shape == (2, len(params.cases[case].classes))
    single = build({"branches": {"x": spec}, "head": [8]}, {"x": (1, 32, 32)}, 3)
    assert single({"x": torch.randn(2, 1, 32, 32)}).shape == (2, 3)


def test_a_backbone_too_deep_for_its_input_names_the_branch():
    with pytest.raises(ParamsError, match=r"train.covid.branches.speech: the layers shrink an input of \(1, 333, 13\)"):
        build({"branches": {"speech": {**XINET, "num_layers": 5}}, "head": [8]}, {"speech": (1, 333, 13)}, 2,
              key="train.covid")


def test_widths_that_round_to_no_channels_name_the_branch():
    with pytest.raises(ParamsError, match=r"train.covid.branches.cough: layer .* has no channels"):
        build({"branches": {"cough": {**XINET, "alpha": 0.05}}, "head": [8]}, {"cough": (1, 32, 32)}, 2,
              key="train.covid")
