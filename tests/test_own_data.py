"""Your own data, end to end in a temporary git+DVC repository, next to the paper cases:

- `cough`: the real CC0 cough sample (MP3, 8 kHz stereo call-centre and 48 kHz mono Telegram recordings)
  as a single-modality case from a manifest with a `group` column, through `benchmark`;
- `sounds`: an audio-only folder of four classes with a fixed `test/` folder;
- `covid3`: the demo's covid with a third recording (breathing): a three-branch fused model and three baselines.
"""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_dvc_repo, run, venv_env
from test_pipeline import ran_stages
from tinym2net import media
from tinym2net.params import merge

pytestmark = pytest.mark.slow

SOUNDS = ["gunshot", "explosion", "siren", "casual"]


def cough_manifest(fixture: Path, out: Path) -> Path:
    """subject_id,label,cough,group from the sample's metadata (PCR result, recording channel), beside a
    copy of its MP3s."""
    shutil.copytree(fixture / "raw", out.parent / "raw")
    rows = [{"subject_id": Path(m["filename"]).stem, "label": "positive" if m["covid19"] else "negative",
             "cough": f"raw/{m['filename']}", "group": m["source"]}
            for m in json.loads((fixture / "metadata.json").read_text())]
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject_id", "label", "cough", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def sound_folder(root: Path) -> Path:
    """train/<class>/ and test/<class>/ of 1 s WAVs: each class its own band of noise and tone."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 3)):
        for k, c in enumerate(SOUNDS):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                t = np.arange(16000) / 16000
                audio = 0.3 * np.sin(2 * np.pi * (300 + 400 * k) * t) + 0.1 * rng.standard_normal(16000)
                media.write_wav(root / split / c / f"{c}{i}.wav", audio, 16000)
    return root


def own_params(small_params: dict, base: Path, cough_cc0: Path) -> dict:
    covid = small_params
    cough_branch = covid["train"]["covid"]["branches"]["cough"]
    one = {**covid["train"]["covid"], "head": [16]}
    split = {"strategy": "subject", "val": 0.2, "test": 0.3, "min_subjects": {"train": 1, "val": 1, "test": 1}}
    override = {
        "partitions": [0],
        "cases": {"cough": {"classes": ["negative", "positive"], "modalities": {"cough": "audio"}},
                  "sounds": {"classes": SOUNDS, "modalities": {"sound": "audio"}},
                  "covid3": {"classes": ["negative", "positive"],
                             "modalities": {"cough": "audio", "speech": "audio", "breathing": "audio"}}},
        "fetch": {"cough": {"source": "manifest", "on_error": "fail",
                            "manifest": {"path": str(cough_manifest(cough_cc0, base / "cough" / "list.csv")),
                                         "labels": None}},
                  "sounds": {"source": "folder", "on_error": "fail", "folder": {"path": str(sound_folder(base / "sounds"))}},
                  "covid3": {**covid["fetch"]["covid"], "demo": {**covid["fetch"]["covid"]["demo"], "participants": 24,
                                                                 "seconds": {"cough": [2.5, 4], "speech": [4, 6],
                                                                             "breathing": [4, 6]}}}},
        "slice": {"cough": {**covid["slice"]["covid"], "samples_per_subject": 3,
                            "split": {**split, "stratify_by_group": True}},
                  "sounds": {**covid["slice"]["covid"], "chunk_seconds": 1.0, "samples_per_subject": 1, "split": split},
                  "covid3": {**covid["slice"]["covid"], "split": {**split, "test": 0.25, "val": 0.25}}},
        "featurize": {"cough": {"batch_size": 64, "cough": covid["featurize"]["covid"]["cough"]},
                      "sounds": {"batch_size": 64, "sound": {**covid["featurize"]["covid"]["cough"], "hop_length": 108}},
                      "covid3": {**covid["featurize"]["covid"], "breathing": covid["featurize"]["covid"]["speech"]}},
        "train": {"cough": {**one, "branches": {"cough": cough_branch}},
                  "sounds": {**one, "branches": {"sound": cough_branch}},
                  "covid3": {**covid["train"]["covid"], "branches": {**covid["train"]["covid"]["branches"],
                                                                     "breathing": covid["train"]["covid"]["branches"]["speech"]}}},
    }
    return merge(small_params, override)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, small_params, cough_cc0_fixture):
    base = tmp_path_factory.mktemp("own")
    path = base / "repo"
    env = venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}", PYTHONPATH=str(path))
    make_dvc_repo(path, own_params(small_params, base, cough_cc0_fixture), env)
    output = run(["dvc", "repro", "benchmark@cough", "evaluate@cough", "evaluate@sounds", "evaluate@covid3"], path, env)
    return path, output


def test_the_real_cough_sample_runs_through_benchmark_as_a_single_modality_case(repo):
    path, output = repo
    assert {"fetch@cough", "train@cough-0", "evaluate@cough", "quantize@cough", "export@cough",
            "benchmark@cough"} <= ran_stages(output)
    raw = list(csv.DictReader(open(path / "data" / "raw" / "cough" / "manifest.csv")))
    assert len(raw) == 24 and {r["group"] for r in raw} == {"call-center", "telegram"}
    evaluate = json.loads((path / "metrics" / "cough" / "evaluate.json").read_text())
    assert set(evaluate["models"]) == {"cough"} and evaluate["gain"] == {}        # one branch, no baselines
    groups = evaluate["models"]["cough"]["groups"]
    assert set(groups) <= {"call-center", "telegram"} and groups, groups          # per-group figures
    fetch = json.loads((path / "metrics" / "cough" / "fetch.json").read_text())
    assert fetch["groups"] == {"call-center": {"negative": 4, "positive": 9}, "telegram": {"negative": 8, "positive": 3}}
    assert "label rate differs strongly between groups" in fetch["confound_warning"]
    assert "call-center 69% positive (13 subjects)" in fetch["confound_warning"]
    bench = json.loads((path / "metrics" / "cough" / "benchmark.json").read_text())
    assert set(bench["variants"]) >= {"fp32", "w8a8", "mp", "w4a4"}
    assert (path / "models" / "cough" / "artifacts" / "mp.tm2").is_file()


def test_a_fixed_test_folder_is_exactly_the_test_split(repo):
    path, output = repo
    samples = list(csv.DictReader(open(path / "data" / "interim" / "sounds" / "samples.csv")))
    test = {s["subject_id"] for s in samples if s["split_0"] == "test"}
    assert test == {f"test-{c}-{c}{i}" for c in SOUNDS for i in range(3)}
    assert {s["split_0"] for s in samples if s["subject_id"].startswith("train-")} == {"train", "val"}
    split = json.loads((path / "data" / "interim" / "sounds" / "split.json").read_text())
    assert split["strategy"] == "given" and split["leaky"] is False
    evaluate = json.loads((path / "metrics" / "sounds" / "evaluate.json").read_text())
    assert set(evaluate["models"]) == {"sound"} and evaluate["protocol"]["test_samples"] == [12]


def test_three_modalities_train_a_three_branch_fused_model_and_three_baselines(repo):
    path, _ = repo
    evaluate = json.loads((path / "metrics" / "covid3" / "evaluate.json").read_text())
    assert set(evaluate["models"]) == {"fused", "cough", "speech", "breathing"}
    assert set(evaluate["gain"]) == {"cough", "speech", "breathing"}
    train = json.loads((path / "metrics" / "covid3" / "train" / "p0.json").read_text())
    assert set(train["models"]["fused"]["flatten"]) == {"cough", "speech", "breathing"}
    raw = list(csv.DictReader(open(path / "data" / "raw" / "covid3" / "manifest.csv")))
    assert all(r["breathing"].endswith("breathing-deep.wav") for r in raw)
