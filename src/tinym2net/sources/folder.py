"""A folder of labelled files: `<path>/<class>/<files>`, or `<path>/<split>/<class>/<files>` (split: train,
val, test) for a split you fix yourself, e.g. a challenge's official test set.

Each file is one subject (its id: `<split>-<class>-<file stem>`, made safe). Files are taken by
extension for the case's modalities: recordings (.wav .flac .ogg .mp3) for an audio case, pictures
(.png .jpg .jpeg) for an image case, videos (.mp4 .mkv .webm .avi .mov) for a video case, whose
modalities all read the same file. Other files are counted and reported once. A case with a single
modality only (or the video modalities of one file): several modalities per subject need a manifest.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .. import media
from ..errors import DataError, ParamsError
from ..ids import slug
from . import SPLITS, shape

log = logging.getLogger(__name__)


def fetch(opts, ctx) -> list[dict]:
    """Every file of the right kind under `fetch.<case>.folder.path`, copied into `ctx.out`."""
    key = f"fetch.{ctx.case}.folder"
    kind = shape(ctx.info)
    if kind == "mixed" or (kind != "video" and len(ctx.modalities) != 1):
        raise ParamsError(f"params.yaml: {key}: a folder gives one file per subject, so one modality (or the "
                          f"video modalities of one file); list several modalities per subject in a manifest")
    if not opts.path:
        raise ParamsError(f"params.yaml: {key}.path: set it to a folder of class folders")
    root = Path(opts.path)
    if not root.is_dir():
        raise DataError(f"{key}.path: {root} is not a folder")
    rows, ignored, ids = [], Counter(), Counter()
    for split, label, src in tqdm(_files(root, ctx.classes, kind, ignored), desc="folder files", unit="file"):
        sid = slug("-".join(p for p in (split, label, src.stem) if p), limit=120)
        ids[sid] += 1
        sid = sid if ids[sid] == 1 else f"{sid}-{ids[sid]}"
        try:
            ctx.check(src, kind)
        except DataError as exc:
            ctx.bad(str(src), exc)
            continue
        rel = ctx.out.copy(src, f"files/{sid}{src.suffix.lower()}").relative_to(ctx.out.root).as_posix()
        rows.append({"subject_id": sid, "label": label, "split": split, **{m: rel for m in ctx.modalities}})
    if ignored:
        log.warning("%s: ignored %d files that are not %s (%s)", root, sum(ignored.values()), kind,
                    ", ".join(f"{n} {ext or 'without extension'}" for ext, n in ignored.most_common(5)))
    if not rows:
        raise DataError(f"{root}: no {kind} files in class folders ({', '.join(ctx.classes)})")
    counts = Counter((r["split"] or "any", r["label"]) for r in rows)
    log.info("folder %s: %d files (%s)", root, len(rows), ", ".join(f"{n} {s}/{c}" for (s, c), n in sorted(counts.items())))
    return rows


def _files(root: Path, classes: list[str], kind: str, ignored: Counter) -> list[tuple[str, str, Path]]:
    """(split or '', class, file) for every file of `kind` in the class folders (split folders first)."""
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_layout = bool(subs) and all(p.name.lower() in SPLITS for p in subs)
    tops = [(p.name.lower(), p) for p in subs] if split_layout else [("", root)]
    found = []
    for split, top in tops:
        for sub in sorted(p for p in top.iterdir() if not p.name.startswith(".")):
            if not sub.is_dir():
                ignored[sub.suffix.lower()] += 1
                continue
            if sub.name not in classes:
                where = f"{split}/" if split else ""
                raise DataError(f"{sub}: folder {where}{sub.name!r} is not a class ({', '.join(classes)})"
                                + ("" if split_layout else "; split folders must all be train, val or test"))
            for f in sorted(sub.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    if media.kind_of(f) == kind:
                        found.append((split, sub.name, f))
                    else:
                        ignored[f.suffix.lower()] += 1
    return found
