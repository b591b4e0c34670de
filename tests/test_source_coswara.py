"""The coswara source on a real 6-participant sample of Coswara-Data (split archive, CSVs, quality labels)."""
import csv
import functools
import http.server
import logging
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from tinym2net import media
from tinym2net.errors import DataError, ParamsError
from tinym2net.sources import get_fetcher
from tinym2net.sources.coswara import CoswaraError, fetch_paired_audio

FIXTURE = Path("/work/shared/fixtures/coswara")
CASE = {"modalities": ["cough", "speech"], "classes": ["negative", "positive"]}
EMPTY = "9XKj7fAmvwPUas9GFPZuTpev7T03"  # 0-sample WAV files
PARTS = "20200413/20200413.tar.gz"


@pytest.fixture
def clone(tmp_path) -> Path:
    """A writable copy of the fixture (the original is read-only)."""
    root = tmp_path / "Coswara-Data"
    shutil.copytree(FIXTURE, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _cfg(root, **overrides) -> dict:
    opts = {"path": str(root) if root else None, "url": None, "cache_dir": "unused", "dates": None,
            "recordings": {"cough": "cough-heavy", "speech": "counting-normal"}, "min_quality": 1,
            "labels": {"positive_mild": "positive", "positive_moderate": "positive",
                       "positive_asymp": "positive", "healthy": "negative"}}
    return {"source": "coswara", "coswara": {**opts, **overrides}}


def _run(cfg, tmp_path, name="out") -> tuple[Path, dict]:
    out = tmp_path / name
    out.mkdir()
    fetch_paired_audio(cfg, CASE, out, 0)
    with open(out / "manifest.csv", newline="") as fh:
        return out, {row["subject_id"]: row for row in csv.DictReader(fh)}


def test_defaults_keep_annotated_healthy_participants(clone, tmp_path):
    out, rows = _run(_cfg(clone), tmp_path)
    # healthy: 1cts, Vcmj, 0zex; Vcmj's recordings have quality 0; the others are not `healthy`
    assert sorted(rows) == ["0zexHIcM7tQDdnFiEj2Eb0v3g212", "1ctsxp37dWNbCbizTioZzpAWqJx2"]
    assert {r["label"] for r in rows.values()} == {"negative"}
    assert next(iter(rows.values()))["cough"].endswith("/cough-heavy.wav")
    rates = {media.read_wav(out / rows[s][m])[1] for s in rows for m in ("cough", "speech")}
    assert rates == {48000, 44100}  # mixed sample rates kept as they are
    assert sorted(p.name for p in (out / "20200413").iterdir()) == sorted(rows)  # nothing else extracted


def test_label_mapping_quality_filter_and_empty_participant(clone, tmp_path, caplog):
    labels = {"healthy": "positive", "resp_illness_not_identified": "negative"}
    with caplog.at_level(logging.INFO):
        out, rows = _run(_cfg(clone, labels=labels, min_quality=0), tmp_path)
    assert EMPTY not in rows and not (out / "20200413" / EMPTY).exists()
    assert f"participant {EMPTY} skipped" in caplog.text and "0 samples" in caplog.text
    assert {s: r["label"] for s, r in rows.items()} == {
        "L7S8iIPKgiO6QWLC3mGkROCMa0s1": "negative",   # resp_illness_not_identified
        "0zexHIcM7tQDdnFiEj2Eb0v3g212": "positive", "1ctsxp37dWNbCbizTioZzpAWqJx2": "positive",
        "VcmjCfW6ddgE9lFhDXTO6hDlb452": "positive"}   # healthy; no_resp_illness_exposed is unmapped
    assert "kept 4 participants (1 negative, 3 positive); dropped 2" in caplog.text

    # quality >= 2 in both recordings: only 0Rlz (not mapped here), 1cts
    _, rows = _run(_cfg(clone, labels=labels, min_quality=2), tmp_path, "q2")
    assert sorted(rows) == ["1ctsxp37dWNbCbizTioZzpAWqJx2"]


def test_ids_are_case_sensitive(clone, tmp_path):
    """An id differing only in case is a different participant: its quality labels do not apply."""
    path = clone / "annotations" / "cough-heavy_labels.csv"
    path.write_text(path.read_text().replace("0zexHIcM7tQDdnFiEj2Eb0v3g212", "0ZEXHICM7TQDDNFIEJ2EB0V3G212"))
    _, rows = _run(_cfg(clone), tmp_path)
    assert sorted(rows) == ["1ctsxp37dWNbCbizTioZzpAWqJx2"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: os.truncate(d / "20200413.tar.gz.ab", 1_000_000),
     r"^20200413\.tar\.gz\.ab is truncated \(gzip stream ends at 4\.1 MB\); re-run fetch$"),
    (lambda d: (d / "20200413.tar.gz.ab").unlink(),
     r"^20200413\.tar\.gz\.ab is missing \(the archive stops at the end of 20200413\.tar\.gz\.aa, 3\.1 MB\)"),
    (lambda d: (d / "20200413.tar.gz.ab").rename(d / "20200413.tar.gz.ac"),
     r"^20200413\.tar\.gz\.ab is missing \(found \.aa, \.ac"),
], ids=["truncated", "last-missing", "gap"])
def test_damaged_archive_is_named_and_leaves_no_output(clone, tmp_path, damage, message):
    damage(clone / "20200413")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CoswaraError, match=message):
        fetch_paired_audio(_cfg(clone, min_quality=0, labels={"healthy": "negative"}), CASE, out, 0)
    assert list(out.iterdir()) == []


