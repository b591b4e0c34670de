"""Train/val/test splits without leakage, plus the paper's leaky random split as an option.

- `subject_split`: whole subjects (participants) per split, stratified by label: no participant
  contributes to two splits.
- `time_block_split`: each video is cut into contiguous time blocks, blocks are assigned to
  splits, and frames closer than `gap` seconds to a block of another split are dropped, so
  neighbouring frames never fall on both sides.
- `random_split`: samples assigned at random (the TinyM2Net paper's protocol); leaky, because
  chunks of one participant or neighbouring frames of one video land on both sides.
"""
from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")
DROPPED = ""  # split of a sample left out by the time-block gap
LEAKY = {"subject": False, "time_blocks": False, "random": True}


def _counts(n: int, val: float, test: float) -> tuple[int, int]:
    """How many of n items go to val and test (at least one each when n allows, train keeps one)."""
    n_test = int(round(n * test))
    n_val = int(round(n * val))
    if n >= 3:
        n_test, n_val = max(n_test, 1 if test > 0 else 0), max(n_val, 1 if val > 0 else 0)
    while n_test + n_val >= n and (n_test or n_val):
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def subject_split(subjects, labels, val: float, test: float, seed: int) -> dict:
    """Map each subject to a split, stratified by the subject's label."""
    by_label: dict = {}
    for subject, label in zip(subjects, labels):
        by_label.setdefault(label, set()).add(subject)
    rng = np.random.default_rng(seed)
    out = {}
    for label in sorted(by_label):
        group = sorted(by_label[label])
        rng.shuffle(group)
        n_val, n_test = _counts(len(group), val, test)
        for i, subject in enumerate(group):
            out[subject] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def random_split(n: int, val: float, test: float, seed: int) -> np.ndarray:
    """Assign n samples to splits at random (leaky for chunks of one subject or video)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = _counts(n, val, test)
    split = np.full(n, "train", dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return split


def time_block_split(video_ids, times, block: float, gap: float, val: float, test: float,
                     seed: int) -> np.ndarray:
    """Split frames by contiguous time blocks within each video; frames within `gap` s of a
    block of another split are dropped (split "")."""
    video_ids, times = np.asarray(video_ids), np.asarray(times, float)
    split = np.full(len(times), DROPPED, dtype=object)
    rng = np.random.default_rng(seed)
    for vid in sorted(set(video_ids.tolist())):
        rows = np.flatnonzero(video_ids == vid)
        t0 = times[rows].min()
        block_of = np.floor((times[rows] - t0) / block).astype(int)
        blocks = np.unique(block_of)
        order = rng.permutation(blocks)
        n_val, n_test = _counts(len(blocks), val, test)
        assign = {b: ("test" if i < n_test else "val" if i < n_test + n_val else "train")
                  for i, b in enumerate(order)}
        split[rows] = [assign[b] for b in block_of]
        # drop frames near the start of a block whose predecessor belongs to another split
        for b in blocks:
            prev = b - 1
            if prev in assign and assign[prev] != assign[b]:
                start = t0 + b * block
                near = rows[(block_of == b) & (times[rows] < start + gap)]
                split[near] = DROPPED
    return split
