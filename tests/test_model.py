"""The architecture comes from params.yaml and reproduces the paper's flatten sizes."""
import pytest
import torch

from tinym2net.params import load
from tinym2net.errors import ParamsError
from tinym2net.model import build

SHAPES = {"covid": {"cough": (1, 203, 20), "speech": (1, 333, 13)},
          "battlefield": {"audio": (1, 44, 13), "image": (3, 32, 32)}}
FLATTEN = {"covid": {"cough": 672, "speech": 1296}, "battlefield": {"audio": 2112, "image": 4096}}


@pytest.mark.parametrize("case", ["covid", "battlefield"])
def test_default_architectures_match_the_paper(repo_root, case):
    params = load(repo_root / "params.yaml")
    n_classes = len(params.cases[case].classes)
    assert {m: params.input_shape(case, m) for m in SHAPES[case]} == SHAPES[case]   # featurize gives these
    cfg = params.train[case].model_dump()
    model = build(cfg, SHAPES[case], n_classes)
    assert model.flatten_sizes() == FLATTEN[case]
    inputs = {m: torch.randn(3, *s) for m, s in SHAPES[case].items()}
    assert model(inputs).shape == (3, n_classes)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    unimodal = build(cfg, SHAPES[case], n_classes, [next(iter(SHAPES[case]))])
    assert unimodal.param_count() < model.param_count()


def test_unknown_layer_type_names_the_key(repo_root):
    cfg = load(repo_root / "params.yaml").train["covid"].model_dump()
    cfg["branches"]["cough"]["layers"][1] = ["transformer", 32, 3]
    with pytest.raises(ParamsError, match=r"train.covid.branches.cough.layers\[1\]"):
        build(cfg, SHAPES["covid"], 2, key="train.covid")


def test_layers_that_shrink_the_input_to_nothing_name_the_branch(repo_root):
    cfg = load(repo_root / "params.yaml").train["covid"].model_dump()
    cfg["branches"]["cough"]["layers"].append(["maxpool", 8])   # 21x1 after the paper's layers: a pool of 8 empties it
    with pytest.raises(ParamsError, match=r"train.covid.branches.cough: the layers shrink an input of \(1, 203, 20\)"):
        build(cfg, SHAPES["covid"], 2, key="train.covid")
