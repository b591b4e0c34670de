"""YouTube videos (or anything yt-dlp reads) listed in a CSV, downloaded with yt-dlp's Python API.

Two CSV formats, told apart by their header:

- ours: `url,label` plus optional `start,end` (seconds) and `expect_title,expect_channel`; `url`
  is a URL or a `ytsearch1:<query>`, whose resolved video must then match the expectations
  (case and punctuation ignored; the title may be longer than expected). The default,
  `paper_videos.csv`, finds the paper's four videos by title and channel: the paper prints their
  IDs lower-cased (e8backzbqzc, lhyhy5uioji, kpvg5r7niso, tmwagle6pr8: YouTube IDs are
  case-sensitive, so these probably do not resolve).
- MAD's segment CSV (`Youtube title,Video_num,File_id,Start_time,End_time,Label,url`,
  github.com/kaen2891/military_audio_dataset): `Label` is mapped to classes by `mad_labels`,
  other labels are dropped.

Only the requested time ranges are downloaded (cut at exact frames); the manifest then points at
the whole downloaded file (`start` 0, `end` empty). Entries without a range download the whole
video. Everything lands in `cache_dir` (outside the stage output, which is replaced on each
run): `files/`, `archive.txt` (yt-dlp's download archive: the videos downloaded) and `index.json`
(which URL resolved to which video; each video's files per time range, with SHA-256). A URL is
served from the cache without any network access when its video is in the archive and the index
holds an intact file for every range asked; otherwise only the missing ranges are fetched.

Each URL is retried with exponential backoff; an entry that still fails is listed at the end and
in `youtube.lock.json` (`failures`) while the others go on. The lock file also lists url, id,
title, channel, file, sha256 and bytes of every video used.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yt_dlp
from tqdm import tqdm
from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
from yt_dlp.utils import DownloadError, ExtractorError, download_range_func, make_archive_id

from .. import media
from ..errors import DataError, ParamsError
from ..ids import slug
from ..io import write_json
from . import read_csv, seconds_cell

log = logging.getLogger(__name__)

KEY = "fetch.battlefield.youtube"
PAPER_VIDEOS = Path(__file__).with_name("paper_videos.csv")
LOCK = "youtube.lock.json"
MAD_COLUMNS = ["Youtube title", "Video_num", "File_id", "Start_time", "End_time", "Label", "url"]
# errors that a retry cannot fix
PERMANENT = re.compile(r"HTTP Error (404|410)|Video unavailable|Private video|Unsupported URL|"
                       r"has been removed|is not available", re.I)


@dataclass(frozen=True)
class Entry:
    """One CSV row: what to download and under which class."""
    where: str
    url: str
    label: str
    start: float | None = None
    end: float | None = None
    expect_title: str = ""
    expect_channel: str = ""

    @property
    def span(self) -> str:
        """The time range as a key: `start-end`, `-` for the whole video."""
        if self.start is None and self.end is None:
            return "-"
        return f"{_fmt(self.start or 0)}-{'' if self.end is None else _fmt(self.end)}"


class _Failed(Exception):
    """An entry that cannot succeed (its message says why)."""


def fetch(opts, ctx) -> list[dict]:
    """Download (or reuse from the cache) the listed videos into `ctx.out/videos/<label>/`; the manifest rows."""
    unknown = [v for v in opts.mad_labels.values() if v not in ctx.classes]
    if unknown:
        raise ParamsError(f"params.yaml: {KEY}.mad_labels: {unknown[0]!r} is not a class ({', '.join(ctx.classes)})")
    mad = {str(k): v for k, v in opts.mad_labels.items()}
    path = Path(opts.manifest) if opts.manifest else PAPER_VIDEOS
    entries = read_entries(path, ctx.classes, mad)
    cache = _Cache(Path(opts.cache_dir))
    by_url: dict[str, list[Entry]] = {}
    for e in entries:
        by_url.setdefault(e.url, []).append(e)
    rows, videos, failures = [], [], []
    with _project_ffmpeg():
        for url, group in tqdm(by_url.items(), desc="youtube videos", unit="url"):
            for entry, result in _with_retries(url, group, cache, opts).items():
                if not isinstance(result, str):
                    try:
                        ctx.check(cache.files / result["file"], "video")
                    except DataError as exc:
                        result = str(exc)
                if isinstance(result, str):
                    failures.append({"url": entry.url, "label": entry.label, "where": entry.where, "error": result})
                    continue
                rel = f"videos/{entry.label}/{slug(_video_id(entry, result['id']))}{Path(result['file']).suffix}"
                ctx.out.copy(cache.files / result["file"], rel)
                # segments of one YouTube video share its id and keep their time in it, so that
                # the time-block split keeps neighbouring segments on one side
                rows.append({"subject_id": slug(result["id"]), "label": entry.label, **{m: rel for m in ctx.modalities},
                             "start": "" if entry.span == "-" else "0", "end": "",
                             "offset": "" if entry.span == "-" else _fmt(entry.start or 0)})
                videos.append({"url": entry.url, "label": entry.label, "span": entry.span, "id": result["id"],
                               "title": result["title"], "channel": result["channel"],
                               "webpage_url": result["webpage_url"], "file": rel,
                               "sha256": result["sha256"], "bytes": result["bytes"]})
    for f in failures:
        log.warning("failed: %s (%s, %s): %s", f["url"], f["label"], f["where"], f["error"])
    if not rows:
        raise DataError(f"{path}: none of the {len(entries)} entries could be downloaded "
                        f"(first failure: {failures[0]['url']}: {failures[0]['error']})")
    source = "tinym2net/sources/paper_videos.csv" if path == PAPER_VIDEOS else str(path)
    write_json(ctx.out.path(LOCK), {"manifest": source, "videos": videos, "failures": failures})
    counts = Counter(r["label"] for r in rows)
    log.info("youtube: %d of %d entries (%s); %d failed%s", len(rows), len(entries),
             ", ".join(f"{counts[c]} {c}" for c in ctx.classes), len(failures),
             " (listed above and in " + LOCK + ")" if failures else "")
    return rows


# ----------------------------------------------------------------------------- manifests

def read_entries(path: Path, classes: list[str], mad_labels: dict[str, str]) -> list[Entry]:
    """The entries of our CSV format or of MAD's segment CSV (told apart by the header); duplicates dropped."""
    header = _header(path)
    if all(c in header for c in MAD_COLUMNS):
        entries, skipped = [], Counter()
        for line, row in read_csv(path, MAD_COLUMNS):
            label = mad_labels.get(row["Label"])
            if label is None:
                skipped[row["Label"]] += 1
                continue
            where = f"{path} line {line}"
            entries.append(Entry(where, row["url"], label, seconds_cell(row["Start_time"], where, "Start_time"),
                                 seconds_cell(row["End_time"], where, "End_time")))
        log.info("%s: MAD segment CSV, %d segments kept, %d dropped (labels %s)", path, len(entries),
                 sum(skipped.values()), ", ".join(sorted(skipped)) or "none")
    else:
        entries = []
        for line, row in read_csv(path, ["url", "label"]):
            where = f"{path} line {line}"
            if row["label"] not in classes:
                raise DataError(f"{where}: label {row['label']!r} is not a class ({', '.join(classes)})")
            if not row["url"]:
                raise DataError(f"{where}: url is empty")
            entries.append(Entry(where, row["url"], row["label"], seconds_cell(row.get("start", ""), where, "start"),
                                 seconds_cell(row.get("end", ""), where, "end"),
                                 row.get("expect_title", ""), row.get("expect_channel", "")))
    for e in entries:
        if e.start is not None and e.end is not None and e.end <= e.start:
            raise DataError(f"{e.where}: end {e.end:g} must be after start {e.start:g}")
    unique: dict[tuple, Entry] = {}
    for e in entries:
        unique.setdefault((e.url, e.label, e.span), e)
    return list(unique.values())


