"""Bad input: a one-line error naming the file or key, no partial output left behind, and no traceback."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import venv_env
from pipelines.fetch import fetch
from pipelines.slice import slice_stage
from tinym2net import media
from tinym2net.errors import DataError, ParamsError
from tinym2net.params import merge, validate


def _covid_raw(root, small, count=4):
    """A small demo raw folder for covid, written by the real demo source."""
    fetch(validate(merge(small.model_dump(), {"fetch": {"covid": {"demo": {"participants": count}}}})), "covid", root)
    return root / "data" / "raw" / "covid"


def _assert_clean(stage_dir):
    """The stage's output folder was not created, and no temporary sibling is left."""
    assert not stage_dir.exists()
    leftovers = [p.name for p in stage_dir.parent.glob(f".{stage_dir.name}.*")] if stage_dir.parent.exists() else []
    assert leftovers == []


@pytest.mark.parametrize("damage, message", [
    ("missing", "audio file not found"),
    ("corrupt", "corrupt audio file|not an audio file"),
    ("empty", "empty file"),
    ("truncated", "truncated"),
    ("nan", "non-finite samples"),
    ("huge", "peak amplitude 1e\\+30 is not an audio level"),
])
def test_bad_audio_file_is_named_and_nothing_is_written(tmp_path, small, damage, message):
    raw = _covid_raw(tmp_path, small)
    victim = sorted(raw.rglob("counting-normal.wav"))[1]
    if damage == "missing":
        victim.unlink()
    elif damage == "corrupt":
        victim.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:5000])
    else:
        audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
        audio[100:110] = np.nan if damage == "nan" else 1e30
        sf.write(str(victim), audio, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=message) as err:
        slice_stage(small, "covid", tmp_path)
    assert str(victim) in str(err.value) and "\n" not in str(err.value)
    _assert_clean(tmp_path / "data" / "interim" / "covid")


def test_channels_that_cancel_are_named_in_a_warning(tmp_path, caplog):
    left = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.2
    sf.write(str(tmp_path / "cancel.wav"), np.stack([left, -left], 1), 16000, subtype="FLOAT")
    audio, _ = media.read_audio(tmp_path / "cancel.wav", max_seconds=60)
    assert np.abs(audio).max() == 0
    assert any("cancel.wav" in r.message and "cancel in the downmix" in r.message for r in caplog.records)


def test_a_recording_longer_than_the_limit_is_refused_before_reading(tmp_path):
    sf.write(str(tmp_path / "long.wav"), np.zeros(16000 * 30, np.float32), 16000)
    with pytest.raises(DataError, match="long.wav: 30 s long, over limits.recording_seconds \\(10 s\\)"):
        media.read_audio(tmp_path / "long.wav", max_seconds=10)


def test_video_without_audio_track(tmp_path, small):
    raw = tmp_path / "data" / "raw" / "battlefield"
    (raw / "videos").mkdir(parents=True)
    media.write_video(raw / "videos" / "silent.mp4", np.zeros((6, 32, 32, 3), np.uint8), 2)
    (raw / "manifest.csv").write_text("subject_id,label,image,audio\nsilent,gun,videos/silent.mp4,videos/silent.mp4\n")
    with pytest.raises(DataError, match="silent.mp4: video has no audio track"):
        slice_stage(small, "battlefield", tmp_path)
    _assert_clean(tmp_path / "data" / "interim" / "battlefield")


@pytest.mark.parametrize("key, value, stage", [
    ("fetch.covid.demo.participants", 0, "fetch"),
    ("fetch.battlefield.demo.seconds", -5, "fetch"),
    ("fetch.battlefield.demo.videos_per_class", 0, "fetch"),
    ("slice.covid.chunk_seconds", -2.0, "slice"),
    ("slice.covid.samples_per_subject", 0, "slice"),
])
def test_bad_params_name_the_key(small_params, key, value, stage):
    params = copy.deepcopy(small_params)
    node = params
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    with pytest.raises(ParamsError) as err:
        validate(params)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_cli_prints_one_line_and_keeps_existing_output(tmp_path, small_params, repo_root):
    """Through the real entry point: exit 1, `error: ...` on one line, no traceback, old output kept."""
    params = copy.deepcopy(small_params)
    params["fetch"]["covid"]["source"] = "nope"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    old = tmp_path / "data" / "raw" / "covid"
    old.mkdir(parents=True)
    (old / "keep.txt").write_text("a user's earlier output")
    proc = subprocess.run([sys.executable, "-m", "pipelines.fetch", "--case", "covid"], cwd=tmp_path,
                          capture_output=True, text=True, env=venv_env(PYTHONPATH=str(repo_root)))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: params.yaml: fetch.covid.source: Input should be 'demo', 'coswara', 'manifest', "
                      "'folder' or 'youtube' (got 'nope')"]
    assert "Traceback" not in proc.stderr
    assert (old / "keep.txt").read_text() == "a user's earlier output"
