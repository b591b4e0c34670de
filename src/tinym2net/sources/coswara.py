"""Coswara (github.com/iiscleap/Coswara-Data): cough and counting recordings of the same participants.

The repository keeps one folder per collection date: `<date>/<date>.tar.gz.aa`, `.ab`, ... (one
gzipped tar split into parts, joined in suffix order), `<date>/<date>.csv` (that date's
participants), plus `combined_data.csv` (every participant's `covid_status`; column meanings in
`csv_labels_legend.json`) and `annotations/<recording>_labels.csv` (`FILENAME, QUALITY`:
`<id>_<recording>`, 0 bad / 1 good / 2 excellent).

The parts are streamed through gzip and tar (never joined on disk); only the recordings of the
participants kept are extracted, to `<date>/<id>/<recording>.wav` (Coswara's own layout). A
participant is dropped, with the reason logged, when its covid_status maps to no class, a
recording is below `min_quality` or unannotated, missing from the archive or empty (0 samples).
Participant ids are case-sensitive. The data come from a local clone (`path`), a git URL (cloned
into `cache_dir`) or a raw base URL (the needed files mirrored into `cache_dir`).
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import re
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError, ParamsError
from ..ids import safe_id
from . import read_csv

log = logging.getLogger(__name__)

KEY = "fetch.covid.coswara"
MB = 1e6
DATE = re.compile(r"^\d{8}$")


class CoswaraError(DataError):
    """The Coswara data are unreachable, incomplete or inconsistent."""


def fetch(opts, ctx) -> list[dict]:
    """Extract the kept Coswara participants into `ctx.out`; returns the manifest rows."""
    modalities = list(ctx.modalities)
    if sorted(opts.recordings) != sorted(modalities):
        raise ParamsError(f"params.yaml: {KEY}.recordings must map each modality ({', '.join(modalities)}) "
                          f"to a Coswara recording name (got {opts.recordings})")
    for status, label in opts.labels.items():
        if label is not None and label not in ctx.classes:
            raise ParamsError(f"params.yaml: {KEY}.labels.{status}: {label!r} is not a class "
                              f"({', '.join(ctx.classes)}; null drops the status)")
    if not opts.path and not opts.url:
        raise ParamsError(f"params.yaml: set {KEY}.path (a clone of Coswara-Data) or {KEY}.url")
    root = _local_root(opts, ctx.limits)
    dates = opts.dates or sorted(p.name for p in root.iterdir() if p.is_dir() and DATE.match(p.name))
    if not dates:
        raise CoswaraError(f"{root}: no date folders (YYYYMMDD) found; is it a clone of Coswara-Data?")
    statuses = _statuses(root / "combined_data.csv")
    quality = {m: _qualities(root, rec) for m, rec in opts.recordings.items()} if opts.min_quality else {}
    rows, dropped, seen = [], Counter(), set()
    budget = _Budget(ctx.limits)
    for date in tqdm(dates, desc="coswara dates", unit="date"):
        rows += _fetch_date(root, date, opts, statuses, quality, ctx, dropped, seen, budget)
    if not rows:
        raise CoswaraError(f"{root}: no participant kept in dates {', '.join(dates)} "
                           f"(dropped: {_reasons(dropped)})")
    rows.sort(key=lambda r: (r[modalities[0]].split("/")[0], r["subject_id"]))
    counts = Counter(r["label"] for r in rows)
    log.info("coswara: kept %d participants (%s); dropped %d: %s", len(rows),
             ", ".join(f"{counts[c]} {c}" for c in ctx.classes), sum(dropped.values()), _reasons(dropped))
    return rows


class _Budget:
    """Bytes extracted so far, against limits.archive_member_mb and limits.extract_total_mb."""

    def __init__(self, limits):
        self.member, self.total, self.used = limits.archive_member_mb * MB, limits.extract_total_mb * MB, 0

    def take(self, size: int, what: str) -> None:
        if size > self.member:
            raise CoswaraError(f"{what} is {size / MB:.1f} MB, over limits.archive_member_mb "
                               f"({self.member / MB:g} MB); refused before extraction")
        if self.used + size > self.total:
            raise CoswaraError(f"{what}: extracting it would pass limits.extract_total_mb ({self.total / MB:g} MB)")
        self.used += size


# ----------------------------------------------------------------------------- metadata

def _statuses(path: Path) -> dict[str, str]:
    """Participant id -> covid_status from combined_data.csv (empty if the file is absent)."""
    if not path.is_file():
        log.warning("%s not found: covid_status is read from the date CSVs", path)
        return {}
    return {row["id"]: row["covid_status"] for _, row in read_csv(path, ["id", "covid_status"])}


def _qualities(root: Path, recording: str) -> dict[str, int]:
    """Participant id -> annotated quality (0/1/2) of one recording."""
    path = root / "annotations" / f"{recording}_labels.csv"
    if not path.is_file():
        raise CoswaraError(f"{path} not found: it holds the quality labels that {KEY}.min_quality "
                           f"filters on (set min_quality: 0 to keep unannotated recordings)")
    suffix = f"_{recording}"
    out = {}
    for line, row in read_csv(path, ["FILENAME", "QUALITY"]):
        name, value = row["FILENAME"], row["QUALITY"]
        if not name.endswith(suffix):
            raise CoswaraError(f"{path} line {line}: FILENAME {name!r} does not end with {suffix!r}")
        try:
            out[name[: -len(suffix)]] = int(float(value))
        except ValueError:
            raise CoswaraError(f"{path} line {line}: QUALITY {value!r} is not a number") from None
    return out


# ----------------------------------------------------------------------------- one date

def _fetch_date(root: Path, date: str, opts, statuses: dict, quality: dict, ctx, dropped: Counter,
                seen: set, budget: _Budget) -> list[dict]:
    """Manifest rows of the participants kept from one date; extracts their recordings."""
    folder = root / date
    table = folder / f"{date}.csv"
    if not table.is_file():
        raise CoswaraError(f"{table} not found (is {date} a Coswara date folder?)")
    modalities = list(ctx.modalities)
    wanted = {}
    for line, row in read_csv(table, ["id"]):
        pid = row["id"]
        try:
            safe_id(pid, f"{table} line {line}", "participant id")
        except DataError as exc:
            ctx.bad(f"{table} line {line}", exc)
            dropped["unsafe participant id"] += 1
            continue
        if pid in seen:
            dropped["listed again in a later date"] += 1
            continue
        status = statuses.get(pid) or row.get("covid_status", "")
        label = opts.labels.get(status)
        if label is None:
            dropped[f"covid_status {status or 'missing'!r} not mapped"] += 1
            continue
        reason = next((f"{opts.recordings[m]} " + ("not annotated" if pid not in quality[m]
                       else f"quality < {opts.min_quality}")
                       for m in modalities if quality and quality[m].get(pid, -1) < opts.min_quality), None)
        if reason:
            dropped[reason] += 1
            continue
        wanted[pid] = label
    if not wanted:
        return []
    names = {f"{pid}/{opts.recordings[m]}.wav" for pid in wanted for m in modalities}
    found = _extract(folder, date, names, ctx.out, len(wanted), budget)
    rows = []
    for pid, label in wanted.items():
        files = {m: f"{date}/{pid}/{opts.recordings[m]}.wav" for m in modalities}
        reason = None
        if any(f"{pid}/{opts.recordings[m]}.wav" not in found for m in modalities):
            reason = "recording missing from the archive"
        else:
            for rel in files.values():
                try:
                    ctx.check(ctx.out.path(rel), "audio")
                except DataError as exc:
                    reason = "empty or unreadable recording"
                    log.warning("participant %s skipped: %s", pid, str(exc).replace(f"{ctx.out.root}{os.sep}", ""))
                    break
        if reason:
            dropped[reason] += 1
            ctx.out.remove(f"{date}/{pid}")
            continue
        rows.append({"subject_id": pid, "label": label, **files})
        seen.add(pid)
    return rows


class _Parts(io.RawIOBase):
    """The parts of a split archive read as one stream; `pos` counts the bytes served."""

    def __init__(self, paths: list[Path], progress: tqdm):
        self.paths, self.index, self.pos, self.progress = paths, 0, 0, progress
        self.fh = open(paths[0], "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            n = self.fh.readinto(buffer)
            if n or self.index == len(self.paths) - 1:
                self.pos += n
                self.progress.update(n)
                return n
            self.fh.close()
            self.index += 1
            self.fh = open(self.paths[self.index], "rb")

    def close(self) -> None:
        self.fh.close()
        self.progress.close()
        super().close()


def _parts(folder: Path, date: str, listed: int) -> list[Path]:
    """The archive parts `<date>.tar.gz.aa`, `.ab`, ... in order; a gap or an odd size is an error."""
    parts = sorted(p for p in folder.glob(f"{date}.tar.gz.*") if re.fullmatch(r"[a-z]{2}", p.name[-2:]))
    if not parts:
        raise CoswaraError(f"{folder}: no archive parts {date}.tar.gz.aa, .ab, ... although {date}.csv "
                           f"lists {listed} wanted participants; re-run fetch (or re-clone)")
    for i, part in enumerate(parts):
        expected = f"{date}.tar.gz.{_suffix(i)}"
        if part.name != expected:
            found = ", ".join(p.name[-3:] for p in parts)
            raise CoswaraError(f"{expected} is missing (found {found} in {folder}); re-run fetch")
    sizes = [p.stat().st_size for p in parts[:-1]]
    for part, size in zip(parts, sizes):  # `split` makes every part but the last the same size
        if size < max(sizes):
            raise CoswaraError(f"{part.name} is truncated ({size / MB:.1f} MB where the other parts "
                               f"have {max(sizes) / MB:.1f} MB); re-run fetch")
    return parts


def _suffix(i: int) -> str:
    return chr(ord("a") + i // 26) + chr(ord("a") + i % 26)


def _extract(folder: Path, date: str, names: set[str], out, listed: int, budget: _Budget) -> set[str]:
    """Stream the split archive of one date, extracting members `<id>/<recording>.wav` in `names`
    (built from validated ids) into the `out` folder, each bounded by the extraction budget."""
    parts = _parts(folder, date, listed)
    sizes = [p.stat().st_size for p in parts]
    stream = _Parts(parts, tqdm(total=sum(sizes), desc=f"{date}.tar.gz", unit="B", unit_scale=True, leave=False))
    found = set()
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as gz:
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:
                    name = "/".join(member.name.split("/")[-2:])
                    if member.isfile() and name in names:
                        budget.take(member.size, f"{folder.name}/{date}.tar.gz member {member.name}")
                        target = out.path(f"{date}/{name}")
                        tar.extract(member.replace(name=f"{date}/{name}", deep=False), out.root, filter="data")
                        if not target.is_file():
                            raise CoswaraError(f"{member.name}: not extracted where expected")
                        found.add(name)
                    if gz.tell() > budget.total:
                        raise CoswaraError(f"{date}.tar.gz decompresses to over limits.extract_total_mb "
                                           f"({budget.total / MB:g} MB); refused")
            while gz.read(1 << 20):  # the rest of the stream: its end and CRC prove the last part complete
                if gz.tell() > budget.total:
                    raise CoswaraError(f"{date}.tar.gz decompresses to over limits.extract_total_mb "
                                       f"({budget.total / MB:g} MB); refused")
    except (EOFError, gzip.BadGzipFile, zlib.error, tarfile.TarError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise CoswaraError(f"{folder}: unsafe archive member refused ({exc})") from None
        raise CoswaraError(_damage(parts, sizes, stream.pos, exc)) from None
    finally:
        stream.close()
    return found


def _damage(parts: list[Path], sizes: list[int], pos: int, exc: Exception) -> str:
    """An actionable message for a gzip/tar failure at byte `pos` of the joined parts."""
    last = parts[-1]
    ended = isinstance(exc, EOFError) or "unexpected end of data" in str(exc)
    if pos >= sum(sizes) and ended:  # the stream stopped before its end marker
        whole = sizes[-1] == max(sizes[:-1]) if len(parts) > 1 else sizes[0] % 2**20 == 0 or sizes[0] % 10**6 == 0
        if whole:  # the last part has the split size: the one after it is missing
            nxt = last.with_name(last.name[:-2] + _suffix(len(parts)))
            return (f"{nxt.name} is missing (the archive stops at the end of {last.name}, "
                    f"{sum(sizes) / MB:.1f} MB); re-run fetch")
        return f"{last.name} is truncated (gzip stream ends at {sum(sizes) / MB:.1f} MB); re-run fetch"
    if "CRC check failed" in str(exc) or "Incorrect length" in str(exc):
        return (f"{', '.join(p.name for p in parts)}: the joined parts fail gzip's integrity check "
                f"({exc}), one of them is corrupt; re-run fetch")
    offset, i = pos, 0
    while i < len(parts) - 1 and offset >= sizes[i]:
        offset -= sizes[i]
        i += 1
    before = f" or the end of {parts[i - 1].name}" if i else ""
    return (f"{parts[i].name}{before} is damaged (gzip/tar error near {pos / MB:.1f} MB of the joined parts: "
            f"{exc}); re-run fetch")


def _reasons(dropped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items())) or "none"


# ----------------------------------------------------------------------------- remote

def _local_root(opts, limits) -> Path:
    """The local Coswara-Data folder: `path`, or a clone/mirror of `url` in `cache_dir`."""
    if opts.path:
        root = Path(opts.path)
        if not root.is_dir():
            raise CoswaraError(f"{KEY}.path: {root} is not a folder (clone github.com/iiscleap/Coswara-Data there)")
        return root
    url = str(opts.url).rstrip("/")
    target = Path(opts.cache_dir) / re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://")[-1])
    if url.endswith(".git") or url.startswith(("git@", "git://", "ssh://")):
        return _clone(url, target)
    if not opts.dates:
        raise ParamsError(f"params.yaml: {KEY}.dates: list the dates to mirror from {url} "
                          f"(a raw URL has no folder listing)")
    return _mirror(url, target, opts, limits.extract_total_mb * MB)


def _unreachable(url: str, why) -> CoswaraError:
    return CoswaraError(f"cannot reach {url}: {why}; clone it elsewhere and set {KEY}.path")


def _clone(url: str, target: Path) -> Path:
    """A shallow git clone of `url` at `target` (reused when present)."""
    if (target / ".git").is_dir():
        log.info("using the existing clone %s (delete it to clone %s again)", target, url)
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log.info("cloning %s into %s (large: several GB)", url, target)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(["git", "clone", "--depth", "1", "--quiet", url, str(tmp)],
                              capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise _unreachable(url, "git is not installed") from None
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()]
        raise _unreachable(url, lines[-1] if lines else f"git exited with {proc.returncode}")
    os.replace(tmp, target)
    return target


def _mirror(base: str, target: Path, opts, cap: float) -> Path:
    """Download the files the dates need from a raw base URL into `target` (kept files are reused)."""
    _download(base, "combined_data.csv", target, False, cap)
    if opts.min_quality:
        for rec in opts.recordings.values():
            _download(base, f"annotations/{rec}_labels.csv", target, True, cap)
    for date in opts.dates:
        _download(base, f"{date}/{date}.csv", target, True, cap)
        i = 0
        while _download(base, f"{date}/{date}.tar.gz.{_suffix(i)}", target, i == 0, cap):
            i += 1
    return target


def _download(base: str, rel: str, target: Path, required: bool, cap: float) -> bool:
    """Fetch `base/rel` to `target/rel` unless present (at most `cap` bytes); False if the server has none."""
    dst = target / rel
    if dst.is_file():
        return True
    url = f"{base}/{rel}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
            if int(resp.headers.get("Content-Length") or 0) > cap:
                raise CoswaraError(f"{url}: {int(resp.headers['Content-Length']) / MB:.0f} MB announced, over "
                                   f"limits.extract_total_mb ({cap / MB:g} MB)")
            while block := resp.read(1 << 20):
                fh.write(block)
                if fh.tell() > cap:
                    raise CoswaraError(f"{url}: over limits.extract_total_mb ({cap / MB:g} MB); download stopped")
    except urllib.error.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        if exc.code == 404 and not required:
            return False
        if exc.code == 404:
            raise CoswaraError(f"{url}: not found (HTTP 404); check {KEY}.url and {KEY}.dates") from None
        raise _unreachable(url, f"HTTP {exc.code} {exc.reason}") from None
    except CoswaraError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise _unreachable(url, getattr(exc, "reason", exc)) from None
    os.replace(tmp, dst)
    log.info("downloaded %s (%.1f MB)", url, dst.stat().st_size / MB)
    return True
