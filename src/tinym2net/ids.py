"""The one rule by which a name from a data file or the network may become part of a path.

Subject ids, class and modality names, recording names, archive members and video ids all pass
`safe_id` before they name a file or folder: letters, digits, '.', '_' and '-', starting with a
letter or digit (so never '.', '..', an absolute path or a separator), at most 128 characters.
"""
from __future__ import annotations

import re

from .errors import DataError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_id(value: str, where: str, what: str = "id") -> str:
    """`value` if it may name a file or folder, else a DataError naming `where`."""
    if not isinstance(value, str) or not SAFE_ID.match(value):
        raise DataError(f"{where}: {what} {value!r} must be 1-128 letters, digits, '.', '_' or '-', "
                        f"starting with a letter or digit")
    return value


def slug(text: str, limit: int = 64) -> str:
    """A safe id made from free text (a file stem, a video title): other characters become '_'."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:limit]
    return out if out and SAFE_ID.match(out) else "x" + out[: limit - 1] if out else "unnamed"
