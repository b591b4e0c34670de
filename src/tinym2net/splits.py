"""Train/val/test partitions without leakage, repeated with independent seeds, plus the paper's leaky
random split and a split the user gives.

Every strategy assigns whole *units* to splits; a unit is what may not straddle two splits:
- `subject`: a participant (or a file, a video): stratified by label (and by group, optionally);
- `time_blocks`: a contiguous block of `block_seconds` of one video; frames within `gap_seconds` of a
  block of another split are dropped, so neighbouring frames never fall on both sides;
- `random`: a sample (the TinyM2Net paper's protocol): leaky, chunks of one participant or
  neighbouring frames of one video land on both sides;
- `given`: the manifest's `split` column (or split folders) as the user gave it; a missing val split
  is drawn from the given train subjects; a subject in two splits makes the partition leaky.
Partition p draws with seed `seed.split + p`; with a given split only val (if drawn) differs.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from .errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DROPPED = ""  # split of a sample a partition leaves out (the time-block gap)
LEAKY = {"subject": False, "time_blocks": False, "random": True, "given": False}


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


def stratified(units: list[str], strata: list[str], val: float, test: float, seed: int) -> dict[str, str]:
    """Map each unit to a split, stratified by its stratum (a label, or label and group)."""
    by_stratum: dict[str, set] = {}
    for unit, stratum in zip(units, strata):
        by_stratum.setdefault(stratum, set()).add(unit)
    rng = np.random.default_rng(seed)
    out = {}
    for stratum in sorted(by_stratum):
        group = sorted(by_stratum[stratum])
        rng.shuffle(group)
        n_val, n_test = _counts(len(group), val, test)
        for i, unit in enumerate(group):
            out[unit] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def random_split(n: int, val: float, test: float, seed: int) -> np.ndarray:
    """Assign n samples to splits at random (leaky for chunks of one subject or video)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = _counts(n, val, test)
    split = np.full(n, "train", dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return split


def time_blocks(video_ids, times, block: float) -> np.ndarray:
    """The block unit `<video>#<k>` of each frame: k counts `block`-second blocks from the video's first frame."""
    video_ids, times = np.asarray(video_ids), np.asarray(times, float)
    units = np.empty(len(times), dtype=object)
    for vid in sorted(set(video_ids.tolist())):
        rows = np.flatnonzero(video_ids == vid)
        k = np.floor((times[rows] - times[rows].min()) / block).astype(int)
        units[rows] = [f"{vid}#{b}" for b in k]
    return units


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


def given_split(subjects: list[str], labels: list[str], given: list[str], val: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """The user's split per sample; val drawn from the train subjects when none is given. Returns the
    split and the subjects that appear in more than one split (a leak)."""
    subjects_arr, split = np.asarray(subjects), np.asarray(given, dtype=object)
    if not (split == "val").any():
        train_subjects = sorted({s for s, g in zip(subjects, given) if g == "train"})
        label_of = {s: l for s, l in zip(subjects, labels)}
        drawn = stratified(train_subjects, [label_of[s] for s in train_subjects], val, 0.0, seed)
        for s, part in drawn.items():
            if part == "val":
                split[(subjects_arr == s) & (split == "train")] = "val"
    seen: dict[str, set] = {}
    for s, g in zip(subjects, split):
        seen.setdefault(s, set()).add(g)
    return split, sorted(s for s, parts in seen.items() if len(parts) > 1)


def partitions(samples: list[dict], cfg, seed: int, count: int) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """The split of every sample in each of `count` partitions, the unit of each sample, and what
    split.json says of the protocol (strategy, leaky, unit)."""
    subjects = [s["subject_id"] for s in samples]
    labels = [s["label"] for s in samples]
    given = [s.get("split", "") for s in samples]
    if any(given):
        if not all(given):
            missing = next(s["subject_id"] for s in samples if not s.get("split"))
            raise DataError(f"the manifest gives a split for some rows but not for subject {missing}: "
                            f"fill the split column for every row or for none")
        parts, leaks = [], []
        for p in range(count):
            split, leaks = given_split(subjects, labels, given, cfg.val, seed + p)
            parts.append(split)
        if leaks:
            log.warning("the given split is LEAKY: %d subjects appear in more than one split (e.g. %s)",
                        len(leaks), ", ".join(leaks[:5]))
        return parts, np.asarray(subjects, dtype=object), {"strategy": "given", "leaky": bool(leaks),
                                                          "leaking_subjects": len(leaks), "unit": "subject"}
    strategy = cfg.strategy
    if strategy == "subject":
        groups = {s["subject_id"]: s.get("group", "") for s in samples}
        label_of = dict(zip(subjects, labels))
        order = sorted(label_of)
        strata = [f"{label_of[u]}|{groups[u]}" if cfg.stratify_by_group else label_of[u] for u in order]
        parts = []
        for p in range(count):
            assign = stratified(order, strata, cfg.val, cfg.test, seed + p)
            parts.append(np.array([assign[s] for s in subjects], dtype=object))
        units = np.asarray(subjects, dtype=object)
    elif strategy == "time_blocks":
        times = [s["time"] for s in samples]
        parts = [time_block_split(subjects, times, cfg.block_seconds, cfg.gap_seconds, cfg.val, cfg.test, seed + p)
                 for p in range(count)]
        units = time_blocks(subjects, times, cfg.block_seconds)
    else:
        parts = [random_split(len(samples), cfg.val, cfg.test, seed + p) for p in range(count)]
        units = np.array([str(i) for i in range(len(samples))], dtype=object)
    unit = {"subject": "subject", "time_blocks": "time block", "random": "sample"}[strategy]
    return parts, units, {"strategy": strategy, "leaky": LEAKY[strategy], "unit": unit}


def class_counts(split: np.ndarray, labels: list[str], units: np.ndarray, classes: list[str]) -> dict:
    """{split: {class: number of distinct units}} of one partition."""
    out = {part: Counter() for part in SPLITS}
    for part in SPLITS:
        rows = np.flatnonzero(split == part)
        for label, unit in {(labels[i], units[i]) for i in rows}:
            out[part][label] += 1
    return {part: {c: out[part][c] for c in classes} for part in SPLITS}


def check_counts(counts: list[dict], classes: list[str], minimum, case: str, unit: str, fix: str) -> None:
    """Stop before training when any class has too few units in any split of any partition."""
    for p, c in enumerate(counts):
        short = [(cls, part) for cls in classes for part in SPLITS if c[part][cls] < getattr(minimum, part)]
        if short:
            table = "; ".join(f"{cls}: " + ", ".join(f"{c[part][cls]} {part}" for part in SPLITS) for cls in classes)
            cls, part = short[0]
            raise DataError(f"slice {case}: partition {p}: class {cls!r} has {c[part][cls]} {unit}s in {part} "
                            f"(needs slice.{case}.split.min_subjects.{part}: {getattr(minimum, part)}); "
                            f"{unit}s per class: {table}; change {fix}")
