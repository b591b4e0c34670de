"""Model inputs from segments: batched MFCCs identical to librosa's per-clip output, 32x32 images,
and normalization statistics taken from the train split only."""
from __future__ import annotations

import logging

import librosa
import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import DataError
from .params import Image, Mfcc

log = logging.getLogger(__name__)


def mfcc(clips: np.ndarray, *, sr: int, n_mfcc: int, n_fft: int, hop_length: int, n_mels: int,
         center: bool, top_db: float = 80.0) -> np.ndarray:
    """MFCCs of a batch of clips (B, samples) -> (B, n_mfcc, frames), equal to
    `librosa.feature.mfcc` applied to each clip alone: librosa's `power_to_db` would apply
    `top_db` below the maximum of the whole batch, so the floor is applied per clip here."""
    mel = librosa.feature.melspectrogram(y=clips, sr=sr, n_fft=n_fft, hop_length=hop_length,
                                         n_mels=n_mels, center=center)        # (B, n_mels, T) power
    db = librosa.power_to_db(mel, top_db=None)                              # (B, n_mels, T)
    db = np.maximum(db, db.max(axis=(-2, -1), keepdims=True) - top_db)      # per-clip top_db
    return scipy.fft.dct(db, axis=-2, type=2, norm="ortho")[..., :n_mfcc, :]  # (B, n_mfcc, T)


def mfcc_features(clips: np.ndarray, spec: Mfcc, sr: int, batch_size: int, desc: str) -> np.ndarray:
    """(N, samples) audio -> (N, 1, frames, n_mfcc) float32, computed in batches."""
    kwargs = {k: getattr(spec, k) for k in ("n_mfcc", "n_fft", "hop_length", "n_mels", "center")}
    out = []
    for i in tqdm(range(0, len(clips), batch_size), desc=desc, unit="batch"):
        m = mfcc(clips[i:i + batch_size], sr=sr, **kwargs)          # (b, n_mfcc, T)
        out.append(np.transpose(m, (0, 2, 1))[:, None].astype(np.float32))  # (b, 1, T, n_mfcc)
    return np.concatenate(out)


def image_features(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 frames -> (N, 3, size, size) float32 in [0, 1], area-resized."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0       # (N, 3, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.numpy()


def featurize_modality(segments: np.ndarray, spec: Mfcc | Image, sr: int, batch_size: int, name: str) -> np.ndarray:
    """Features of one modality's segments, as its `featurize.<case>.<modality>` spec says: (N, C, H, W)."""
    if spec.type == "mfcc":
        return mfcc_features(segments, spec, sr, batch_size, f"mfcc {name}")
    return image_features(segments, spec.size)


def first_non_finite(x: np.ndarray) -> int | None:
    """Index of the first segment (axis 0) with a NaN or inf feature, or None."""
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def normalization(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of x over `axes` (kept as size-1 dims), std floored to avoid division by 0."""
    mean = x.mean(axis=axes, keepdims=True)
    std = np.maximum(x.std(axis=axes, keepdims=True), 1e-6)
    return mean.astype(np.float32), std.astype(np.float32)


def stats_axes(kind: str) -> tuple[int, ...]:
    """MFCCs are normalized per coefficient (last axis), images per channel (axis 1)."""
    return (0, 1, 2) if kind == "mfcc" else (0, 2, 3)


def check_finite(x: np.ndarray, modality: str, where) -> None:
    """A DataError naming the sample whose features are not finite (`where(segment)` describes it)."""
    bad = first_non_finite(x)
    if bad is not None:
        raise DataError(f"features of {modality} segment {bad} ({where(bad)}) are not finite (NaN or inf): "
                        f"check that recording")
