"""The folder source: class folders (optionally inside train/val/test folders) of recordings, pictures or videos."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_no_output, fetch_with
from tinym2net import media
from tinym2net.errors import DataError, ParamsError

AUDIO_CASE = {"classes": ["gunshot", "explosion", "siren", "casual"], "modalities": {"sound": "audio"}}


def _video(path: Path, seconds: float = 3.0, audio: bool = True) -> Path:
    """A small mp4 (32x32, 5 fps) with a sine sound track unless `audio` is False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    frames = rng.integers(0, 256, (int(seconds * 5), 32, 32, 3), dtype=np.uint8)
    sound = (0.3 * np.sin(np.arange(int(seconds * 8000)) * 0.3)).astype(np.float32) if audio else None
    media.write_video(path, frames, 5, sound, 8000)
    return path


def _wav(path: Path, seconds=0.5, sr=16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_wav(path, 0.1 * np.random.default_rng(len(str(path))).standard_normal(int(seconds * sr)), sr)
    return path


def audio_override(small_params) -> dict:
    """An audio-only case `sounds` beside the paper cases (its own slice, featurize and branch)."""
    return {"cases": {"sounds": AUDIO_CASE},
            "slice": {"sounds": {**small_params["slice"]["covid"], "samples_per_subject": 2}},
            "featurize": {"sounds": {"batch_size": 64, "sound": small_params["featurize"]["covid"]["cough"]}},
            "train": {"sounds": {**small_params["train"]["covid"], "branches": {"sound": small_params["train"]["covid"]["branches"]["cough"]},
                                 "head": [16]}},
            "fetch": {"sounds": {"source": "folder", "on_error": "fail", "folder": {"path": None}}}}


@pytest.fixture
def fetch_sounds(small_params, tmp_path):
    from tinym2net.params import merge

    params = merge(small_params, audio_override(small_params))

    def run(root: Path, **fetch_over):
        return fetch_with(params, tmp_path / "project", "sounds", "folder", {"path": str(root)},
                          {"fetch": {"sounds": fetch_over}})
    return run


def test_class_folders_of_recordings_ignore_other_files_in_one_warning(tmp_path, fetch_sounds, caplog):
    root = tmp_path / "sounds"
    for c in AUDIO_CASE["classes"]:
        _wav(root / c / f"{c}1.wav")
        _wav(root / c / f"{c}2.flac")
        (root / c / "readme.txt").write_text("notes")
        _video(root / c / "clip.mp4", seconds=1)
    raw, rows = fetch_sounds(root)
    assert len(rows) == 8 and {r["label"] for r in rows.values()} == set(AUDIO_CASE["classes"])
    assert rows["gunshot-gunshot1"]["sound"] == "files/gunshot-gunshot1.wav" and rows["gunshot-gunshot1"]["split"] == ""
    ignored = [r for r in caplog.records if "ignored 8 files that are not audio" in r.message]
    assert len(ignored) == 1, [r.message for r in caplog.records]


def test_split_folders_fix_the_split(tmp_path, fetch_sounds):
    root = tmp_path / "sounds"
    for split, n in (("train", 3), ("test", 2)):
        for c in AUDIO_CASE["classes"]:
            for i in range(n):
                _wav(root / split / c / f"{c}{i}.wav")
    _, rows = fetch_sounds(root)
    assert {r["split"] for s, r in rows.items() if s.startswith("test-")} == {"test"}
    assert sum(r["split"] == "train" for r in rows.values()) == 12


def test_a_folder_that_is_not_a_class_is_named(tmp_path, fetch_sounds):
    root = tmp_path / "sounds"
    _wav(root / "gunshot" / "a.wav")
    _wav(root / "birds" / "b.wav")
    with pytest.raises(DataError, match=r"folder 'birds' is not a class \(gunshot, explosion, siren, casual\)"):
        fetch_sounds(root)
    assert_no_output(tmp_path / "project" / "data" / "raw" / "sounds")


def test_bad_files_are_skipped_and_listed_under_skip(tmp_path, fetch_sounds):
    root = tmp_path / "sounds"
    for c in AUDIO_CASE["classes"]:
        _wav(root / c / "ok.wav")
    (root / "siren" / "broken.wav").write_bytes(b"RIFF" + bytes(40))
    raw, rows = fetch_sounds(root, on_error="skip")
    assert len(rows) == 4
    report = json.loads((tmp_path / "project" / "metrics" / "sounds" / "fetch.json").read_text())
    assert report["skipped"] == 1 and "broken.wav" in report["skipped_files"][0]["where"]


def test_videos_of_a_video_case(tmp_path, small_params):
    root = tmp_path / "clips"
    _video(root / "tank" / "t1.mp4")
    _video(root / "gun" / "g1.mp4")
    _video(root / "gun" / "mute.mp4", audio=False)
    with pytest.raises(DataError, match="mute.mp4: video has no audio track"):
        fetch_with(small_params, tmp_path / "p", "battlefield", "folder", {"path": str(root)})
    (root / "gun" / "mute.mp4").unlink()
    raw, rows = fetch_with(small_params, tmp_path / "p", "battlefield", "folder", {"path": str(root)})
    assert [(s, r["label"], r["image"] == r["audio"]) for s, r in rows.items()] == [
        ("gun-g1", "gun", True), ("tank-t1", "tank", True)]
    assert (raw / rows["tank-t1"]["image"]).read_bytes() == (root / "tank" / "t1.mp4").read_bytes()


def test_a_case_of_two_separate_modalities_needs_a_manifest(tmp_path, small_params):
    with pytest.raises(ParamsError, match=r"fetch\.covid\.folder: a folder gives one file per subject"):
        fetch_with(small_params, tmp_path / "p", "covid", "folder", {"path": str(tmp_path)})
