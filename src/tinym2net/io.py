"""Atomic writes: outputs appear whole under their final name or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, backup)
    os.replace(tmp, final)
    if backup.exists():
        shutil.rmtree(backup) if backup.is_dir() else backup.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary sibling file for writing; rename it over `path` on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def ordered_stems(folder: Path, suffix: str, summary: Path) -> list[str]:
    """Names of the `*<suffix>` files in `folder`, in the order of `summary`'s "variants", then the rest."""
    found = sorted(p.stem for p in Path(folder).glob(f"*{suffix}"))
    order = list(read_json(summary)["variants"]) if Path(summary).is_file() else []
    return [v for v in order if v in found] + [v for v in found if v not in order]
