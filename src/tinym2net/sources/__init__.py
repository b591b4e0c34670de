"""Data sources for the `fetch` stage: one module per source, one `fetch` function each.

Every source writes the same raw layout into `data/raw/<case>/`, so that every later stage
runs one code path whatever the source:

- paired_audio cases (covid): `manifest.csv` with columns `subject_id,label,<modality>...`,
  one row per subject; `label` is a class name from `cases.<case>.classes`, each modality
  column a WAV path relative to the manifest. The recordings may sit in any layout
  (the demo and Coswara sources keep Coswara's `<date>/<participant>/<recording>.wav`).
- video cases (battlefield): `manifest.csv` with columns `video_id,label,path,start,end,offset`,
  one row per video segment; `path` relative to the manifest, `start`/`end` in seconds of that
  file (empty: the whole file). Segments cut from one source video share its `video_id`, and
  `offset` (optional, default 0) is where the file begins in that video, so that splits by time
  see one timeline per source video.

A source's signature is `fetch(cfg, case_info, out_dir, seed)`: `cfg` is
`params.yaml: fetch.<case>`, `case_info` is `cases.<case>`, `out_dir` an empty temporary
directory that the stage renames to `data/raw/<case>` only on success.
"""
from __future__ import annotations

import contextlib
import csv
import importlib
import shutil
from pathlib import Path
from typing import Callable, Iterator

from ..config import choice
from ..errors import DataError

# source name -> module, per case kind
SOURCES = {
    "paired_audio": {"demo": "demo", "coswara": "coswara", "manifest": "manifest"},
    "video": {"demo": "demo", "youtube": "youtube", "videos": "videos"},
}

MANIFEST = "manifest.csv"
VIDEO_COLUMNS = ["video_id", "label", "path", "start", "end", "offset"]


def get_fetcher(params: dict, case: str) -> Callable:
    """The `fetch` function of the source that params.yaml names for `case`."""
    kind = params["cases"][case]["kind"]
    name = choice(params, f"fetch.{case}.source", SOURCES[kind])
    module = importlib.import_module(f"{__name__}.{SOURCES[kind][name]}")
    return getattr(module, f"fetch_{kind}")


def write_manifest(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Write a raw manifest CSV (rows are dicts keyed by `columns`)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


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


def place(src: Path, dst: Path) -> None:
    """Copy `src` to `dst`, creating dst's folder (a copy, never a link: the user's file and the
    download cache stay untouched whatever DVC or a later stage does to data/raw)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@contextlib.contextmanager
def cleared_on_error(out_dir: Path) -> Iterator[None]:
    """Empty `out_dir` again if the block raises, so that a failed source leaves no partial output."""
    try:
        yield
    except BaseException:
        for child in Path(out_dir).iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise


def seconds_cell(text: str, where: str, column: str) -> float | None:
    """A time cell in seconds (empty: None)."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {column} {text!r} is not a number of seconds") from None
    if value < 0:
        raise DataError(f"{where}: {column} {value:g} is negative")
    return value
