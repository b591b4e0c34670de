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

from .. import media
from ..config import get
from ..errors import DataError, ParamsError
from . import MANIFEST, cleared_on_error, read_csv, write_manifest

log = logging.getLogger(__name__)

KEY = "fetch.covid.coswara"
MB = 1e6
DATE = re.compile(r"^\d{8}$")


class CoswaraError(DataError):
    """The Coswara data are unreachable, incomplete or inconsistent."""


def fetch_paired_audio(cfg: dict, case_info: dict, out_dir: Path, seed: int) -> None:
    """Extract the kept Coswara participants into `out_dir` and write the raw manifest."""
    opts = _options(cfg, case_info)
    modalities = case_info["modalities"]
    with cleared_on_error(out_dir):
        root = _local_root(opts)
        dates = opts["dates"] or sorted(p.name for p in root.iterdir() if p.is_dir() and DATE.match(p.name))
        if not dates:
            raise CoswaraError(f"{root}: no date folders (YYYYMMDD) found; is it a clone of Coswara-Data?")
        statuses = _statuses(root / "combined_data.csv")
        quality = {m: _qualities(root, rec) for m, rec in opts["recordings"].items()} if opts["min_quality"] else {}
        rows, dropped, seen = [], Counter(), set()
        for date in tqdm(dates, desc="coswara dates", unit="date"):
            rows += _fetch_date(root, date, opts, statuses, quality, modalities, out_dir, dropped, seen)
        if not rows:
            raise CoswaraError(f"{root}: no participant kept in dates {', '.join(dates)} "
                               f"(dropped: {_reasons(dropped)})")
        rows.sort(key=lambda r: (r[modalities[0]].split("/")[0], r["subject_id"]))
        write_manifest(out_dir / MANIFEST, ["subject_id", "label", *modalities], rows)
    counts = Counter(r["label"] for r in rows)
    log.info("coswara: kept %d participants (%s); dropped %d: %s", len(rows),
             ", ".join(f"{counts[c]} {c}" for c in case_info["classes"]), sum(dropped.values()), _reasons(dropped))


# ----------------------------------------------------------------------------- options

def _options(cfg: dict, case_info: dict) -> dict:
    """Validated `fetch.covid.coswara` options."""
    params = {"fetch": {"covid": cfg}}
    opts = {name: get(params, f"{KEY}.{name}")
            for name in ("path", "url", "cache_dir", "dates", "recordings", "min_quality", "labels")}
    if not opts["path"] and not opts["url"]:
        raise ParamsError(f"params.yaml: set {KEY}.path (a clone of Coswara-Data) or {KEY}.url")
    if opts["dates"] is not None:
        if not isinstance(opts["dates"], list) or not all(DATE.match(str(d)) for d in opts["dates"]):
            raise ParamsError(f"params.yaml: {KEY}.dates must be a list of YYYYMMDD folder names or null "
                              f"(got {opts['dates']!r})")
        opts["dates"] = [str(d) for d in opts["dates"]]
    recordings = opts["recordings"]
    if not isinstance(recordings, dict) or sorted(recordings) != sorted(case_info["modalities"]):
        raise ParamsError(f"params.yaml: {KEY}.recordings must map each modality "
                          f"({', '.join(case_info['modalities'])}) to a Coswara recording name (got {recordings!r})")
    if opts["min_quality"] not in (0, 1, 2):
        raise ParamsError(f"params.yaml: {KEY}.min_quality must be 0, 1 or 2 (got {opts['min_quality']!r})")
    labels = opts["labels"]
    if not isinstance(labels, dict) or not labels:
        raise ParamsError(f"params.yaml: {KEY}.labels must map covid_status values to classes (got {labels!r})")
    for status, label in labels.items():
        if label is not None and label not in case_info["classes"]:
            raise ParamsError(f"params.yaml: {KEY}.labels.{status}: {label!r} is not a class "
                              f"({', '.join(case_info['classes'])}; null drops the status)")
    return opts


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

