"""Local videos: a folder with one sub-folder per class, or a CSV `path,label,start,end` (paths relative to it).

Every video must be readable by `media.probe` and carry both a picture and a sound track (the two
modalities); it is linked (or copied) to `videos/<label>/<name>`. In the CSV, `start`/`end`
(seconds, optional) select a segment; several rows may cut segments from one file.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .. import media
from ..config import get
from ..errors import DataError, ParamsError
from . import MANIFEST, VIDEO_COLUMNS, cleared_on_error, place, read_csv, seconds_cell, write_manifest

log = logging.getLogger(__name__)

KEY = "fetch.battlefield.videos"
EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov"}


def fetch_video(cfg: dict, case_info: dict, out_dir: Path, seed: int) -> None:
    """Link the local videos named by `fetch.<case>.videos` into `out_dir` with the raw manifest."""
    params = {"fetch": {"battlefield": cfg}}
    folder, table = get(params, f"{KEY}.path"), get(params, f"{KEY}.csv")
    if bool(folder) == bool(table):
        raise ParamsError(f"params.yaml: set exactly one of {KEY}.path (a folder of class folders) "
                          f"and {KEY}.csv (a CSV of path,label,start,end)")
    classes = case_info["classes"]
    entries = _from_folder(Path(folder), classes) if folder else _from_csv(Path(table), classes)
    if not entries:
        raise DataError(f"{folder or table}: no videos ({', '.join(sorted(EXTENSIONS))}) found")
    rows, probed, placed, ids = [], {}, {}, Counter()
    with cleared_on_error(out_dir):
        for where, src, label, start, end in tqdm(entries, desc="videos", unit="video"):
            if src not in probed:
                probed[src] = _probe(src, where)
            if (src, label) not in placed:
                rel = Path("videos") / label / src.name
                if (out_dir / rel).exists():
                    raise DataError(f"{where}: {src.name} is also the name of another {label} video; rename one")
                place(src, out_dir / rel)
                placed[src, label] = rel
            rel, duration = placed[src, label], probed[src]
            if end is not None and end > duration + 0.5:
                raise DataError(f"{where}: end {end:g} s is past the end of {src} ({duration:.1f} s)")
            vid = f"{label}-{src.stem}"
            ids[vid] += 1
            rows.append({"video_id": vid if ids[vid] == 1 else f"{vid}-{ids[vid]}", "label": label,
                         "path": rel.as_posix(), "start": "" if start is None else f"{start:g}",
                         "end": "" if end is None else f"{end:g}"})
        write_manifest(out_dir / MANIFEST, VIDEO_COLUMNS, rows)
    counts = Counter(r["label"] for r in rows)
    log.info("videos: %d segments of %d files (%s)", len(rows), len(probed),
             ", ".join(f"{counts[c]} {c}" for c in classes))


def _probe(src: Path, where: str) -> float:
    """Duration of a video that has a picture and a sound track; otherwise a DataError naming it."""
    prefix = "" if where == str(src) else f"{where}: "
    try:
        info = media.probe(src)
    except DataError as exc:
        raise DataError(f"{prefix}{exc}") from None
    missing = [k for k in ("video", "audio") if not info[f"has_{k}"]]
    if missing:
        raise DataError(f"{prefix}{src} has no {' and no '.join(missing)} track")
    return info["duration"]


def _from_folder(root: Path, classes: list[str]) -> list[tuple]:
    """(where, file, label, None, None) for every video in `root/<class>/`."""
    if not root.is_dir():
        raise DataError(f"{KEY}.path: {root} is not a folder")
    entries = []
    for sub in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not sub.is_dir():
            log.warning("%s: not a class folder, ignored", sub)
            continue
        if sub.name not in classes:
            raise DataError(f"{sub}: folder {sub.name!r} is not a class ({', '.join(classes)}); "
                            f"rename or move it")
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in EXTENSIONS and f.is_file():
                entries.append((str(f), f, sub.name, None, None))
            elif not f.name.startswith("."):
                log.warning("%s: not a video file (%s), ignored", f, ", ".join(sorted(EXTENSIONS)))
    return entries


def _from_csv(path: Path, classes: list[str]) -> list[tuple]:
    """(where, file, label, start, end) for every row of a `path,label,start,end` CSV."""
    entries = []
    for line, row in read_csv(path, ["path", "label"]):
        where = f"{path} line {line}"
        if row["label"] not in classes:
            raise DataError(f"{where}: label {row['label']!r} is not a class ({', '.join(classes)})")
        src = path.parent / row["path"]
        if not row["path"] or not src.is_file():
            raise DataError(f"{where}: video {row['path']!r} not found (looked for {src})")
        start, end = (seconds_cell(row.get(k, ""), where, k) for k in ("start", "end"))
        if start is not None and end is not None and end <= start:
            raise DataError(f"{where}: end {end:g} must be after start {start:g}")
        entries.append((where, src, row["label"], start, end))
    return entries


