"""Your own data listed in a CSV: `subject_id,label,<one column per modality>` plus optional `start,end,offset`
(video segments), `split` (train/val/test, used as given) and `group` (a channel, site or device).
Paths are relative to the CSV and must stay inside its folder.

Each file is read with the checks the slice stage applies (so an unreadable file is named here, with
what is wrong with it) and copied to `files/<name>`; a file several rows name (segments of one video)
is copied once. `labels` maps the CSV's label values to classes (a null value drops those rows);
without it the values must be class names. With `on_error: skip`, a row whose file cannot be used is
left out and listed in metrics/<case>/fetch.json.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from ..errors import DataError, ParamsError
from ..ids import safe_id, slug
from . import SPLITS, inside, is_video, read_csv, seconds_cell

log = logging.getLogger(__name__)


def fetch(opts, ctx) -> list[dict]:
    """The rows of the CSV at `fetch.<case>.manifest.path`, their files copied into `ctx.out`."""
    key = f"fetch.{ctx.case}.manifest"
    if not opts.path:
        raise ParamsError(f"params.yaml: {key}.path: set it to a CSV of subject_id,label,"
                          f"{','.join(ctx.modalities)}[,split][,group]")
    path = Path(opts.path)
    labels = _labels(opts.labels, ctx.classes, key)
    video = is_video(ctx.info)
    rows, copies, dropped = [], {}, Counter()
    for line, row in tqdm(read_csv(path, ["subject_id", "label", *ctx.modalities]), desc="manifest rows", unit="row"):
        where = f"{path} line {line}"
        sid, value = row["subject_id"], row["label"]
        safe_id(sid, where, "subject_id")
        if value not in labels:
            hint = f"map it in {key}.labels" if value else "fill it in"
            raise DataError(f"{where}: label {value!r} is not one of {', '.join(sorted(labels))} ({hint})")
        if labels[value] is None:
            dropped[value] += 1
            continue
        split = row.get("split", "").lower()
        if split not in ("", *SPLITS):
            raise DataError(f"{where}: split {row['split']!r} must be train, val, test or empty")
        group = row.get("group", "")
        if group:
            safe_id(group, where, "group")
        out = {"subject_id": sid, "label": labels[value], "split": split, "group": group}
        if video:
            start, end = (seconds_cell(row.get(k, ""), where, k) for k in ("start", "end"))
            if start is not None and end is not None and end <= start:
                raise DataError(f"{where}: end {end:g} must be after start {start:g}")
            offset = seconds_cell(row.get("offset", ""), where, "offset")
            out.update(start="" if start is None else f"{start:g}", end="" if end is None else f"{end:g}",
                       offset="" if offset is None else f"{offset:g}")
        try:
            for m, kind in ctx.modalities.items():
                src = inside(path.parent, row[m], where)
                if not src.is_file():
                    raise DataError(f"{where}: {m} file {row[m]!r} not found (looked for {src})")
                if src not in copies:
                    try:
                        ctx.check(src, "video" if video else kind)
                    except DataError as exc:
                        raise DataError(f"{where}: {m} file {row[m]!r}: {str(exc).split(': ', 1)[-1]}") from None
                    copies[src] = ctx.out.copy(src, _name(src, path.parent, copies)).relative_to(ctx.out.root).as_posix()
                out[m] = copies[src]
        except DataError as exc:
            ctx.bad(where, exc)
            continue
        rows.append(out)
    if not rows:
        raise DataError(f"{path}: no rows left (dropped by {key}.labels: {dict(dropped)}; skipped: {len(ctx.skipped)})")
    log.info("manifest %s: %d rows of %d subjects%s", path, len(rows), len({r["subject_id"] for r in rows}),
             f"; dropped by labels: {dict(dropped)}" if dropped else "")
    return rows


def _name(src: Path, root: Path, taken: dict) -> str:
    """`files/<slug of the path>`, unique among the files copied so far."""
    stem = slug(src.relative_to(root).with_suffix("").as_posix().replace("/", "_"))
    used = set(taken.values())
    name, n = f"files/{stem}{src.suffix.lower()}", 1
    while name in used:
        n += 1
        name = f"files/{stem}-{n}{src.suffix.lower()}"
    return name


def _labels(mapping, classes: list[str], key: str) -> dict:
    """CSV label value -> class (None: drop the row); identity on the classes when unset."""
    if mapping is None:
        return {c: c for c in classes}
    for value, label in mapping.items():
        if label is not None and label not in classes:
            raise ParamsError(f"params.yaml: {key}.labels.{value}: {label!r} is not a class "
                              f"({', '.join(classes)}; null drops the rows)")
    return {str(k): v for k, v in mapping.items()}
