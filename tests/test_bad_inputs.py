"""Bad input: a one-line error naming the file or key, and no partial output left behind."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import venv_env
from pipelines.fetch import fetch
from pipelines.slice import slice_case
from tinym2net import media
from tinym2net.errors import DataError, ParamsError


def _covid_raw(root, params, count=4):
    """A small demo raw folder for covid, written by the real demo source."""
    p = copy.deepcopy(params)
    p["fetch"]["covid"]["demo"]["participants"] = count
    fetch(p, "covid", root)
    return root / "data" / "raw" / "covid"


def _assert_clean(root, stage_dir):
    """The stage's output folder was not created, and no temporary sibling is left."""
    assert not stage_dir.exists()
    leftovers = [p.name for p in stage_dir.parent.glob(f".{stage_dir.name}.*")] if stage_dir.parent.exists() else []
    assert leftovers == []


@pytest.mark.parametrize("damage, message", [
    ("missing", "audio file not found"),
    ("corrupt", "corrupt audio file"),
    ("empty", "audio file is empty"),
])
def test_bad_audio_file_is_named_and_nothing_is_written(tmp_path, small_params, damage, message):
    raw = _covid_raw(tmp_path, small_params)
    victim = sorted(raw.rglob("counting-normal.wav"))[1]
    if damage == "missing":
        victim.unlink()
    elif damage == "corrupt":
        victim.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    else:
        sf.write(str(victim), np.zeros(0, np.float32), 16000)
    with pytest.raises(DataError, match=message) as err:
        slice_case(small_params, "covid", tmp_path)
    assert str(victim) in str(err.value) and "\n" not in str(err.value)
    _assert_clean(tmp_path, tmp_path / "data" / "interim" / "covid")


def test_video_without_audio_track(tmp_path, small_params):
    raw = tmp_path / "data" / "raw" / "battlefield"
    (raw / "videos").mkdir(parents=True)
    media.write_video(raw / "videos" / "silent.mp4", np.zeros((6, 32, 32, 3), np.uint8), 2)
    (raw / "manifest.csv").write_text("video_id,label,path,start,end\nsilent,gun,videos/silent.mp4,,\n")
    with pytest.raises(DataError, match="silent.mp4: video has no audio track"):
        slice_case(small_params, "battlefield", tmp_path)
    _assert_clean(tmp_path, tmp_path / "data" / "interim" / "battlefield")


@pytest.mark.parametrize("key, value, stage", [
    ("fetch.covid.source", "nope", "fetch"),
    ("fetch.battlefield.source", "tiktok", "fetch"),
    ("fetch.covid.demo.participants", 0, "fetch"),
    ("fetch.battlefield.demo.seconds", -5, "fetch"),
    ("fetch.battlefield.demo.videos_per_class", 0, "fetch"),
    ("slice.covid.chunk_seconds", -2.0, "slice"),
    ("slice.covid.pairs_per_participant", 0, "slice"),
])
def test_bad_params_name_the_key(tmp_path, small_params, key, value, stage):
    params = copy.deepcopy(small_params)
    node = params
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    case = path[1]
    if stage == "slice":
        _covid_raw(tmp_path, small_params)
    with pytest.raises(ParamsError) as err:
        (fetch if stage == "fetch" else slice_case)(params, case, tmp_path)
    assert key in str(err.value) and "\n" not in str(err.value)
    out = {"fetch": "raw", "slice": "interim"}[stage]
    _assert_clean(tmp_path, tmp_path / "data" / out / case)


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
    assert errors == ["error: params.yaml: fetch.covid.source: unknown value 'nope' (choose from coswara, demo, manifest)"]
    assert "Traceback" not in proc.stderr
    assert (old / "keep.txt").read_text() == "a user's earlier output"