def _fetch_date(root: Path, date: str, opts: dict, statuses: dict, quality: dict, modalities: list[str],
                out_dir: Path, dropped: Counter, seen: set) -> list[dict]:
    """Manifest rows of the participants kept from one date; extracts their recordings."""
    folder = root / date
    if not (folder / f"{date}.csv").is_file():
        raise CoswaraError(f"{folder / f'{date}.csv'} not found (is {date} a Coswara date folder?)")
    wanted = {}
    for _, row in read_csv(folder / f"{date}.csv", ["id"]):
        pid = row["id"]
        if pid in seen:
            dropped["listed again in a later date"] += 1
            continue
        status = statuses.get(pid) or row.get("covid_status", "")
        label = opts["labels"].get(status)
        if label is None:
            dropped[f"covid_status {status or 'missing'!r} not mapped"] += 1
            continue
        reason = next((f"{opts['recordings'][m]} " + ("not annotated" if pid not in quality[m]
                       else f"quality < {opts['min_quality']}")
                       for m in modalities if quality and quality[m].get(pid, -1) < opts["min_quality"]), None)
        if reason:
            dropped[reason] += 1
            continue
        wanted[pid] = label
    if not wanted:
        return []
    names = {f"{pid}/{opts['recordings'][m]}.wav" for pid in wanted for m in modalities}
    found = _extract(folder, date, names, out_dir, len(wanted))
    rows = []
    for pid, label in wanted.items():
        files = {m: f"{date}/{pid}/{opts['recordings'][m]}.wav" for m in modalities}
        reason = None
        if any(f"{pid}/{opts['recordings'][m]}.wav" not in found for m in modalities):
            reason = "recording missing from the archive"
        else:
            for path in files.values():
                try:
                    media.read_wav(out_dir / path)
                except DataError as exc:
                    reason = "empty or unreadable recording"
                    log.warning("participant %s skipped: %s", pid, str(exc).replace(f"{out_dir}{os.sep}", ""))
                    break
        if reason:
            dropped[reason] += 1
            shutil.rmtree(out_dir / date / pid, ignore_errors=True)
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


def _extract(folder: Path, date: str, names: set[str], out_dir: Path, listed: int) -> set[str]:
    """Stream the split archive of one date, extracting members `<id>/<recording>.wav` in `names`."""
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
                        tar.extract(member.replace(name=f"{date}/{name}", deep=False), out_dir, filter="data")
                        found.add(name)
            while gz.read(1 << 20):  # the rest of the stream: its end and CRC prove the last part complete
                pass
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

def _local_root(opts: dict) -> Path:
    """The local Coswara-Data folder: `path`, or a clone/mirror of `url` in `cache_dir`."""
    if opts["path"]:
        root = Path(opts["path"])
        if not root.is_dir():
            raise CoswaraError(f"{KEY}.path: {root} is not a folder (clone github.com/iiscleap/Coswara-Data there)")
        return root
    url = str(opts["url"]).rstrip("/")
    target = Path(opts["cache_dir"]) / re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://")[-1])
    if url.endswith(".git") or url.startswith(("git@", "git://", "ssh://")):
        return _clone(url, target)
    if not opts["dates"]:
        raise ParamsError(f"params.yaml: {KEY}.dates: list the dates to mirror from {url} "
                          f"(a raw URL has no folder listing)")
    return _mirror(url, target, opts)


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


def _mirror(base: str, target: Path, opts: dict) -> Path:
    """Download the files the dates need from a raw base URL into `target` (kept files are reused)."""
    _download(base, "combined_data.csv", target, required=False)
    if opts["min_quality"]:
        for rec in opts["recordings"].values():
            _download(base, f"annotations/{rec}_labels.csv", target, required=True)
    for date in opts["dates"]:
        _download(base, f"{date}/{date}.csv", target, required=True)
        i = 0
        while _download(base, f"{date}/{date}.tar.gz.{_suffix(i)}", target, required=i == 0):
            i += 1
    return target


def _download(base: str, rel: str, target: Path, required: bool) -> bool:
    """Fetch `base/rel` to `target/rel` unless present; False if the server has no such file."""
    dst = target / rel
    if dst.is_file():
        return True
    url = f"{base}/{rel}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh, 1 << 20)
    except urllib.error.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        if exc.code == 404 and not required:
            return False
        if exc.code == 404:
            raise CoswaraError(f"{url}: not found (HTTP 404); check {KEY}.url and {KEY}.dates") from None
        raise _unreachable(url, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise _unreachable(url, getattr(exc, "reason", exc)) from None
    os.replace(tmp, dst)
    log.info("downloaded %s (%.1f MB)", url, dst.stat().st_size / MB)
    return True
