"""Splits without leakage: no participant in two splits; no neighbouring frames on both sides."""
from collections import defaultdict

import numpy as np
import pytest

from tinym2net.errors import DataError
from tinym2net.params import MinSubjects, Split
from tinym2net.splits import (DROPPED, check_counts, class_counts, given_split, partitions, random_split, stratified,
                              time_block_split)


def test_subject_split_keeps_each_subject_in_one_split_and_stratifies():
    rng = np.random.default_rng(1)
    subjects = [f"p{i}" for i in range(100)]
    labels = (rng.random(100) < 0.4).astype(int).tolist()
    assign = stratified(subjects, labels, val=0.15, test=0.2, seed=3)
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
    assert stratified(subjects, labels, 0.15, 0.2, seed=3) == assign  # deterministic


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


def _split(**kw) -> Split:
    return Split(**{"strategy": "subject", "val": 0.2, "test": 0.2, "min_subjects": {"train": 1, "val": 1, "test": 2},
                    **kw})


def test_partitions_are_subject_disjoint_and_differ_from_one_another():
    rng = np.random.default_rng(0)
    samples = [{"subject_id": f"s{i}", "label": "pos" if i % 3 == 0 else "neg", "group": "a" if i % 2 else "b"}
               for i in range(60) for _ in range(rng.integers(1, 5))]
    parts, units, info = partitions(samples, _split(), seed=5, count=3)
    assert info == {"strategy": "subject", "leaky": False, "unit": "subject"} and list(units) == [s["subject_id"] for s in samples]
    tests = []
    for split in parts:
        by_subject = defaultdict(set)
        for s, part in zip(samples, split):
            by_subject[s["subject_id"]].add(part)
        assert all(len(v) == 1 for v in by_subject.values())   # no subject in two splits
        tests.append({s["subject_id"] for s, part in zip(samples, split) if part == "test"})
    assert tests[0] != tests[1] != tests[2]                     # independent draws
    again, _, _ = partitions(samples, _split(), seed=5, count=3)
    assert all((a == b).all() for a, b in zip(parts, again))   # deterministic from the split seed


def test_stratifying_by_group_balances_each_group_across_splits():
    samples = [{"subject_id": f"s{i}", "label": "pos" if i < 30 else "neg", "group": "call" if i % 3 else "app"}
               for i in range(90)]
    parts, _, _ = partitions(samples, _split(stratify_by_group=True), seed=1, count=1)
    for group in ("call", "app"):
        for label in ("pos", "neg"):
            rows = [i for i, s in enumerate(samples) if s["group"] == group and s["label"] == label]
            test_share = np.mean([parts[0][i] == "test" for i in rows])
            assert abs(test_share - 0.2) <= 0.1, (group, label, test_share)


def test_a_given_split_is_kept_val_is_drawn_from_train_and_leaks_are_reported():
    subjects = [f"s{i}" for i in range(40)]
    given = ["test" if i < 10 else "train" for i in range(40)]
    labels = ["a" if i % 2 else "b" for i in range(40)]
    split, leaks = given_split(subjects, labels, given, 0.25, seed=0)
    assert all(split[i] == "test" for i in range(10)) and leaks == []
    assert (split == "val").sum() == 8 and set(split[10:]) == {"train", "val"}   # a quarter of the 30 train... per class
    samples = [{"subject_id": s, "label": l, "split": g} for s, l, g in zip(subjects, labels, given)]
    samples.append({"subject_id": "s0", "label": "b", "split": "train"})       # s0 in test and in train: a leak
    parts, units, info = partitions(samples, _split(), seed=0, count=2)
    assert info["strategy"] == "given" and info["leaky"] is True and info["leaking_subjects"] == 1
    assert all(p[:10].tolist() == ["test"] * 10 for p in parts)
    with pytest.raises(DataError, match="split for some rows but not for subject s40"):
        partitions(samples + [{"subject_id": "s40", "label": "a"}], _split(), seed=0, count=1)


def test_too_few_subjects_of_a_class_stop_with_the_counts_per_split():
    labels = ["neg"] * 20 + ["pos"] * 2
    units = np.array([f"u{i}" for i in range(22)])
    split = np.array(["train"] * 12 + ["val"] * 3 + ["test"] * 5 + ["train", "train"], dtype=object)
    counts = [class_counts(split, labels, units, ["neg", "pos"])]
    assert counts[0]["test"] == {"neg": 5, "pos": 0}
    with pytest.raises(DataError) as err:
        check_counts(counts, ["neg", "pos"], MinSubjects(train=1, val=1, test=2), "covid", "subject", "the labels")
    text = str(err.value)
    assert "class 'pos' has 0 subjects in val" in text and "pos: 2 train, 0 val, 0 test" in text and "\n" not in text
