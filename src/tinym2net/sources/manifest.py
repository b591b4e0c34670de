"""Paired recordings listed in a CSV of one's own: `subject_id,label,<modality>...` (paths relative to the CSV).

Each recording is checked with `media.read_wav` (the reader the later stages use) and linked (or
copied) to `<modality>/<subject_id><suffix>`. `labels` maps the CSV's label values to classes
(a null value drops those rows); without it the values must be class names already.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .. import media
from ..config import get
from ..errors import DataError, ParamsError
from . import MANIFEST, cleared_on_error, place, read_csv, write_manifest

log = logging.getLogger(__name__)

KEY = "fetch.covid.manifest"
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def fetch_paired_audio(cfg: dict, case_info: dict, out_dir: Path, seed: int) -> None:
    """Link the recordings of the CSV at `fetch.<case>.manifest.path` into `out_dir` with the raw manifest."""
    params = {"fetch": {"covid": cfg}}
    path = get(params, f"{KEY}.path")
    if not path:
        raise ParamsError(f"params.yaml: {KEY}.path: set it to a CSV of subject_id,label,<modality>...")
    path = Path(path)
    labels = _labels(cfg.get("manifest", {}).get("labels"), case_info["classes"])
    modalities = case_info["modalities"]
    rows, seen, dropped = [], {}, Counter()
    with cleared_on_error(out_dir):
        for line, row in tqdm(read_csv(path, ["subject_id", "label", *modalities]), desc="manifest rows", unit="row"):
            where = f"{path} line {line}"
            sid, value = row["subject_id"], row["label"]
            if not SAFE_ID.match(sid):
                raise DataError(f"{where}: subject_id {sid!r} must be letters, digits, '.', '_' or '-'")
            if sid in seen:
                raise DataError(f"{where}: subject_id {sid!r} repeats line {seen[sid]}")
            seen[sid] = line
            if value not in labels:
                hint = f"map it in {KEY}.labels" if value else "fill it in"
                raise DataError(f"{where}: label {value!r} is not one of {', '.join(sorted(labels))} ({hint})")
            if labels[value] is None:
                dropped[value] += 1
                continue
            out = {"subject_id": sid, "label": labels[value]}
            for m in modalities:
                src = path.parent / row[m]
                if not row[m] or not src.is_file():
                    raise DataError(f"{where}: {m} file {row[m]!r} not found (looked for {src})")
                try:
                    media.read_wav(src)
                except DataError as exc:
                    raise DataError(f"{where}: {m} file {row[m]!r}: {str(exc).split(': ', 1)[-1]}") from None
                rel = f"{m}/{sid}{src.suffix.lower()}"
                place(src, out_dir / rel)
                out[m] = rel
            rows.append(out)
        if not rows:
            raise DataError(f"{path}: no rows left (dropped by {KEY}.labels: {dict(dropped)})")
        write_manifest(out_dir / MANIFEST, ["subject_id", "label", *modalities], rows)
    counts = Counter(r["label"] for r in rows)
    log.info("manifest %s: %d subjects (%s)%s", path, len(rows),
             ", ".join(f"{counts[c]} {c}" for c in case_info["classes"]),
             f"; dropped by labels: {dict(dropped)}" if dropped else "")


def _labels(mapping, classes: list[str]) -> dict:
    """CSV label value -> class (None: drop the row); identity on the classes when unset."""
    if mapping is None:
        return {c: c for c in classes}
    if not isinstance(mapping, dict):
        raise ParamsError(f"params.yaml: {KEY}.labels must map CSV label values to classes (got {mapping!r})")
    for value, label in mapping.items():
        if label is not None and label not in classes:
            raise ParamsError(f"params.yaml: {KEY}.labels.{value}: {label!r} is not a class "
                              f"({', '.join(classes)}; null drops the rows)")
    return {str(k): v for k, v in mapping.items()}
