"""The coswara source on a real 6-participant sample of Coswara-Data (split archive, CSVs, quality labels)."""
import json
import functools
import http.server
import logging
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from conftest import SHARED, assert_no_output, fetch_with
from tinym2net import media
from tinym2net.errors import DataError, ParamsError
from tinym2net.sources.coswara import CoswaraError

FIXTURE = SHARED / "coswara"
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
    return {"path": str(root) if root else None, "url": None, "cache_dir": "unused", "dates": None, **overrides}


@pytest.fixture
def _run(small_params):
    def run(cfg, tmp_path, name="out") -> tuple[Path, dict]:
        return fetch_with(small_params, tmp_path / name, "covid", "coswara", cfg)
    return run


def test_defaults_keep_annotated_healthy_participants(clone, tmp_path, _run):
    out, rows = _run(_cfg(clone), tmp_path)
    # healthy: 1cts, Vcmj, 0zex; Vcmj's recordings have quality 0; the others are not `healthy`
    assert sorted(rows) == ["0zexHIcM7tQDdnFiEj2Eb0v3g212", "1ctsxp37dWNbCbizTioZzpAWqJx2"]
    assert {r["label"] for r in rows.values()} == {"negative"}
    assert next(iter(rows.values()))["cough"].endswith("/cough-heavy.wav")
    rates = {media.read_audio(out / rows[s][m], max_seconds=600)[1] for s in rows for m in ("cough", "speech")}
    assert rates == {48000, 44100}  # mixed sample rates kept as they are
    assert sorted(p.name for p in (out / "20200413").iterdir()) == sorted(rows)  # nothing else extracted


def test_label_mapping_quality_filter_and_empty_participant(clone, tmp_path, caplog, _run):
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


def test_ids_are_case_sensitive(clone, tmp_path, _run):
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
def test_damaged_archive_is_named_and_leaves_no_output(clone, tmp_path, damage, message, _run):
    damage(clone / "20200413")
    with pytest.raises(CoswaraError, match=message):
        _run(_cfg(clone, min_quality=0, labels={"healthy": "negative"}), tmp_path)
    assert_no_output(tmp_path / "out" / "data" / "raw" / "covid")


def test_missing_annotations_and_bad_options(clone, tmp_path, _run):
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


def test_raw_url_is_mirrored_into_the_cache(clone, tmp_path, http_root, _run):
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
def test_unreachable_url_says_what_to_do(tmp_path, url, _run):
    url = url.format(port=_closed_port())
    cfg = _cfg(None, url=url, cache_dir=str(tmp_path / "cache"), dates=["20200413"])
    expected = rf"^cannot reach {url}.*: .+; clone it elsewhere and set fetch\.covid\.coswara\.path$"
    with pytest.raises(DataError, match=expected):
        _run(cfg, tmp_path)
    assert_no_output(tmp_path / "out" / "data" / "raw" / "covid")


def _hostile_clone(clone: Path, ids: list[str]) -> None:
    """The fixture with `ids` added to the date CSV (and mapped to a class in combined_data.csv)."""
    for name in ("20200413/20200413.csv", "combined_data.csv"):
        path = clone / name
        lines = path.read_text().splitlines()
        header = lines[0].split(",")
        for pid in ids:
            row = dict.fromkeys(header, "")
            row.update(id=pid, covid_status="healthy")
            lines.append(",".join(f'"{row[h]}"' if "," in row[h] else row[h] for h in header))
        path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("pid", ["../victim", "/abs/victim", ".", "..", "a/b"])
def test_a_hostile_participant_id_never_becomes_a_path(clone, tmp_path, http_root, pid, small_params):
    """Served over HTTP as a mirror: the id is refused in one line and nothing outside the stage is touched."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("a user's file")
    _hostile_clone(clone, [pid])
    base = http_root(clone)
    cfg = _cfg(None, url=base, cache_dir=str(tmp_path / "cache"), dates=["20200413"], min_quality=0)
    root = tmp_path / "project"
    earlier = root / "data" / "raw" / "covid"
    earlier.mkdir(parents=True)
    (earlier / "old.txt").write_text("earlier output")
    with pytest.raises(DataError) as err:
        fetch_with(small_params, root, "covid", "coswara", cfg)
    assert "participant id" in str(err.value) and "\n" not in str(err.value)
    assert (victim / "keep.txt").read_text() == "a user's file" and (earlier / "old.txt").is_file()
    # skipped and reported under on_error: skip, the others kept
    raw, rows = fetch_with(small_params, root, "covid", "coswara", cfg, {"fetch": {"covid": {"on_error": "skip"}}})
    assert sorted(rows) == ["0zexHIcM7tQDdnFiEj2Eb0v3g212", "1ctsxp37dWNbCbizTioZzpAWqJx2", "VcmjCfW6ddgE9lFhDXTO6hDlb452"]
    report = json.loads((root / "metrics" / "covid" / "fetch.json").read_text())
    assert report["skipped"] == 1 and "participant id" in report["skipped_files"][0]["reason"]
    assert (victim / "keep.txt").is_file()


def _bomb_archive(clone: Path, member_mb: float) -> None:
    """Replace the date's archive by one whose cough recording of 0zex is `member_mb` MB of zeros
    (a few KB compressed)."""
    import gzip
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, size in (("0zexHIcM7tQDdnFiEj2Eb0v3g212/cough-heavy.wav", int(member_mb * 1e6)),
                           ("0zexHIcM7tQDdnFiEj2Eb0v3g212/counting-normal.wav", 1000)):
            info = tarfile.TarInfo(f"20200413/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    data = gzip.compress(buffer.getvalue(), 9)
    for part in (clone / "20200413").glob("20200413.tar.gz.*"):
        part.unlink()
    (clone / "20200413" / "20200413.tar.gz.aa").write_bytes(data)


def test_an_archive_member_over_the_limit_is_refused_before_it_is_written(clone, tmp_path, small_params):
    _bomb_archive(clone, member_mb=50)
    assert (clone / "20200413" / "20200413.tar.gz.aa").stat().st_size < 200_000
    root = tmp_path / "project"
    with pytest.raises(CoswaraError, match=r"member 20200413/0zex\S+/cough-heavy.wav is 50\.0 MB, over "
                                           r"limits\.archive_member_mb \(1 MB\); refused before extraction"):
        fetch_with(small_params, root, "covid", "coswara", _cfg(clone, min_quality=0),
                   {"limits": {"archive_member_mb": 1}})
    assert_no_output(root / "data" / "raw" / "covid")
    with pytest.raises(CoswaraError, match=r"cough-heavy.wav: extracting it would pass limits\.extract_total_mb \(10 MB\)"):
        fetch_with(small_params, root, "covid", "coswara", _cfg(clone, min_quality=0),
                   {"limits": {"extract_total_mb": 10}})
