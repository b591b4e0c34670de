"""Stage outputs: every write and deletion of a stage goes through `Outputs`, which refuses any path
outside the folders and files the stage owns, and makes each output appear whole or not at all
(a temporary sibling, renamed into place).

- `Outputs(root, owned)`: `owned` are the stage's outputs (its `outs`, `metrics` and `plots` in
  dvc.yaml, relative to the repository root); `directory(rel)` and `file(rel)` are atomic.
- `Folder`: a temporary output folder handed to library code (the data sources): it copies,
  extracts and deletes only inside itself, and only under validated relative names.
- Temporary siblings a killed stage left behind (`.<name>.tmp-*`, `.<name>.old-*`) are removed
  the next time the stage writes that output. Outputs get the usual modes (umask), not mkdtemp's 0700.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator

from .errors import TinyM2NetError


class ContainmentError(TinyM2NetError):
    """A stage tried to write or delete outside what it owns (a bug or a hostile name)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _clear_stale(final: Path) -> None:
    """Remove what an interrupted write of `final` left: `.<name>.tmp-*` and `.<name>.old-*` siblings."""
    if not final.parent.is_dir():
        return
    for stale in final.parent.glob(f".{final.name}.*"):
        if stale.name.startswith((f".{final.name}.tmp-", f".{final.name}.old-")):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() and not stale.is_symlink() else stale.unlink()


class Folder:
    """A folder that library code may fill: every path is a relative name checked to stay inside."""

    def __init__(self, path: Path):
        self.root = Path(path).resolve()

    def path(self, rel: str | os.PathLike, follow: bool = True) -> Path:
        """The absolute path of `rel` inside this folder; absolute names, '..' and escaping symlinks refused
        (with `follow` False, the last component may be a symlink pointing anywhere: it is the link itself)."""
        pure = PurePosixPath(str(rel).replace(os.sep, "/"))
        if pure.is_absolute() or not pure.parts or any(p in ("..", "") for p in pure.parts):
            raise ContainmentError(f"{rel!r}: not a relative path inside {self.root}")
        full = self.root.joinpath(*pure.parts)
        real = full.resolve() if follow else full.parent.resolve() / full.name
        if not _inside(real, self.root) or real == self.root:
            raise ContainmentError(f"{rel!r}: resolves outside {self.root}")
        return full

    def copy(self, src: Path, rel: str) -> Path:
        """Copy `src` to `rel` (a copy, never a link: the user's file stays untouched)."""
        dst = self.path(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    def mkdir(self, rel: str) -> Path:
        path = self.path(rel)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove(self, rel: str) -> None:
        """Delete `rel` (file or folder) inside this folder; nothing else (a symlink is removed, not followed)."""
        path = self.path(rel, follow=False)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()

    def clear(self) -> None:
        """Empty this folder (a failed source leaves no partial output)."""
        for child in self.root.iterdir():
            self.remove(child.name)


class Outputs:
    """The outputs a stage owns, under `root`; the only way the stage writes or deletes."""

    def __init__(self, root: str | os.PathLike, owned: list[str]):
        self.root = Path(root).resolve()
        self.owned = [self._resolve(rel) for rel in owned]

    def _resolve(self, rel: str | os.PathLike) -> Path:
        pure = PurePosixPath(str(rel).replace(os.sep, "/"))
        if pure.is_absolute() or any(p == ".." for p in pure.parts):
            raise ContainmentError(f"{rel!r}: outputs are relative paths inside {self.root}")
        return self.root.joinpath(*pure.parts)

    def path(self, rel: str | os.PathLike) -> Path:
        """The absolute path of an owned output (or a path inside an owned folder)."""
        full = self._resolve(rel)
        if not any(_inside(full, own) for own in self.owned):
            raise ContainmentError(f"{rel}: not an output of this stage (it owns {', '.join(self._names())})")
        if not any(_inside(full.resolve(), own.parent.resolve() / own.name) for own in self.owned):
            raise ContainmentError(f"{rel}: resolves outside this stage's outputs (a symlink?)")
        return full

    def _names(self) -> list[str]:
        return [str(p.relative_to(self.root)) for p in self.owned]

    @contextlib.contextmanager
    def directory(self, rel: str | os.PathLike) -> Iterator[Folder]:
        """A temporary sibling folder that replaces `rel` only if the block succeeds."""
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            yield Folder(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        backup = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.is_dir() and not final.is_symlink():
            os.replace(final, backup)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(tmp, final)
        if backup.exists():
            shutil.rmtree(backup)

    @contextlib.contextmanager
    def file(self, rel: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
        """A temporary sibling file, renamed over `rel` on success."""
        final = self.path(rel)
        with atomic_file(final, mode, **kwargs) as fh:
            yield fh

    def write_json(self, rel: str | os.PathLike, obj) -> Path:
        path = self.path(rel)
        write_json(path, obj)
        return path

    def remove(self, rel: str | os.PathLike) -> None:
        path = self.path(rel)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary sibling file for writing; rename it over `path` on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
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


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file's bytes (what DVC records for it): which data a figure was computed on."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ordered_stems(folder: Path, suffix: str, summary: Path) -> list[str]:
    """Names of the `*<suffix>` files in `folder`, in the order of `summary`'s "variants", then the rest."""
    found = sorted(p.stem for p in Path(folder).glob(f"*{suffix}"))
    order = list(read_json(summary)["variants"]) if Path(summary).is_file() else []
    return [v for v in order if v in found] + [v for v in found if v not in order]
