"""Leakage-safe splits: groups never cross splits, classes keep their proportions, files are stable."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from kenner.data.splits import (
    SPLIT_NAMES,
    Split,
    assert_no_group_leak,
    load_folds,
    load_split,
    make_folds,
    make_split,
    save_folds,
    save_split,
    split_of_samples,
    split_summary,
)
from kenner.errors import KennerError


def grouped_data(seed: int, n_classes: int = 5, groups_per_class: int = 30) -> tuple[list[str], list[str]]:
    """Random grouped data: each group (object) has 1-4 photos of one class."""
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for c in range(n_classes):
        for g in range(groups_per_class):
            for _ in range(rng.integers(1, 5)):
                groups.append(f"c{c}-obj{g}")
                labels.append(f"class{c}")
    order = rng.permutation(len(groups))
    return [groups[i] for i in order], [labels[i] for i in order]


def sample_counts(split: Split, groups: list[str]) -> Counter:
    return Counter(split_of_samples(split, groups))


@pytest.mark.parametrize("seed", range(6))
def test_no_group_leak_and_every_group_placed(seed: int) -> None:
    groups, labels = grouped_data(seed)
    split, messages = make_split(groups, labels, seed=seed)
    assert messages == []
    placed = split.train + split.val + split.test
    assert len(placed) == len(set(placed)) == len(set(groups))
    names = split_of_samples(split, groups)
    where: dict[str, set[str]] = {}
    for group, name in zip(groups, names, strict=True):
        where.setdefault(group, set()).add(name)
    assert all(len(found) == 1 for found in where.values())
    for name in SPLIT_NAMES:
        assert split.ids(name) == sorted(split.ids(name))


@pytest.mark.parametrize("seed", range(4))
def test_class_proportions_roughly_kept(seed: int) -> None:
    groups, labels = grouped_data(seed, n_classes=4, groups_per_class=40)
    split, _ = make_split(groups, labels, seed=seed)
    names = split_of_samples(split, groups)
    for label in sorted(set(labels)):
        counts = Counter(n for n, lab in zip(names, labels, strict=True) if lab == label)
        total = sum(counts.values())
        assert counts["train"] / total == pytest.approx(0.70, abs=0.06)
        assert counts["val"] / total == pytest.approx(0.15, abs=0.06)
        assert counts["test"] / total == pytest.approx(0.15, abs=0.06)


def test_custom_ratios_and_empty_test() -> None:
    groups, labels = grouped_data(1)
    split, messages = make_split(groups, labels, ratios=(0.8, 0.2, 0.0), seed=3)
    assert split.test == [] and messages == []
    counts = sample_counts(split, groups)
    assert counts["train"] / len(groups) == pytest.approx(0.8, abs=0.05)


def test_seed_changes_split_and_same_seed_repeats() -> None:
    groups, labels = grouped_data(0)
    assert make_split(groups, labels, seed=1) == make_split(groups, labels, seed=1)
    assert make_split(groups, labels, seed=1)[0] != make_split(groups, labels, seed=2)[0]


def test_independent_of_input_order() -> None:
    groups, labels = grouped_data(2)
    order = np.random.default_rng(9).permutation(len(groups))
    shuffled = ([groups[i] for i in order], [labels[i] for i in order])
    assert make_split(groups, labels, seed=5) == make_split(*shuffled, seed=5)


def test_saved_files_byte_identical(tmp_path) -> None:
    groups, labels = grouped_data(3)
    order = np.random.default_rng(1).permutation(len(groups))
    for name, (g, lab) in {
        "a": (groups, labels),
        "b": ([groups[i] for i in order], [labels[i] for i in order]),
    }.items():
        split, _ = make_split(g, lab, seed=11)
        save_split(split, tmp_path / name, groups=g, labels=lab)
    for file in ("train_ids.json", "val_ids.json", "test_ids.json", "summary.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert json.loads((tmp_path / "a" / "test_ids.json").read_text()) == load_split(tmp_path / "a").test


def test_summary_csv_counts(tmp_path) -> None:
    groups = ["g1", "g1", "g2", "g3", "g4", "g5", "g6"]
    labels = ["a", "a", "a", "a", "b", "b", "b"]
    split = Split(train=["g1", "g4"], val=["g2", "g5"], test=["g3", "g6"])
    save_split(split, tmp_path, groups=groups, labels=labels)
    assert (tmp_path / "summary.csv").read_text() == "class,train,val,test,total\na,2,1,1,4\nb,1,1,1,3\n"
    assert split_summary(split, groups, labels)["train"] == {"groups": 2, "samples": 3, "classes": 2}


def test_small_classes_are_reported_not_dropped() -> None:
    groups, labels = grouped_data(4, n_classes=2, groups_per_class=10)
    groups += ["rare-1", "rare-1", "rare-2", "single"]
    labels += ["rare", "rare", "rare", "lonely"]
    split, messages = make_split(groups, labels, seed=0)
    assert "class 'rare' has 2 groups: no test sample" in messages
    assert "class 'lonely' has 1 group: no val or test sample" in messages
    assert "single" in split.train
    assert {"rare-1", "rare-2"} <= set(split.train + split.val)
    assert {"rare-1", "rare-2"} & set(split.train) and {"rare-1", "rare-2"} & set(split.val)


def test_three_groups_reach_every_split() -> None:
    split, messages = make_split(["a", "b", "c"], ["x", "x", "x"], seed=0)
    assert messages == []
    assert [len(split.train), len(split.val), len(split.test)] == [1, 1, 1]


def test_mixed_label_group_uses_majority_and_warns() -> None:
    groups, labels = grouped_data(5, n_classes=2, groups_per_class=10)
    groups += ["mixed"] * 3
    labels += ["class0", "class0", "class1"]
    split, messages = make_split(groups, labels, seed=0)
    assert any("'mixed' has mixed labels (class0: 2, class1: 1)" in m and "'class0'" in m for m in messages)
    assert sum("mixed" in split.ids(name) for name in SPLIT_NAMES) == 1


def test_bad_inputs_raise() -> None:
    with pytest.raises(KennerError, match="ratios"):
        make_split(["a"], ["x"], ratios=(0.5, 0.2, 0.2))
    with pytest.raises(KennerError, match="2 group ids for 1 labels"):
        make_split(["a", "b"], ["x"])
    with pytest.raises(KennerError, match="empty"):
        make_split([], [])


def test_assert_no_group_leak() -> None:
    assert_no_group_leak(Split(train=["a"], val=["b"], test=["c"]))
    with pytest.raises(KennerError, match="'b' is in both train and test"):
        assert_no_group_leak(Split(train=["a", "b"], val=[], test=["b"]))


def test_split_of_samples_names_a_missing_group() -> None:
    split = Split(train=["a"], val=["b"], test=[])
    assert split_of_samples(split, ["b", "a", "a"]) == ["val", "train", "train"]
    with pytest.raises(KennerError, match=r"'zz'.*does not match the dataset"):
        split_of_samples(split, ["a", "zz"])


@pytest.mark.parametrize("seed", range(3))
def test_folds_disjoint_covering_and_leak_free(seed: int) -> None:
    groups, labels = grouped_data(seed, n_classes=3, groups_per_class=20)
    folds, _ = make_folds(groups, labels, k=4, seed=seed, val_fraction=0.15)
    assert len(folds) == 4
    tests = [set(fold.test) for fold in folds]
    assert set().union(*tests) == set(groups)
    assert sum(len(t) for t in tests) == len(set(groups))
    for fold in folds:
        assert_no_group_leak(fold)
        assert set(fold.train) | set(fold.val) | set(fold.test) == set(groups)
        val_share = sample_counts(fold, groups)["val"] / len(groups)
        assert val_share == pytest.approx(0.15, abs=0.05)
    assert make_folds(groups, labels, k=4, seed=seed)[0] == folds


def test_folds_report_small_classes_and_check_k() -> None:
    groups, labels = grouped_data(0, n_classes=2, groups_per_class=8)
    groups.append("lonely-obj")
    labels.append("lonely")
    _, messages = make_folds(groups, labels, k=3, seed=0)
    assert any(m.startswith("fold ") and "class 'lonely' has 1 group: no val sample" in m for m in messages)
    with pytest.raises(KennerError, match="at least 5 groups"):
        make_folds(["a", "b"], ["x", "y"], k=5)
    with pytest.raises(KennerError, match="val_fraction"):
        make_folds(groups, labels, k=2, val_fraction=0.6)


def test_save_and_load_folds(tmp_path) -> None:
    groups, labels = grouped_data(1, n_classes=2, groups_per_class=10)
    folds, _ = make_folds(groups, labels, k=3, seed=2)
    save_folds(folds, tmp_path, groups=groups, labels=labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_0", "fold_1", "fold_2"]
    assert load_folds(tmp_path) == folds
    with pytest.raises(KennerError, match="no fold_"):
        load_folds(tmp_path / "fold_0")


def test_load_split_errors(tmp_path) -> None:
    with pytest.raises(KennerError, match=r"train_ids\.json is missing"):
        load_split(tmp_path)
    save_split(Split(train=["a"], val=["b"], test=["c"]), tmp_path, groups=["a", "b", "c"], labels=["x", "x", "x"])
    (tmp_path / "val_ids.json").write_text("[1, 2")
    with pytest.raises(KennerError, match=r"val_ids\.json cannot be read"):
        load_split(tmp_path)
    (tmp_path / "val_ids.json").write_text('{"b": 1}')
    with pytest.raises(KennerError, match="JSON list of group ids"):
        load_split(tmp_path)
    (tmp_path / "val_ids.json").write_text('["a"]')
    with pytest.raises(KennerError, match="leaks"):
        load_split(tmp_path)
