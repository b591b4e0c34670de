"""Splits without leakage: no participant in two splits; no neighbouring frames on both sides."""
from collections import defaultdict

import numpy as np
import pytest

from tinym2net.splits import DROPPED, random_split, subject_split, time_block_split


def test_subject_split_keeps_each_subject_in_one_split_and_stratifies():
    rng = np.random.default_rng(1)
    subjects = [f"p{i}" for i in range(100)]
    labels = (rng.random(100) < 0.4).astype(int)
    assign = subject_split(subjects, labels, val=0.15, test=0.2, seed=3)
    assert set(assign) == set(subjects) and set(assign.values()) == {"train", "val", "test"}
    for label in (0, 1):
        group = [s for s, y in zip(subjects, labels) if y == label]
        share = sum(assign[s] == "test" for s in group) / len(group)
        assert abs(share - 0.2) < 0.05
    # chunk-level samples inherit their subject's split: a subject never spans two splits
    samples = [(s, assign[s]) for s in subjects for _ in range(5)]
    seen = defaultdict(set)
    for s, part in samples:
        seen[s].add(part)
    assert all(len(parts) == 1 for parts in seen.values())
    assert subject_split(subjects, labels, 0.15, 0.2, seed=3) == assign  # deterministic


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_time_blocks_keep_other_splits_more_than_gap_seconds_away(gap):
    vids = np.repeat(["a", "b", "c"], 90)
    times = np.tile(np.arange(90.0), 3)
    split = time_block_split(vids, times, block=10, gap=gap, val=0.15, test=0.2, seed=0)
    for v in "abc":
        rows = np.flatnonzero((vids == v) & (split != DROPPED))
        kept = {p for p in split[rows]}
        assert kept == {"train", "val", "test"}, kept
        for i in rows:
            for j in rows:
                if split[i] != split[j]:
                    assert abs(times[i] - times[j]) > gap
        # neighbouring frames (1 s apart) never straddle two splits
        t = times[rows]
        order = np.argsort(t)
        for a, b in zip(order[:-1], order[1:]):
            if t[b] - t[a] == 1:
                assert split[rows[a]] == split[rows[b]]
    assert (split == DROPPED).mean() < 0.25


def test_random_split_is_the_leaky_one():
    vids = np.repeat(["a"], 90)
    split = random_split(90, 0.15, 0.2, seed=0)
    straddles = sum(split[i] != split[i + 1] for i in range(89))
    assert straddles > 10  # neighbouring frames on both sides: this is why it is labelled leaky
    assert len(vids) == len(split)
