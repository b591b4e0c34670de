"""End to end with each real source: `dvc repro evaluate@<case>` on small local data in a temporary git repository.

One repository for the module; each test selects a source in params.yaml (`fetch.<case>.source` and
its options) and reproduces its case up to `evaluate`: coswara (a copy of the Coswara sample, and with
its default label map, which keeps no positive participant: the run stops before training),
manifest (a CSV of generated WAVs), youtube (real yt-dlp against a loopback server of generated mp4s)
and folder (class folders of the same mp4s). One partition: the partitions have their own tests.
"""
import copy
import csv
import http.server
import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import make_dvc_repo, run, venv_env
from test_pipeline import ran_stages
from test_source_youtube import _Handler
from tinym2net import media
from tinym2net.params import merge

pytestmark = pytest.mark.slow

STAGES = ["fetch", "slice", "featurize", "evaluate"]
MODELS = {"covid": {"fused", "cough", "speech"}, "battlefield": {"fused", "image", "audio"}}
EMPTY = "9XKj7fAmvwPUas9GFPZuTpev7T03"
SMALL_DEFAULT_LABELS = {"positive_mild": "positive", "positive_moderate": "positive", "positive_asymp": "positive",
                        "healthy": "negative"}  # the Coswara sample's participant with 0-sample recordings
CLASSES = ["helicopter", "bomb", "gun", "tank"]
SECONDS, FPS, SR = 24, 2, 16000
# the shared, reduced configuration of these tests (over params.yaml and tests/small.yaml)
SMALL = {"partitions": [0],
         "slice": {"covid": {"samples_per_subject": 3, "split": {"val": 0.34, "test": 0.34,
                                                                 "min_subjects": {"train": 1, "val": 0, "test": 1}}},
                   "battlefield": {"split": {"min_subjects": {"train": 1, "val": 1, "test": 1}}}},
         "train": {"covid": {"epochs": 1}, "battlefield": {"epochs": 1}}}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sources")


@pytest.fixture(scope="module")
def repo(base, repo_root, small_params):
    """A fresh git+DVC repository holding the project; each test sets its source and reproduces."""
    params = merge(small_params, SMALL)
    env = venv_env(MLFLOW_TRACKING_URI=f"sqlite:///{base / 'mlflow.db'}", PYTHONPATH=str(base / "repo"))
    path = make_dvc_repo(base / "repo", params, env)
    return path, env, params


def select(repo, case: str, source: str, options: dict) -> None:
    """Select `source` (with `options`) for `case` in params.yaml."""
    path, env, params = repo
    params = copy.deepcopy(params)
    fetch = params["fetch"][case]
    fetch["source"] = source
    fetch[source] = merge(fetch.get(source) or {}, options)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def reproduce(repo, case: str, source: str, options: dict) -> tuple[Path, str]:
    """Select `source` (with `options`) for `case` and run `dvc repro evaluate@<case>`."""
    path, env, _ = repo
    select(repo, case, source, options)
    return path, run(["dvc", "repro", f"evaluate@{case}"], path, env)


def check_run(path: Path, case: str, output: str) -> dict:
    """Every stage up to evaluate ran for `case` (none of the other case), with every model evaluated; `scale`
    depends on params only, so DVC reuses it after the first source of a case."""
    ran = ran_stages(output)
    assert ran - {f"scale@{case}"} == {f"{s}@{case}" for s in STAGES} | {f"train@{case}-0"}, output[-3000:]
    result = json.loads((path / "metrics" / case / "evaluate.json").read_text())
    assert set(result["models"]) == MODELS[case]
    for m in result["models"].values():
        assert m["uar"]["values"][0] is not None and m["accuracy"]["std"] is None   # one partition: no spread
    assert result["protocol"]["leaky"] is False and result["protocol"]["test_samples"][0] > 0
    return result