def _header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return [name.strip() for name in fh.readline().split(",")]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (set {KEY}.manifest)") from None


def _norm(text: str) -> str:
    """Case-folded, NFKC-normalized words of `text` (punctuation and spacing dropped)."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text or "").casefold()))


def check_expected(info: dict, expect_title: str = "", expect_channel: str = "") -> str | None:
    """Why the resolved video `info` is not the expected one, or None when it matches."""
    if expect_title and _norm(expect_title) not in _norm(info.get("title", "")):
        return f"resolved video {info.get('id')} is titled {info.get('title')!r}, not {expect_title!r} (does not match)"
    channels = {_norm(info.get(k) or "") for k in ("channel", "uploader")}
    if expect_channel and _norm(expect_channel) not in channels:
        return (f"resolved video {info.get('id')} is from channel {info.get('channel') or info.get('uploader')!r}, "
                f"not {expect_channel!r} (does not match)")
    return None


def _fmt(seconds: float) -> str:
    """Seconds as a short exact string (no exponent): 12.5 -> '12.5', 3.0 -> '3'."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _bounds(span: str) -> tuple[float, float]:
    """(start, end) seconds of a span key for yt-dlp's download_ranges (`-`: the whole video)."""
    start, end = span.split("-")
    return float(start or 0), float(end) if end else float("inf")


