"""Containment: a stage writes and deletes only what it owns; outputs appear whole, with the usual modes;
what a killed stage left behind is removed when it runs again."""
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import venv_env
from tinym2net.io import ContainmentError, Folder, Outputs


def test_outputs_refuse_anything_the_stage_does_not_own(tmp_path):
    outs = Outputs(tmp_path, ["data/raw/covid", "metrics/covid/fetch.json"])
    assert outs.path("data/raw/covid/a/b.wav") == tmp_path / "data/raw/covid/a/b.wav"
    for bad in ("data/raw/battlefield", "metrics/covid/evaluate.json", "data/raw/covid/../battlefield",
                "/etc/passwd", "../outside"):
        with pytest.raises(ContainmentError):
            outs.path(bad)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "covid").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ContainmentError, match="resolves outside"):
        outs.path("data/raw/covid/x")


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../x", ".", ""])
def test_a_folder_refuses_names_that_leave_it(tmp_path, name):
    folder = Folder(tmp_path / "out")
    (tmp_path / "out").mkdir()
    with pytest.raises(ContainmentError):
        folder.path(name)


def test_a_folder_deletes_only_inside_itself(tmp_path):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "keep.txt").write_text("a user's file")
    folder = Folder(tmp_path / "out")
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    folder.remove("link")                                   # the link goes, not what it points to
    folder.remove("sub")
    assert (tmp_path / "keep.txt").is_file() and list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ContainmentError):
        folder.remove("..")


def test_outputs_are_atomic_and_get_the_usual_modes(tmp_path):
    outs = Outputs(tmp_path, ["models/covid/quantized", "metrics/covid/quantize.json"])
    old = os.umask(0o022)
    try:
        with outs.directory("models/covid/quantized") as out:
            (out.path("a.pt")).write_text("x")
        outs.write_json("metrics/covid/quantize.json", {"a": 1})
    finally:
        os.umask(old)
    assert oct((tmp_path / "models/covid/quantized").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "metrics/covid/quantize.json").stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError):
        with outs.directory("models/covid/quantized") as out:
            (out.path("b.pt")).write_text("half")
            raise RuntimeError("the stage failed")
    assert [p.name for p in (tmp_path / "models/covid/quantized").iterdir()] == ["a.pt"]   # the old output is kept
    assert [p.name for p in (tmp_path / "models/covid").iterdir()] == ["quantized"]         # no temporary left


def test_what_a_killed_stage_left_is_removed_when_it_runs_again(tmp_path, small_params, repo_root):
    params = dict(small_params)
    params["fetch"] = {**params["fetch"], "covid": {**params["fetch"]["covid"],
                                                   "demo": {**params["fetch"]["covid"]["demo"], "participants": 400}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "pipelines.fetch", "--case", "covid"]
    env = venv_env(PYTHONPATH=str(repo_root))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    raw = tmp_path / "data" / "raw"
    deadline = time.monotonic() + 120
    while not list(raw.glob(".covid.tmp-*/20200413/*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(raw.glob(".covid.tmp-*")), "the killed stage left its temporary folder"
    params["fetch"]["covid"]["demo"]["participants"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    assert sorted(p.name for p in raw.iterdir()) == ["covid"]