def test_missing_annotations_and_bad_options(clone, tmp_path):
    (clone / "annotations" / "counting-normal_labels.csv").unlink()
    with pytest.raises(CoswaraError, match=r"counting-normal_labels\.csv not found.*min_quality: 0"):
        _run(_cfg(clone), tmp_path)
    with pytest.raises(ParamsError, match=r"fetch\.covid\.coswara\.labels\.healthy: 'sick' is not a class"):
        _run(_cfg(clone, labels={"healthy": "sick"}), tmp_path, "b")
    with pytest.raises(ParamsError, match=r"fetch\.covid\.coswara\.recordings"):
        _run(_cfg(clone, recordings={"cough": "cough-heavy"}), tmp_path, "c")


@pytest.fixture
def http_root():
    """Serve a folder on loopback: yields a function folder -> base URL."""
    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_port}"

    yield serve
    for srv in servers:
        srv.shutdown()
        srv.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_raw_url_is_mirrored_into_the_cache(clone, tmp_path, http_root):
    base = http_root(clone)
    cfg = _cfg(None, url=base, cache_dir=str(tmp_path / "cache"), dates=[20200413])
    _, rows = _run(cfg, tmp_path)
    assert sorted(rows) == ["0zexHIcM7tQDdnFiEj2Eb0v3g212", "1ctsxp37dWNbCbizTioZzpAWqJx2"]
    mirrored = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in (mirrored / "20200413").iterdir()) == [
        "20200413.csv", "20200413.tar.gz.aa", "20200413.tar.gz.ab"]
    with pytest.raises(ParamsError, match=r"fetch\.covid\.coswara\.dates: list the dates"):
        _run(_cfg(None, url=base, cache_dir=str(tmp_path / "cache")), tmp_path, "nodates")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/Coswara-Data", "http://127.0.0.1:{port}/Coswara-Data.git"],
                         ids=["raw", "git"])
def test_unreachable_url_says_what_to_do(tmp_path, url):
    url = url.format(port=_closed_port())
    out = tmp_path / "out"
    out.mkdir()
    cfg = _cfg(None, url=url, cache_dir=str(tmp_path / "cache"), dates=["20200413"])
    expected = rf"^cannot reach {url}.*: .+; clone it elsewhere and set fetch\.covid\.coswara\.path$"
    with pytest.raises(DataError, match=expected):
        fetch_paired_audio(cfg, CASE, out, 0)
    assert list(out.iterdir()) == []


def test_params_select_this_source():
    params = {"cases": {"covid": {"kind": "paired_audio"}}, "fetch": {"covid": {"source": "coswara"}}}
    assert get_fetcher(params, "covid") is fetch_paired_audio
