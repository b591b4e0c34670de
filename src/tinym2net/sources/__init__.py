"""Data sources for the `fetch` stage: one module per source, one `fetch(opts, ctx)` function each.

Every source writes the same raw layout into `data/raw/<case>/`, so that every later stage runs one
code path whatever the source: the files it copied or generated, and `manifest.csv` with columns
`subject_id,label,<one column per modality>,start,end,offset,split,group`, one row per recording
unit (a participant's recordings, a picture, a video or a segment of one):

- a modality cell is a file path relative to the manifest: a recording (audio), a picture (image)
  or a video (video_frame / video_audio: the modalities of a video case share their file);
- `start`/`end` (seconds, empty: the whole file) cut a segment from a video; `offset` (default 0)
  places it on the timeline of its source video, so that segments of one video share a timeline;
- `split` (train/val/test, empty: drawn by the slice stage) is a split the user gave;
- `group` (a recording channel, a site, a device; optional) lets splits and figures be grouped.

Rows of one subject share its label and group. A source's files land under names validated by
`ids.safe_id`; `ctx.out` (an `io.Folder`) refuses any other path.
"""
from __future__ import annotations

import csv
import importlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import media
from ..errors import DataError
from ..ids import safe_id
from ..io import Folder
from ..params import VIDEO_KINDS, Case, Limits

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
OPTIONAL = ["start", "end", "offset", "split", "group"]
SPLITS = ("train", "val", "test")


@dataclass
class Context:
    """What a source needs besides its own options: the case, where to write, the seed and the bounds."""
    case: str
    info: Case
    out: Folder
    seed: int
    limits: Limits
    on_error: str = "fail"
    skipped: list[dict] = field(default_factory=list)

    @property
    def modalities(self) -> dict[str, str]:
        return self.info.modalities

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def bad(self, where: str, error: DataError) -> None:
        """A file or row that cannot be used: raise it (`on_error: fail`) or note it and go on (`skip`)."""
        if self.on_error == "fail":
            raise error
        self.skipped.append({"where": where, "reason": str(error)})
        log.warning("skipped (fetch.%s.on_error: skip): %s", self.case, error)

    def check(self, path: Path, kind: str) -> None:
        """Read `path` as a file of one modality kind, with the same checks the slice stage applies."""
        if kind == "audio":
            media.read_audio(path, max_seconds=self.limits.recording_seconds)
        elif kind == "image":
            media.read_image(path, size=8, max_pixels=self.limits.image_pixels)
        else:
            need = tuple(sorted({"video" if k == "video_frame" else "audio" for k in self.modalities.values()}))
            media.check_video(path, max_seconds=self.limits.recording_seconds, need=need)


def get_fetcher(source: str):
    """The `fetch` function of a source module."""
    return importlib.import_module(f"{__name__}.{source}").fetch


def columns(info: Case) -> list[str]:
    return ["subject_id", "label", *info.modalities, *OPTIONAL]


def write_manifest(ctx: Context, rows: list[dict]) -> dict:
    """Check the rows (ids, labels, one label and group per subject) and write `manifest.csv`; returns
    the summary that lands in metrics/<case>/fetch.json."""
    if not rows:
        raise DataError(f"fetch {ctx.case}: no usable rows" + (f" ({len(ctx.skipped)} skipped)" if ctx.skipped else ""))
    label_of, group_of = {}, {}
    for row in rows:
        sid = safe_id(row["subject_id"], f"fetch {ctx.case}", "subject_id")
        if row["label"] not in ctx.classes:
            raise DataError(f"fetch {ctx.case}: subject {sid}: label {row['label']!r} is not a class "
                            f"({', '.join(ctx.classes)})")
        for key, seen in (("label", label_of), ("group", group_of)):
            if seen.setdefault(sid, row.get(key, "")) != row.get(key, ""):
                raise DataError(f"fetch {ctx.case}: subject {sid} has rows with {key} {seen[sid]!r} and "
                                f"{row.get(key, '')!r}; a subject has one {key}")
        if row.get("split", "") not in ("", *SPLITS):
            raise DataError(f"fetch {ctx.case}: subject {sid}: split {row['split']!r} is not train, val or test")
    with open(ctx.out.path(MANIFEST), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns(ctx.info), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return summarize(ctx, label_of, group_of, len(rows))


def summarize(ctx: Context, label_of: dict, group_of: dict, n_rows: int) -> dict:
    """Class counts (per subject), group label rates with a confound warning, and the skipped files."""
    counts = Counter(label_of.values())
    summary = {"subjects": len(label_of), "rows": n_rows, "classes": {c: counts[c] for c in ctx.classes},
               "skipped": len(ctx.skipped), "skipped_files": ctx.skipped}
    groups = sorted({g for g in group_of.values() if g})
    if groups:
        rates = {g: {c: 0 for c in ctx.classes} for g in groups}
        for sid, g in group_of.items():
            if g:
                rates[g][label_of[sid]] += 1
        summary["groups"] = rates
        warning = confound(rates, ctx.classes)
        if warning:
            summary["confound_warning"] = warning
            log.warning("fetch %s: %s", ctx.case, warning)
    missing = [c for c in ctx.classes if not counts[c]]
    if missing:
        log.warning("fetch %s: no subject of class %s (%s); the slice stage will stop before training",
                    ctx.case, ", ".join(missing), ", ".join(f"{counts[c]} {c}" for c in ctx.classes))
    return summary


def confound(rates: dict[str, dict[str, int]], classes: list[str], threshold: float = 0.25) -> str | None:
    """A warning when a class's share differs by more than `threshold` between groups (each of >= 5 subjects)."""
    sizes = {g: sum(r.values()) for g, r in rates.items()}
    big = [g for g in rates if sizes[g] >= 5]
    worst = None
    for c in classes:
        shares = {g: rates[g][c] / sizes[g] for g in big}
        if len(shares) >= 2:
            spread = max(shares.values()) - min(shares.values())
            if spread > threshold and (worst is None or spread >= worst[0] - 1e-12):  # ties: the later class (positive)
                worst = (spread, c, shares)
    if worst is None:
        return None
    _, c, shares = worst
    listed = ", ".join(f"{g} {100 * s:.0f}% {c} ({sizes[g]} subjects)" for g, s in sorted(shares.items()))
    return (f"the label rate differs strongly between groups ({listed}): a classifier can score by "
            f"recognising the group; compare the per-group figures of evaluate before trusting a score")


def read_csv(path: Path, required: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV whose header has `required` (names and values stripped)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, skipinitialspace=True)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
            reader.fieldnames = header
            return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                    for row in reader]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None


def inside(root: Path, rel: str, where: str) -> Path:
    """`root/rel` for a relative path that stays inside `root` (no absolute path, '..' or escaping symlink)."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if not rel or pure.is_absolute() or ".." in pure.parts:
        raise DataError(f"{where}: path {rel!r} must be relative to {root} and stay inside it")
    path = root.joinpath(*pure.parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{where}: path {rel!r} leads outside {root}")
    return path


def seconds_cell(text: str, where: str, column: str) -> float | None:
    """A time cell in seconds (empty: None)."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {column} {text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise DataError(f"{where}: {column} {value:g} is not a time in seconds >= 0")
    return value


def is_video(info: Case) -> bool:
    return all(k in VIDEO_KINDS for k in info.modalities.values())


def shape(info: Case) -> str:
    """What files a case reads: 'video', 'image' or 'audio' (a case mixing image and audio: 'mixed')."""
    if is_video(info):
        return "video"
    kinds = set(info.modalities.values())
    return kinds.pop() if len(kinds) == 1 else "mixed"
