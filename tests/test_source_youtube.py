"""The youtube source against real yt-dlp (generic extractor) and a loopback HTTP server serving mp4 files."""
import csv
import hashlib
import http.server
import json
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_no_output, fetch_with, run_source
from tinym2net import media
from tinym2net.errors import DataError
from tinym2net.sources.youtube import PAPER_VIDEOS, check_expected, read_entries

CLASSES = ["helicopter", "bomb", "gun", "tank"]
CASE = {"modalities": {"image": "video_frame", "audio": "video_audio"}, "classes": CLASSES}
MAD = Path("/work/shared/fixtures/mad/mad_dataset_annotation.csv")
MAD_LABELS = {1: "gun", 3: "bomb", 4: "tank", 5: "helicopter"}
SECONDS = 6.0
FLAKY_FAILURES = 2


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of the server's files with HTTP Range support; /flaky.mp4 answers 500 at first."""

    def _serve(self, body: bool) -> None:
        srv = self.server
        name = self.path.split("?")[0].lstrip("/")
        with srv.lock:
            srv.hits[name] += 1
            flaky = name == "flaky.mp4" and srv.hits[name] <= FLAKY_FAILURES
        path = srv.root / name
        if flaky:
            self.send_error(500, "try again")
            return
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        ranged = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if ranged:
            start = int(ranged[1]) if ranged[1] else len(data) - int(ranged[2])
            end = min(int(ranged[2]), end) if ranged[1] and ranged[2] else end
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self.wfile.write(data[start:end + 1])

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A loopback server of three 6 s mp4 videos (with audio); `hits` counts requests per file."""
    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    fps, sr = 10, 22050
    t = np.arange(int(SECONDS * sr)) / sr
    for i, name in enumerate(["a.mp4", "b.mp4", "flaky.mp4"]):
        frames = rng.integers(0, 256, (int(SECONDS * fps), 32, 32, 3), dtype=np.uint8)
        sound = (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32)
        media.write_video(root / name, frames, fps, sound, sr)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.hits, srv.lock = root, Counter(), threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(tmp_path: Path, manifest: Path) -> dict:
    return {"manifest": str(manifest), "mad_labels": MAD_LABELS, "cache_dir": str(tmp_path / "cache"),
            "format": "worst[ext=mp4]/worst", "retries": 3, "backoff_seconds": 0.05, "socket_timeout": 10}


def fetch_video(opts: dict, case: dict, out: Path, seed: int) -> None:
    run_source("youtube", opts, case, out)


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["url", "label", "start", "end"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _manifest(out: Path) -> dict:
    with open(out / "manifest.csv", newline="") as fh:
        return {row["label"]: row for row in csv.DictReader(fh)}


def test_ranges_failures_retries_checksums_and_rerun(tmp_path, server):
    listing = _write(tmp_path / "videos.csv", [
        {"url": f"{server.url}/a.mp4", "label": "helicopter"},
        {"url": f"{server.url}/b.mp4", "label": "bomb", "start": 1, "end": 3.5},
        {"url": f"{server.url}/flaky.mp4", "label": "gun"},
        {"url": f"{server.url}/missing.mp4", "label": "tank"},
    ])
    cfg = _cfg(tmp_path, listing)
    server.hits.clear()
    out = tmp_path / "out1"
    fetch_video(cfg, CASE, out, 0)

    rows = _manifest(out)
    assert sorted(rows) == ["bomb", "gun", "helicopter"]  # tank's URL is a 404
    assert (rows["bomb"]["start"], rows["bomb"]["end"]) == ("0", "")  # only the range was downloaded
    assert (rows["helicopter"]["start"], rows["helicopter"]["end"]) == ("", "")
    assert media.probe(out / rows["bomb"]["image"])["duration"] == pytest.approx(2.5, abs=0.15)
    whole = media.probe(out / rows["helicopter"]["image"])
    assert whole["duration"] == pytest.approx(SECONDS, abs=0.15) and whole["has_audio"] and whole["has_video"]
    assert rows["helicopter"]["image"].startswith("videos/helicopter/")
    assert server.hits["flaky.mp4"] > FLAKY_FAILURES  # failed twice, then succeeded
    assert server.hits["missing.mp4"] == 1  # a 404 is not retried

    lock = json.loads((out / "youtube.lock.json").read_text())
    assert [f["url"] for f in lock["failures"]] == [f"{server.url}/missing.mp4"]
    assert "404" in lock["failures"][0]["error"]
    assert len(lock["videos"]) == 3
    for video in lock["videos"]:
        data = (out / video["file"]).read_bytes()
        assert video["sha256"] == hashlib.sha256(data).hexdigest() and video["bytes"] == len(data)

    # a rerun into a fresh output reuses the cache without a single request
    server.hits.clear()
    again = tmp_path / "out2"
    fetch_video(cfg, CASE, again, 0)
    assert sum(v for k, v in server.hits.items() if k != "missing.mp4") == 0
    assert (again / "manifest.csv").read_text() == (out / "manifest.csv").read_text()
    assert json.loads((again / "youtube.lock.json").read_text())["videos"] == lock["videos"]

    # a new range of an archived video is downloaded; the other videos are still reused
    _write(listing, [{"url": f"{server.url}/a.mp4", "label": "helicopter"},
                     {"url": f"{server.url}/b.mp4", "label": "bomb", "start": 2, "end": 4}])
    server.hits.clear()
    third = tmp_path / "out3"
    fetch_video(cfg, CASE, third, 0)
    assert server.hits["a.mp4"] == 0 and server.hits["b.mp4"] > 0
    assert media.probe(third / _manifest(third)["bomb"]["image"])["duration"] == pytest.approx(2.0, abs=0.15)


def test_nothing_downloadable_is_an_error_without_output(tmp_path, server, small_params):
    listing = _write(tmp_path / "videos.csv", [{"url": f"{server.url}/gone.mp4", "label": "tank"}])
    with pytest.raises(DataError, match=r"none of the 1 entries could be downloaded.*gone\.mp4.*404"):
        fetch_with(small_params, tmp_path / "p", "battlefield", "youtube", _cfg(tmp_path, listing))
    assert_no_output(tmp_path / "p" / "data" / "raw" / "battlefield")


def test_unknown_label_names_the_line(tmp_path):
    listing = _write(tmp_path / "videos.csv", [{"url": "http://127.0.0.1:9/a.mp4", "label": "helicopter"},
                                               {"url": "http://127.0.0.1:9/b.mp4", "label": "drone"}])
    with pytest.raises(DataError, match=r"videos\.csv line 3: label 'drone' is not a class"):
        read_entries(listing, CLASSES, {})


def test_check_expected_on_info_dicts():
    info = {"id": "x1", "title": "BEST Helicopter Sounds! Top sounds that helicopters make (HD)",
            "channel": "Shawn  Adams", "uploader": "shawnadams"}
    title, channel = "Best helicopter sounds. Top sounds that helicopters make", "Shawn Adams"
    assert check_expected(info, title, channel) is None
    assert check_expected(info, "", "") is None
    assert "titled" in check_expected({**info, "title": "Helicopter crash compilation"}, title, channel)
    assert "channel" in check_expected({**info, "channel": "Sound FX Bank", "uploader": "fxbank"}, title, channel)
    assert check_expected({**info, "channel": None, "uploader": "Shawn Adams"}, title, channel) is None


def test_paper_videos_are_four_verified_searches():
    entries = read_entries(PAPER_VIDEOS, CLASSES, {})
    assert sorted(e.label for e in entries) == sorted(CLASSES)
    for e in entries:
        assert e.url.startswith("ytsearch1:") and e.expect_title and e.expect_channel
        assert e.expect_title in e.url and e.expect_channel in e.url


def test_mad_segment_csv_maps_to_the_four_classes():
    entries = read_entries(MAD, CLASSES, {str(k): v for k, v in MAD_LABELS.items()})
    # counts of Label 1/3/4/5 in the CSV; labels 0, 2 and 6 (3062 rows) are dropped
    assert Counter(e.label for e in entries) == {"gun": 1714, "bomb": 1173, "tank": 1125, "helicopter": 1012}
    first = next(e for e in entries if e.label == "helicopter")
    assert first.url.startswith("https://www.youtube.com/watch?v=")
    assert first.start is not None and first.end > first.start
    assert all(e.url.startswith("https://www.youtube.com/") and e.end > e.start for e in entries)


def test_mad_format_cuts_several_segments_from_one_video(tmp_path, server):
    listing = tmp_path / "mad.csv"
    listing.write_text("Youtube title,Video_num,File_id,Start_time,End_time,Label,url\r\n"
                       f'"clip, a",001,0,0,2,5,{server.url}/a.mp4\r\n'
                       f'"clip, a",001,1,3,4.5,5,{server.url}/a.mp4\r\n'
                       f'"clip, a",001,2,4,6,0,{server.url}/a.mp4\r\n'
                       f'"clip, b",002,0,1,2,3,{server.url}/b.mp4\r\n')
    out = tmp_path / "out"
    fetch_video(_cfg(tmp_path, listing), CASE, out, 0)
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["helicopter", "helicopter", "bomb"]  # label 0 (communication) dropped
    durations = [media.probe(out / r["image"])["duration"] for r in rows]
    assert durations == pytest.approx([2.0, 1.5, 1.0], abs=0.15)
    # segments of one video share its id and keep their time in it (for the time-block split)
    assert [r["subject_id"] for r in rows] == ["a", "a", "b"] and [r["offset"] for r in rows] == ["0", "3", "1"]
