"""Cut raw recordings, pictures and videos into model-sized segments, combine them into samples and
draw the partitions' splits (the `slice` stage).

Per row of the raw manifest (one subject's recording unit), each modality gives segments by its kind:
- `audio`: the recording resampled to `sample_rate` and cut into `chunk_seconds` chunks (a recording
  shorter than one chunk but at least `min_seconds` is zero-padded; a shorter one drops the row);
- `image`: the picture at `frame_size` x `frame_size`;
- `video_frame` / `video_audio`: one frame per second of the video (at `frame_size`) and the second
  of sound that starts with it (resampled by ffmpeg), aligned: sample k holds second k of each.
The segments of a row's modalities are combined into samples: for video, second by second; otherwise
distinct random combinations of one segment per modality (with one modality, its segments), at most
`samples_per_subject` per row.

Output (`data/interim/<case>/`, documented in the README):
- `segments.npz`: one array per modality, (N_m, samples) float32 audio or (N_m, S, S, 3) uint8 pictures;
- `samples.csv`: one row per sample: `subject_id,label,group,unit,<m>,<m>_time...,split_0,...` where `<m>`
  is the row of that modality's segment array, `<m>_time` its start in seconds, `unit` what the
  split keeps whole, and `split_<p>` its split in partition p (empty: left out of that partition);
- `split.json`: the strategy, whether it is leaky, the unit, and per partition the units per class and split.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import librosa
import numpy as np
from tqdm import tqdm

from . import media, splits
from .errors import DataError
from .ids import safe_id
from .io import write_json
from .params import Params
from .sources import MANIFEST, inside, read_csv, seconds_cell

log = logging.getLogger(__name__)


def read_raw_manifest(raw_dir: Path, modalities: list[str], classes: list[str]) -> list[tuple[str, dict]]:
    """(where, row) pairs of `data/raw/<case>/manifest.csv`, ids and labels checked."""
    path = raw_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found (run the fetch stage first)")
    rows = []
    for line, row in read_csv(path, ["subject_id", "label", *modalities]):
        where = f"{path} line {line}"
        safe_id(row["subject_id"], where, "subject_id")
        if row["label"] not in classes:
            raise DataError(f"{where}: unknown label {row['label']!r} (classes: {', '.join(classes)})")
        rows.append((where, row))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def chunk(audio: np.ndarray, size: int, min_size: int) -> np.ndarray:
    """Non-overlapping chunks of `size` samples; a recording shorter than one chunk but at least
    `min_size` long is zero-padded to one chunk. Returns (n_chunks, size)."""
    n = len(audio) // size
    if n == 0:
        if len(audio) < min_size:
            return np.empty((0, size), np.float32)
        return np.pad(audio, (0, size - len(audio)))[None].astype(np.float32)
    return audio[: n * size].reshape(n, size).astype(np.float32)


class _Segments:
    """Segments of one modality, appended row by row: the array rows and their start times."""

    def __init__(self):
        self.parts, self.count = [], 0

    def add(self, array: np.ndarray) -> np.ndarray:
        """Append (n, ...) segments; returns their indices."""
        index = np.arange(self.count, self.count + len(array))
        self.parts.append(array)
        self.count += len(array)
        return index

    def array(self, empty_shape: tuple, dtype) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.empty((0, *empty_shape), dtype)


def _audio_row(path: Path, cfg, limits) -> tuple[np.ndarray, list[float]]:
    audio, rate = media.read_audio(path, max_seconds=limits.recording_seconds)
    if rate != cfg.sample_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=cfg.sample_rate)
    size = int(round(cfg.chunk_seconds * cfg.sample_rate))
    chunks = chunk(audio, size, int(round(cfg.min_seconds * cfg.sample_rate)))
    return chunks, [cfg.chunk_seconds * i for i in range(len(chunks))]


def _video_row(path: Path, row: dict, where: str, kinds: dict, cfg, limits) -> tuple[dict, list[float]]:
    """Each video modality's per-second segments of one row, and their times on the video's timeline."""
    start, end = (seconds_cell(row.get(k, ""), where, k) for k in ("start", "end"))
    offset = seconds_cell(row.get("offset", ""), where, "offset") or 0.0
    need = tuple(sorted({"video" if k == "video_frame" else "audio" for k in kinds.values()}))
    media.check_video(path, max_seconds=limits.recording_seconds, need=need)
    frames = media.read_frames(path, fps=1, size=cfg.frame_size, start=start, end=end) if "video" in need else None
    track = media.read_soundtrack(path, sr=cfg.sample_rate, start=start, end=end) if "audio" in need else None
    n = min(len(frames) if frames is not None else 1 << 30, len(track) // cfg.sample_rate if track is not None else 1 << 30)
    if n == 0:
        raise DataError(f"{path}: shorter than one second of video" + (" with audio" if track is not None else ""))
    out = {m: frames[:n] if k == "video_frame" else track[: n * cfg.sample_rate].reshape(n, cfg.sample_rate)
           for m, k in kinds.items()}
    return out, [offset + (start or 0.0) + k for k in range(n)]


def slice_case(params: Params, case: str, raw_dir: Path) -> tuple[dict, list[dict], dict]:
    """Segments per modality, the samples (with their splits in every partition) and split.json's content."""
    cfg, info, limits = params.slice[case], params.cases[case], params.limits
    kinds, classes = info.modalities, info.classes
    rows = read_raw_manifest(raw_dir, list(kinds), classes)
    rng = np.random.default_rng(params.seed.data)
    segments = {m: _Segments() for m in kinds}
    samples = []
    for where, row in tqdm(rows, desc="slice rows", unit="row"):
        files = {m: inside(raw_dir, row[m], where) for m in kinds}
        base = {"subject_id": row["subject_id"], "label": row["label"], "group": row.get("group", ""),
                "split": row.get("split", "")}
        if info.video:
            path = files[next(iter(kinds))]
            if any(f != path for f in files.values()):
                raise DataError(f"{where}: the video modalities of a row must read the same file")
            parts, times = _video_row(path, row, where, kinds, cfg, limits)
            index = {m: segments[m].add(parts[m]) for m in kinds}
            picks = [(k,) * len(kinds) for k in range(len(times))]
            row_times = {m: times for m in kinds}
        else:
            parts, row_times = {}, {}
            for m, kind in kinds.items():
                if kind == "audio":
                    parts[m], row_times[m] = _audio_row(files[m], cfg, limits)
                else:
                    image = media.read_image(files[m], size=cfg.frame_size, max_pixels=limits.image_pixels)
                    parts[m], row_times[m] = image[None], [0.0]
            short = [m for m in kinds if len(parts[m]) == 0]
            if short:
                log.warning("%s: %s recording %s is shorter than slice.%s.min_seconds; row skipped",
                            where, short[0], row[short[0]], case)
                continue
            index = {m: segments[m].add(parts[m]) for m in kinds}
            picks = _combinations([len(parts[m]) for m in kinds], cfg.samples_per_subject, rng)
        if len(picks) > cfg.samples_per_subject:
            picks = [picks[i] for i in sorted(rng.choice(len(picks), cfg.samples_per_subject, replace=False))]
        for pick in picks:
            sample = dict(base, time=row_times[next(iter(kinds))][pick[0]])
            for m, k in zip(kinds, pick):
                sample[m], sample[f"{m}_time"] = int(index[m][k]), float(row_times[m][k])
            samples.append(sample)
    if not samples:
        raise DataError(f"{raw_dir / MANIFEST}: no row has usable recordings")
    shapes = {"audio": ((int(round((cfg.chunk_seconds or 1) * cfg.sample_rate)),), np.float32),
              "video_audio": ((cfg.sample_rate,), np.float32),
              "image": (((cfg.frame_size or 1),) * 2 + (3,), np.uint8), "video_frame": (((cfg.frame_size or 1),) * 2 + (3,), np.uint8)}
    arrays = {m: segments[m].array(*shapes[k]) for m, k in kinds.items()}
    parts, units, protocol = splits.partitions(samples, cfg.split, params.seed.split, len(params.partitions))
    counts = [splits.class_counts(p, [s["label"] for s in samples], units, classes) for p in parts]
    source = params.fetch[case].source
    fix = (f"the data or its label map (fetch.{case}.{source})" +
           ("" if protocol["strategy"] == "given" else f", or slice.{case}.split (val, test, min_subjects)"))
    splits.check_counts(counts, classes, cfg.split.min_subjects, case, protocol["unit"], fix)
    keep = np.flatnonzero(np.any([p != splits.DROPPED for p in parts], axis=0))
    for i, s in enumerate(samples):
        s["unit"] = units[i]
        for p, part in enumerate(parts):
            s[f"split_{p}"] = part[i]
    kept = [samples[i] for i in keep]
    log.info("%d rows -> %s segments -> %d samples (%d dropped at split boundaries in every partition)", len(rows),
             ", ".join(f"{len(a)} {m}" for m, a in arrays.items()), len(kept), len(samples) - len(kept))
    return arrays, kept, {**protocol, "partitions": [
        {"units": c, "samples": {part: int((p[keep] == part).sum()) for part in splits.SPLITS}}
        for c, p in zip(counts, parts)]}


def _combinations(sizes: list[int], limit: int, rng: np.random.Generator) -> list[tuple]:
    """Distinct random combinations of one segment index per modality, at most `limit` of them."""
    total = int(np.prod(sizes))
    chosen = rng.choice(total, size=min(limit, total), replace=False)
    return [tuple(int(i) for i in np.unravel_index(c, sizes)) for c in sorted(chosen)]


def write_interim(folder, segments: dict, samples: list[dict], split_info: dict, modalities: list[str],
                  partitions: int) -> None:
    """Write segments.npz, samples.csv and split.json into an output folder."""
    np.savez(folder.path("segments.npz"), **segments)
    columns = ["subject_id", "label", "group", "unit"] + [c for m in modalities for c in (m, f"{m}_time")] + \
        [f"split_{p}" for p in range(partitions)]
    with open(folder.path("samples.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(samples)
    write_json(folder.path("split.json"), split_info)
