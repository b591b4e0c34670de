"""Cut raw recordings into model-sized segments and pair them into samples.

Output of both case kinds (`data/interim/<case>/`, documented in the README):
- `segments.npz`: one array per modality, (N_m, samples) float32 audio or (N_m, S, S, 3) uint8 frames;
- `manifest.csv`: one row per sample: `subject_id,label,split,<m>,<m>_time...` where `<m>` is the
  row of that modality's segment array and `<m>_time` its start in seconds in the recording;
- `split.json`: the split strategy, whether it is leaky, and the counts.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import librosa
import numpy as np
from tqdm import tqdm

from . import media, splits
from .config import choice, fraction, positive
from .errors import DataError
from .io import write_json
from .sources import MANIFEST, read_csv

log = logging.getLogger(__name__)


def read_raw_manifest(raw_dir: Path, required: list[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of `data/raw/<case>/manifest.csv`, checking the columns the case needs."""
    path = raw_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found (run the fetch stage first)")
    rows = read_csv(path, required)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def class_index(label: str, classes: list[str], where: str) -> int:
    if label not in classes:
        raise DataError(f"{where}: unknown label {label!r} (classes: {', '.join(classes)})")
    return classes.index(label)


def chunk(audio: np.ndarray, size: int, min_size: int) -> np.ndarray:
    """Non-overlapping chunks of `size` samples; a recording shorter than one chunk but at least
    `min_size` long is zero-padded to one chunk. Returns (n_chunks, size)."""
    n = len(audio) // size
    if n == 0:
        if len(audio) < min_size:
            return np.empty((0, size), np.float32)
        return np.pad(audio, (0, size - len(audio)))[None].astype(np.float32)
    return audio[: n * size].reshape(n, size).astype(np.float32)


