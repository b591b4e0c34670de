"""params.yaml's schema: every bad value is one line naming its key, checked when a stage starts."""
import copy
import subprocess
import sys

import pytest
import yaml

from conftest import venv_env
from tinym2net.errors import ParamsError
from tinym2net.params import load, validate


def _set(raw: dict, key: str, value):
    raw = copy.deepcopy(raw)
    node = raw
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    if value is _set:
        del node[last]
    else:
        node[last] = value
    return raw


# (key, value, what the message must say): the probes of issue 10 and a few more
PROBES = [
    ("fetch.covid.source", ["demo"], "fetch.covid.source: Input should be 'demo', 'coswara'"),
    ("seed", "zero", "seed: Input should be a valid dictionary"),
    ("seed.train", "zero", "seed.train: Input should be a valid integer"),
    ("seed", _set, "seed: Field required"),
    ("train", _set, "train: Field required"),
    ("slice.covid.chunk_seconds", 1e-9, "slice.covid: chunk_seconds 1e-09 is under 64 samples at 22050 Hz"),
    ("fetch.covid.demo.sample_rates", [0], "fetch.covid.demo.sample_rates[0]: Input should be greater than or equal to 4000"),
    ("cases.covid.modalities.cough", "tabular", "cases.covid.modalities.cough: Input should be 'audio', 'image'"),
    ("ilp.bit_choices", [], "ilp.bit_choices: List should have at least 1 item"),
    ("ilp.bit_choices", [0], "ilp.bit_choices[0]: Input should be greater than or equal to 2"),
    ("ilp.bit_choices", [4, 9], "ilp.bit_choices[1]: Input should be less than or equal to 8"),
    ("train.covid.branches.cough.dense", 0, "train.covid.branches.cough.dense: Input should be greater than 0"),
    ("train.covid.branches.cough.layers", [["transformer", 3, 3]], "train.covid.branches.cough.layers[0][0]"),
    ("slice.covid.split", {"strategy": "subject", "val": 0.6, "test": 0.6, "min_subjects": {"train": 1, "val": 1, "test": 1}},
     "slice.covid.split: val + test must leave a train split (got val 0.6 + test 0.6 >= 1)"),
    ("featurize.covid.cough.type", "image", "featurize.covid.cough.type: audio modalities are featurized as type: mfcc"),
    ("featurize.covid.cough.n_mfcc", 64, "featurize.covid.cough: n_mfcc 64 exceeds n_mels 40"),
    ("cases.covid.classes", ["../x", "y"], "cases.covid.classes[0]: String should match pattern"),
    ("partitions", [1, 2], "partitions: must be 0, 1, ..., P-1"),
    ("evaluate.typo", 1, "evaluate.typo: Extra inputs are not permitted"),
    ("fetch.battlefield.source", "coswara", "fetch.battlefield: source 'coswara' needs its section coswara:"),
    ("slice.covid.split.strategy", "time_blocks", "slice.covid.split: strategy time_blocks needs block_seconds"),
    ("train.covid.branches.cough", {"type": "resnet", "dense": 4},
     "train.covid.branches.cough: type must be one of dscnn, phinet, xinet"),
    ("train.covid.branches.cough", {"type": "phinet", "alpha": 0.5, "beta": 1, "t0": 6, "num_layers": 7,
                                    "downsampling_layers": [8], "dense": 4},
     "train.covid.branches.cough.downsampling_layers: block 8 is not one of blocks 4..num_layers (7)"),
    ("train.covid.branches.cough", {"type": "phinet", "alpha": 0, "beta": 1, "t0": 6, "num_layers": 7,
                                    "downsampling_layers": [5], "dense": 4},
     "train.covid.branches.cough.alpha: Input should be greater than 0"),
    ("train.covid.branches.cough", {"type": "phinet", "alpha": 0.5, "beta": 1, "t0": 6, "num_layers": 7,
                                    "downsampling_layers": [5], "dense": 4, "layers": []},
     "train.covid.branches.cough.layers: Extra inputs are not permitted"),
    ("train.covid.branches.cough", {"type": "xinet", "alpha": 0.5, "gamma": 4, "dense": 4},
     "train.covid.branches.cough.num_layers: Field required"),
    ("train.covid.branches.cough", {"type": "xinet", "alpha": 0.5, "gamma": 4, "num_layers": 4, "dense": 4,
                                    "activation": "gelu"},
     "train.covid.branches.cough.activation: Input should be 'relu6' or 'silu'"),
    ("train.covid.branches.breath", {"padding": "same", "layers": [["conv", 4, 3]], "dense": 4},
     "train.covid.branches.breath: not a modality of case covid"),
]


@pytest.mark.parametrize("key, value, says", PROBES, ids=[p[0] for p in PROBES])
def test_each_bad_value_is_one_line_naming_its_key(small_params, key, value, says):
    with pytest.raises(ParamsError) as err:
        validate(_set(small_params, key, value))
    text = str(err.value)
    assert text.startswith("params.yaml: ") and "\n" not in text
    assert says in text, text


def test_the_shipped_params_and_the_test_override_are_valid(repo_root, small):
    params = load(repo_root / "params.yaml")
    assert params.partitions == [0, 1, 2] and set(params.cases) == {"covid", "battlefield"}
    assert small.cases["battlefield"].video and not small.cases["covid"].video


def test_a_stage_stops_before_any_work_on_bad_params(tmp_path, small_params, repo_root):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_set(small_params, "train.covid.dropout", 1.5)))
    proc = subprocess.run([sys.executable, "-m", "pipelines.slice", "--case", "covid"], cwd=tmp_path,
                          capture_output=True, text=True, env=venv_env(PYTHONPATH=str(repo_root)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [
        "error: params.yaml: train.covid.dropout: Input should be less than 1 (got 1.5)"]
    assert not (tmp_path / "data").exists()