def raw_manifest(path: Path, case: str) -> list[dict]:
    with open(path / "data" / "raw" / case / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def interim_subjects(path: Path, case: str) -> dict[str, set[str]]:
    """split -> subjects (participants or videos) of the samples that the slice stage wrote."""
    with open(path / "data" / "interim" / case / "samples.csv", newline="") as fh:
        out: dict[str, set[str]] = {}
        for row in csv.DictReader(fh):
            out.setdefault(row["split_0"], set()).add(row["subject_id"])
        return out


# ----------------------------------------------------------------------------- covid


def test_coswara(repo, base, coswara_fixture):
    clone = base / "Coswara-Data"
    shutil.copytree(coswara_fixture, clone)
    for p in [clone, *clone.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    labels = {"healthy": "negative", "resp_illness_not_identified": "positive", "no_resp_illness_exposed": "positive"}
    path, output = reproduce(repo, "covid", "coswara", {"path": str(clone), "min_quality": 0, "labels": labels})
    check_run(path, "covid", output)
    rows = {r["subject_id"]: r["label"] for r in raw_manifest(path, "covid")}
    assert rows == {"L7S8iIPKgiO6QWLC3mGkROCMa0s1": "positive", "0Rlzhiz6bybk77wdLjxwy7yLDhg1": "positive",
                    "1ctsxp37dWNbCbizTioZzpAWqJx2": "negative", "VcmjCfW6ddgE9lFhDXTO6hDlb452": "negative",
                    "0zexHIcM7tQDdnFiEj2Eb0v3g212": "negative"}  # the empty participant is dropped
    assert EMPTY not in rows and not (path / "data" / "raw" / "covid" / "20200413" / EMPTY).exists()
    splits = interim_subjects(path, "covid")
    assert set(splits) >= {"train", "test"} and set().union(*splits.values()) == set(rows)


def test_coswara_default_labels_stop_before_training(repo, base, coswara_fixture):
    """The sample holds no positive participant under the default label map: slice stops with the class
    counts in one line, and nothing downstream is written."""
    import subprocess
    path, env, _ = repo
    for stage_dir in ("data/interim/covid", "data/features/covid", "models/covid"):
        shutil.rmtree(path / stage_dir, ignore_errors=True)
    select(repo, "covid", "coswara", {"path": str(coswara_fixture), "min_quality": 1,
                                      "labels": SMALL_DEFAULT_LABELS})
    proc = subprocess.run(["dvc", "repro", "evaluate@covid"], cwd=path, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    errors = [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "class 'positive' has 0 subjects in train" in errors[0], proc.stderr[-2000:]
    assert "positive: 0 train, 0 val, 0 test" in errors[0] and "fetch.covid.coswara" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    for stage_dir in ("data/interim/covid", "data/features/covid", "models/covid/trained"):
        assert not (path / stage_dir).exists()


def _wav_pairs(root: Path) -> Path:
    """Generated cough/speech WAVs of 7 subjects and a CSV listing them (labels in the listing's own words)."""
    rng = np.random.default_rng(1)
    (root / "audio").mkdir(parents=True)
    subjects = [(f"s{i}", label) for i, label in enumerate(["covid"] * 3 + ["healthy"] * 3 + ["unsure"])]
    lines = []
    for sid, label in subjects:
        tone = 300.0 if label == "covid" else 600.0
        for m, (sr, seconds) in {"cough": (16000, 3.0), "speech": (22050, 4.5)}.items():
            t = np.arange(int(sr * seconds)) / sr
            audio = 0.3 * np.sin(2 * np.pi * tone * t) + 0.05 * rng.standard_normal(len(t))
            media.write_wav(root / "audio" / f"{sid}_{m}.wav", audio, sr)
        lines.append({"subject_id": sid, "label": label, "cough": f"audio/{sid}_cough.wav",
                      "speech": f"audio/{sid}_speech.wav"})
    listing = root / "recordings.csv"
    with open(listing, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject_id", "label", "cough", "speech"])
        writer.writeheader()
        writer.writerows(lines)
    return listing


def test_manifest(repo, base):
    listing = _wav_pairs(base / "recordings")
    labels = {"covid": "positive", "healthy": "negative", "unsure": None}
    path, output = reproduce(repo, "covid", "manifest", {"path": str(listing), "labels": labels})
    check_run(path, "covid", output)
    rows = raw_manifest(path, "covid")
    assert {r["subject_id"]: r["label"] for r in rows} == {
        "s0": "positive", "s1": "positive", "s2": "positive", "s3": "negative", "s4": "negative", "s5": "negative"}
    assert all((path / "data" / "raw" / "covid" / r[m]).is_file() for r in rows for m in ("cough", "speech"))
    splits = interim_subjects(path, "covid")
    assert set(splits) >= {"train", "test"} and set().union(*splits.values()) == {f"s{i}" for i in range(6)}


# ----------------------------------------------------------------------------- battlefield


@pytest.fixture(scope="module")
def clips(base) -> Path:
    """clips/<class>/<name>.mp4: one 24 s video per class and a second helicopter one (32x32, 2 fps, with sound);
    each class has its own colour and tone, over noise."""
    root = base / "clips"
    rng = np.random.default_rng(0)
    t = np.arange(SECONDS * SR) / SR
    for label, name in [(c, f"{c}1") for c in CLASSES] + [("helicopter", "helicopter2")]:
        k = CLASSES.index(label)
        frames = rng.integers(0, 80, (SECONDS * FPS, 32, 32, 3)).astype(np.uint8)
        frames[..., k % 3] += np.uint8(100 + 50 * (k // 3))
        sound = 0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t) + 0.05 * rng.standard_normal(len(t))
        (root / label).mkdir(parents=True, exist_ok=True)
        media.write_video(root / label / f"{name}.mp4", frames, FPS, sound.astype(np.float32), SR)
    return root


@pytest.fixture(scope="module")
def server(clips):
    """A loopback HTTP server (with Range support) of the clips folder."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.hits, srv.lock = clips, Counter(), threading.Lock()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_youtube(repo, base, server):
    listing = base / "youtube.csv"
    entries = [{"url": f"{server.url}/{c}/{c}1.mp4", "label": c, "start": "", "end": ""} for c in CLASSES]
    entries.append({"url": f"{server.url}/helicopter/helicopter2.mp4", "label": "helicopter", "start": 4, "end": 16})
    with open(listing, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["url", "label", "start", "end"])
        writer.writeheader()
        writer.writerows(entries)
    options = {"manifest": str(listing), "cache_dir": str(base / "youtube-cache"), "retries": 1,
               "backoff_seconds": 0.1, "socket_timeout": 10}
    path, output = reproduce(repo, "battlefield", "youtube", options)
    check_run(path, "battlefield", output)
    rows = raw_manifest(path, "battlefield")
    assert Counter(r["label"] for r in rows) == {"helicopter": 2, "bomb": 1, "gun": 1, "tank": 1}
    durations = sorted(media.probe(path / "data" / "raw" / "battlefield" / r["image"])["duration"] for r in rows)
    assert durations == pytest.approx([12] + [SECONDS] * 4, abs=0.6)  # only the range of helicopter2
    lock = json.loads((path / "data" / "raw" / "battlefield" / "youtube.lock.json").read_text())
    assert len(lock["videos"]) == 5 and lock["failures"] == []
    assert set(interim_subjects(path, "battlefield")) >= {"train", "val", "test"}


def test_folder(repo, clips):
    path, output = reproduce(repo, "battlefield", "folder", {"path": str(clips)})
    check_run(path, "battlefield", output)
    rows = raw_manifest(path, "battlefield")
    assert [(r["subject_id"], r["label"], r["image"]) for r in rows] == [
        ("bomb-bomb1", "bomb", "files/bomb-bomb1.mp4"), ("gun-gun1", "gun", "files/gun-gun1.mp4"),
        ("helicopter-helicopter1", "helicopter", "files/helicopter-helicopter1.mp4"),
        ("helicopter-helicopter2", "helicopter", "files/helicopter-helicopter2.mp4"),
        ("tank-tank1", "tank", "files/tank-tank1.mp4")]
    assert not (path / "data" / "raw" / "battlefield" / "youtube.lock.json").exists()
    splits = interim_subjects(path, "battlefield")
    assert set(splits) >= {"train", "val", "test"}
    assert set().union(*splits.values()) == {r["subject_id"] for r in rows}