def slice_paired_audio(cfg: dict, case_info: dict, raw_dir: Path, seed: int):
    """Chunk each subject's recordings, draw random cross-modality chunk pairs, split.

    Returns (segments dict, manifest rows, split info)."""
    sr = positive(cfg, "sample_rate", integer=True)
    seconds = positive(cfg, "chunk_seconds")
    min_seconds = positive(cfg, "min_seconds", allow_zero=True)
    per_subject = positive(cfg, "pairs_per_participant", integer=True)
    strategy = choice(cfg, "split.strategy", {"subject", "random"})
    val, test = fraction(cfg, "split.val"), fraction(cfg, "split.test")
    modalities, classes = case_info["modalities"], case_info["classes"]
    rows = read_raw_manifest(raw_dir, ["subject_id", "label", *modalities])
    size, min_size = int(round(seconds * sr)), int(round(min_seconds * sr))

    chunks = {m: [] for m in modalities}      # per modality: list of (n, size) arrays
    counts = {m: 0 for m in modalities}
    subjects = []                             # (subject_id, label index, {m: chunk row indices})
    seen = set()
    for line, row in tqdm(rows, desc="slice recordings", unit="subject"):
        where = f"{raw_dir / 'manifest.csv'} row {line}"
        if row["subject_id"] in seen:
            raise DataError(f"{where}: duplicate subject_id {row['subject_id']!r}")
        seen.add(row["subject_id"])
        label = class_index(row["label"], classes, where)
        parts = {}
        for m in modalities:
            audio, rate = media.read_wav(raw_dir / row[m])
            if rate != sr:
                audio = librosa.resample(audio, orig_sr=rate, target_sr=sr)
            parts[m] = chunk(audio, size, min_size)
            if len(parts[m]) == 0:
                log.warning("%s: %s recording %s is %.2f s, shorter than slice.min_seconds; subject skipped",
                            where, m, row[m], len(audio) / sr)
                break
        else:
            index = {}
            for m in modalities:
                index[m] = np.arange(counts[m], counts[m] + len(parts[m]))
                chunks[m].append(parts[m])
                counts[m] += len(parts[m])
            subjects.append((row["subject_id"], label, index))
    if not subjects:
        raise DataError(f"{raw_dir / 'manifest.csv'}: no subject has usable recordings")

    rng = np.random.default_rng(seed)
    first, second = modalities
    samples = []
    for subject_id, label, index in subjects:
        combos = len(index[first]) * len(index[second])
        picks = rng.choice(combos, size=per_subject, replace=per_subject > combos)
        for p in picks:
            a, b = index[first][p // len(index[second])], index[second][p % len(index[second])]
            samples.append({"subject_id": subject_id, "label": classes[label],
                            first: int(a), second: int(b),
                            f"{first}_time": float(seconds * (a - index[first][0])),
                            f"{second}_time": float(seconds * (b - index[second][0]))})
    if strategy == "subject":
        assign = splits.subject_split([s[0] for s in subjects], [s[1] for s in subjects], val, test, seed)
        for s in samples:
            s["split"] = assign[s["subject_id"]]
    else:
        for s, part in zip(samples, splits.random_split(len(samples), val, test, seed)):
            s["split"] = part
    segments = {m: np.concatenate(chunks[m]) for m in modalities}
    log.info("%d subjects -> %s chunks -> %d pairs", len(subjects),
             ", ".join(f"{counts[m]} {m}" for m in modalities), len(samples))
    return segments, samples, {"strategy": strategy, "leaky": splits.LEAKY[strategy]}


def slice_video(cfg: dict, case_info: dict, raw_dir: Path, seed: int):
    """One frame per second and its 1 s audio window (resampled by ffmpeg), split by time blocks.

    Returns (segments dict, manifest rows, split info)."""
    sr = positive(cfg, "sample_rate", integer=True)
    size = positive(cfg, "frame_size", integer=True)
    strategy = choice(cfg, "split.strategy", {"time_blocks", "random"})
    val, test = fraction(cfg, "split.val"), fraction(cfg, "split.test")
    image_m, audio_m = case_info["modalities"]
    classes = case_info["classes"]
    rows = read_raw_manifest(raw_dir, ["video_id", "label", "path", "start", "end"])
    frames, audio, samples = [], [], []
    for line, row in tqdm(rows, desc="slice videos", unit="video"):
        where = f"{raw_dir / 'manifest.csv'} row {line}"
        class_index(row["label"], classes, where)
        start = float(row["start"]) if row["start"] else None
        end = float(row["end"]) if row["end"] else None
        offset = float(row.get("offset") or 0.0)  # where this file begins in its source video
        path = raw_dir / row["path"]
        track = media.read_audio(path, sr=sr, start=start, end=end)
        pics = media.read_frames(path, fps=1, size=size, start=start, end=end)
        n = min(len(pics), len(track) // sr)
        if n == 0:
            raise DataError(f"{path}: shorter than one second of video with audio")
        base = sum(len(f) for f in frames)
        frames.append(pics[:n])
        audio.append(track[: n * sr].reshape(n, sr))
        for k in range(n):
            t = offset + (start or 0.0) + k
            samples.append({"subject_id": row["video_id"], "label": row["label"],
                            image_m: base + k, f"{image_m}_time": t, audio_m: base + k, f"{audio_m}_time": t})
    if strategy == "time_blocks":
        block = positive(cfg, "split.block_seconds")
        gap = positive(cfg, "split.gap_seconds", allow_zero=True)
        parts = splits.time_block_split([s["subject_id"] for s in samples],
                                        [s[f"{image_m}_time"] for s in samples], block, gap, val, test, seed)
    else:
        parts = splits.random_split(len(samples), val, test, seed)
    for s, part in zip(samples, parts):
        s["split"] = part
    kept = [s for s in samples if s["split"] != splits.DROPPED]
    log.info("%d videos -> %d one-second samples (%d dropped at split boundaries)",
             len(rows), len(samples), len(samples) - len(kept))
    segments = {image_m: np.concatenate(frames), audio_m: np.concatenate(audio).astype(np.float32)}
    return segments, kept, {"strategy": strategy, "leaky": splits.LEAKY[strategy]}


SLICERS = {"paired_audio": slice_paired_audio, "video": slice_video}


def write_interim(out_dir: Path, segments: dict, samples: list[dict], split_info: dict,
                  modalities: list[str]) -> dict:
    """Write segments.npz, manifest.csv and split.json; returns split.json's content."""
    np.savez(out_dir / "segments.npz", **segments)
    columns = ["subject_id", "label", "split"] + [c for m in modalities for c in (m, f"{m}_time")]
    with open(out_dir / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(samples)
    counts = {part: sum(s["split"] == part for s in samples) for part in splits.SPLITS}
    subjects = {part: len({s["subject_id"] for s in samples if s["split"] == part}) for part in splits.SPLITS}
    info = {**split_info, "samples": counts, "subjects": subjects}
    write_json(out_dir / "split.json", info)
    return info