def _video_id(entry: Entry, video: str) -> str:
    """The file name of one downloaded entry: label, video id and time range."""
    vid = re.sub(r"[^A-Za-z0-9_-]", "_", f"{entry.label}-{video}")
    return vid if entry.span == "-" else f"{vid}-{entry.span.replace('.', 'p')}"


# ----------------------------------------------------------------------------- downloading

class _Cache:
    """`cache_dir`: yt-dlp's files/ and archive.txt, plus index.json (url -> video, video -> files)."""

    def __init__(self, root: Path):
        self.root, self.files = root, root / "files"
        self.archive, self.index_path = root / "archive.txt", root / "index.json"
        self.files.mkdir(parents=True, exist_ok=True)
        try:
            self.index = json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}
        except json.JSONDecodeError:
            log.warning("%s is not valid JSON: starting a new index (files are downloaded again)", self.index_path)
            self.index = {}
        self.index.setdefault("urls", {})
        self.index.setdefault("videos", {})

    def archived(self) -> set[str]:
        return set(self.archive.read_text().split("\n")) - {""} if self.archive.is_file() else set()

    def video(self, aid: str | None) -> dict:
        return self.index["videos"].get(aid, {}) if aid else {}

    def intact(self, aid: str | None, span: str) -> dict | None:
        """The cached file of one range of an archived video, if it is still the one downloaded."""
        rec = self.video(aid).get("files", {}).get(span)
        if not rec or aid not in self.archived():
            return None
        path = self.files / rec["file"]
        if not path.is_file() or _sha256(path) != rec["sha256"]:
            log.warning("%s changed since it was downloaded: downloading it again", path)
            return None
        return rec

    def record(self, url: str, aid: str, info: dict, span: str, path: Path) -> None:
        video = self.index["videos"].setdefault(aid, {"files": {}})
        video.update({k: info.get(k) or "" for k in ("id", "title", "webpage_url")})
        video["channel"] = info.get("channel") or info.get("uploader") or ""
        video["files"][span] = {"file": path.relative_to(self.files).as_posix(),
                                "sha256": _sha256(path), "bytes": path.stat().st_size}
        self.remember(url, aid)

    def remember(self, url: str, aid: str) -> None:
        """Note that `url` resolves to the archived video `aid` (so a rerun needs no network)."""
        self.index["urls"][url] = aid
        write_json(self.index_path, self.index)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _project_ffmpeg() -> Iterator[None]:
    """Point yt-dlp at the project's ffmpeg: its `ffmpeg_location` param does not reach the check
    that decides whether ranges can be downloaded, which reads this context variable (as yt-dlp's CLI sets it)."""
    token = FFmpegPostProcessor._ffmpeg_location.set(media.ffmpeg_exe())
    try:
        yield
    finally:
        FFmpegPostProcessor._ffmpeg_location.reset(token)


