"""The videos source: local class folders or a CSV of path,label,start,end."""
import csv
from pathlib import Path

import numpy as np
import pytest

from tinym2net import media
from tinym2net.errors import DataError
from tinym2net.sources import get_fetcher
from tinym2net.sources.videos import fetch_video

CASE = {"modalities": ["image", "audio"], "classes": ["helicopter", "bomb", "gun", "tank"]}


def _video(path: Path, seconds: float = 3.0, audio: bool = True) -> Path:
    """A small mp4 (32x32, 5 fps) with a sine sound track unless `audio` is False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    frames = rng.integers(0, 256, (int(seconds * 5), 32, 32, 3), dtype=np.uint8)
    sound = (0.3 * np.sin(np.arange(int(seconds * 8000)) * 0.3)).astype(np.float32) if audio else None
    media.write_video(path, frames, 5, sound, 8000)
    return path


def _fetch(tmp_path: Path, **opts) -> tuple[Path, list[dict]]:
    out = tmp_path / "out"
    out.mkdir()
    cfg = {"source": "videos", "videos": {"path": None, "csv": None, **opts}}
    fetch_video(cfg, CASE, out, 0)
    with open(out / "manifest.csv", newline="") as fh:
        return out, list(csv.DictReader(fh))


def test_class_folders(tmp_path):
    root = tmp_path / "clips"
    _video(root / "tank" / "t1.mp4")
    _video(root / "tank" / "t2.mp4")
    _video(root / "gun" / "g1.mp4")
    (root / "gun" / "notes.txt").write_text("not a video")
    out, rows = _fetch(tmp_path, path=str(root))
    assert [(r["video_id"], r["label"], r["path"]) for r in rows] == [
        ("gun-g1", "gun", "videos/gun/g1.mp4"), ("tank-t1", "tank", "videos/tank/t1.mp4"),
        ("tank-t2", "tank", "videos/tank/t2.mp4")]
    assert all(r["start"] == r["end"] == "" for r in rows)
    assert (out / "videos/tank/t2.mp4").read_bytes() == (root / "tank" / "t2.mp4").read_bytes()


def test_csv_with_segments(tmp_path):
    clip = _video(tmp_path / "src" / "long.mp4", seconds=4)
    _video(tmp_path / "src" / "sky.mp4")
    listing = tmp_path / "src" / "list.csv"
    listing.write_text("path,label,start,end\nlong.mp4,bomb,0,2\nlong.mp4,bomb,2.5,4\nsky.mp4,helicopter,,\n")
    out, rows = _fetch(tmp_path, csv=str(listing))
    assert [(r["label"], r["path"], r["start"], r["end"]) for r in rows] == [
        ("bomb", "videos/bomb/long.mp4", "0", "2"), ("bomb", "videos/bomb/long.mp4", "2.5", "4"),
        ("helicopter", "videos/helicopter/sky.mp4", "", "")]
    assert len({r["video_id"] for r in rows}) == 3
    assert media.probe(out / "videos/bomb/long.mp4")["duration"] == pytest.approx(media.probe(clip)["duration"])


def test_unknown_class_folder_and_label(tmp_path):
    _video(tmp_path / "clips" / "drone" / "d1.mp4")
    with pytest.raises(DataError, match=r"folder 'drone' is not a class \(helicopter, bomb, gun, tank\)"):
        _fetch(tmp_path, path=str(tmp_path / "clips"))
    assert list((tmp_path / "out").iterdir()) == []
    listing = tmp_path / "list.csv"
    listing.write_text("path,label,start,end\nclips/drone/d1.mp4,drone,,\n")
    (tmp_path / "out").rmdir()
    with pytest.raises(DataError, match=r"list\.csv line 2: label 'drone' is not a class"):
        _fetch(tmp_path, csv=str(listing))


def test_unreadable_or_silent_video_is_named(tmp_path):
    root = tmp_path / "clips"
    _video(root / "gun" / "ok.mp4")
    (root / "gun" / "broken.mp4").write_bytes(b"this is not an mp4 file" * 100)
    with pytest.raises(DataError, match=r"broken\.mp4: not a readable video file"):
        _fetch(tmp_path, path=str(root))
    assert list((tmp_path / "out").iterdir()) == []
    (root / "gun" / "broken.mp4").unlink()
    _video(root / "gun" / "mute.mp4", audio=False)
    (tmp_path / "out").rmdir()
    with pytest.raises(DataError, match=r"mute\.mp4 has no audio track"):
        _fetch(tmp_path, path=str(root))


def test_params_select_this_source():
    params = {"cases": {"battlefield": {"kind": "video"}}, "fetch": {"battlefield": {"source": "videos"}}}
    assert get_fetcher(params, "battlefield") is fetch_video