class _YtdlpLog:
    """yt-dlp's messages into our log; its errors at debug level, since the caller reports them."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.warning("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)


def _ydl_params(cache: _Cache, opts: dict) -> dict:
    return {"format": opts.format, "ffmpeg_location": media.ffmpeg_exe(), "force_keyframes_at_cuts": True,
            "paths": {"home": str(cache.files)}, "restrictfilenames": True, "noplaylist": True,
            "outtmpl": "%(extractor_key)s/%(id)s.%(section_start|0)s-%(section_end|end)s.%(ext)s",
            "retries": opts.retries, "fragment_retries": opts.retries,
            "socket_timeout": opts.socket_timeout, "cachedir": str(cache.root / "yt-dlp"),
            "logger": _YtdlpLog(), "quiet": True, "noprogress": True}


def _with_retries(url: str, group: list[Entry], cache: _Cache, opts: dict) -> dict[Entry, dict | str]:
    """`_fetch_url` retried with exponential backoff; every entry ends with its result or failure reason."""
    for attempt in range(opts.retries + 1):
        try:
            return _fetch_url(url, group, cache, opts)
        except _Failed as exc:
            return {e: str(exc) for e in group}
        except (DownloadError, ExtractorError, DataError, OSError) as exc:
            reason = re.sub(r"^ERROR: ", "", str(exc))
            if PERMANENT.search(reason) or attempt == opts.retries:
                return {e: reason for e in group}
            wait = opts.backoff_seconds * 2 ** attempt
            log.warning("%s: %s; retry %d of %d in %g s", url, reason, attempt + 1, opts.retries, wait)
            time.sleep(wait)


def _fetch_url(url: str, group: list[Entry], cache: _Cache, opts: dict) -> dict[Entry, dict | str]:
    """The cached or downloaded file of every entry of one URL (a reason string where it fails)."""
    aid = cache.index["urls"].get(url)
    if all(cache.intact(aid, e.span) for e in group):  # everything cached: no network at all
        log.debug("%s: reusing the cached %s", url, aid)
        return _results(group, cache, aid, cache.video(aid))
    with yt_dlp.YoutubeDL(_ydl_params(cache, opts)) as ydl:
        info = ydl.extract_info(url, download=False)
    if info and info.get("_type") == "playlist":  # a search
        info = next(iter(info.get("entries") or []), None)
    if not info:
        raise _Failed(f"no search result for {url!r}" if url.startswith("ytsearch") else f"nothing found at {url}")
    aid = make_archive_id(info["extractor_key"], info["id"])
    meta = {"id": info["id"], "title": info.get("title") or "", "webpage_url": info.get("webpage_url") or url,
            "channel": info.get("channel") or info.get("uploader") or ""}
    wrong = {e: check_expected(info, e.expect_title, e.expect_channel) for e in group}
    ok = [e for e in group if not wrong[e]]
    missing = list(dict.fromkeys(e.span for e in ok if not cache.intact(aid, e.span)))
    if missing:
        params = _ydl_params(cache, opts)
        if aid not in cache.archived():  # yt-dlp records it there once downloaded (it would skip an archived one)
            params["download_archive"] = str(cache.archive)
        if missing != ["-"]:
            params["download_ranges"] = download_range_func(None, [_bounds(span) for span in missing])
        with yt_dlp.YoutubeDL(params) as ydl:
            done = ydl.process_ie_result(info, download=True)
        downloads = done.get("requested_downloads") or []
        if len(downloads) != len(missing):
            raise DownloadError(f"yt-dlp returned {len(downloads)} files for {len(missing)} ranges of {url}")
        for span, d in zip(missing, downloads):
            path = Path(d["filepath"])
            found = media.probe(path)
            if not (found["has_video"] and found["has_audio"]):
                path.unlink()
                raise _Failed(f"the downloaded format has no {'video' if not found['has_video'] else 'audio'} "
                              f"track (set {KEY}.format to one with both)")
            cache.record(url, aid, meta, span, path)
            log.info("downloaded %s (%s) %s -> %s", info["id"], meta["title"],
                     "whole video" if span == "-" else f"{span} s", path.name)
    cache.remember(url, aid)
    results = _results(ok, cache, aid, meta)
    return {e: wrong[e] or results[e] for e in group}


def _results(group: list[Entry], cache: _Cache, aid: str, meta: dict) -> dict[Entry, dict | str]:
    """Each entry's cached file and the video's metadata; expectations checked against that metadata."""
    out = {}
    for e in group:
        rec = cache.video(aid)["files"][e.span]
        wrong = check_expected(meta, e.expect_title, e.expect_channel)
        out[e] = wrong or {**rec, "id": meta["id"], "title": meta["title"], "channel": meta["channel"],
                           "webpage_url": meta["webpage_url"]}
    return out
