"""Dataset filters: omitted classes, condition, group-consistent minimum size, rare classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kenner.data.filters import apply_filters
from kenner.data.manifest import Exclusion, load_dataset
from kenner.errors import KennerError


def test_no_filters_changes_nothing(two_view_manifest: Path) -> None:
    dataset, _ = load_dataset(two_view_manifest)
    filtered, exclusions = apply_filters(dataset)
    assert filtered.ids == dataset.ids and exclusions == []


def test_omit_classes(grouped_folder_dataset: Path) -> None:
    dataset, _ = load_dataset(grouped_folder_dataset)
    filtered, exclusions = apply_filters(dataset, omit_classes=["beta"])
    assert filtered.classes == ["alpha", "gamma"]
    assert filtered.class_to_idx == {"alpha": 0, "gamma": 1}
    assert sorted(e.sample_id for e in exclusions) == ["beta/B1_1", "beta/B1_2", "beta/B2_1", "beta/B3_1"]
    assert all("omitted" in e.reason for e in exclusions)
    assert len(filtered.image_sizes) == 8


def test_unknown_class_to_omit_lists_known_classes(grouped_folder_dataset: Path) -> None:
    dataset, _ = load_dataset(grouped_folder_dataset)
    with pytest.raises(KennerError) as caught:
        apply_filters(dataset, omit_classes=["beta", "delta"])
    assert str(caught.value) == "unknown class(es) to omit: delta; known classes: alpha, beta, gamma"


def test_min_condition_uses_mean_and_keeps_unrated(two_view_manifest: Path) -> None:
    # mean ratings: c1 1.75, c2 1.0 (obverse only), c3 unrated, c4 0.25, c5 2.0, c6 1.0
    dataset, _ = load_dataset(two_view_manifest)
    filtered, exclusions = apply_filters(dataset, min_condition=1.5)
    assert filtered.ids == ["c1", "c3", "c5"]
    assert [(e.sample_id, e.row) for e in exclusions] == [("c2", 2), ("c4", 4), ("c6", 6)]
    assert exclusions[1].reason == "mean condition 0.25 < min_condition 1.5"


def test_min_size_drops_whole_group(grouped_folder_dataset: Path, make_image) -> None:
    small = make_image(grouped_folder_dataset / "alpha" / "A1_2.jpg", size=(40, 12))
    dataset, _ = load_dataset(grouped_folder_dataset)
    filtered, exclusions = apply_filters(dataset, min_size=20)
    assert "A1" not in filtered.groups
    assert len(filtered) == 10
    reason = f"group 'A1': {small} is 12 px on its short side < min_size 20"
    assert exclusions == [
        Exclusion("alpha/A1_1", None, None, None, reason),
        Exclusion("alpha/A1_2", None, "image", small, reason),
    ]
    kept_all, none_dropped = apply_filters(dataset, min_size=12)
    assert len(kept_all) == 12 and none_dropped == []


def test_min_size_uses_short_side_of_any_view(two_view_manifest: Path, make_image) -> None:
    images = two_view_manifest.parent / "images"
    make_image(images / "c6_rev.jpg", size=(10, 36))
    dataset, _ = load_dataset(two_view_manifest)
    filtered, exclusions = apply_filters(dataset, min_size=16)
    assert filtered.ids == ["c1", "c2", "c3", "c4"]  # c5 shares group g4 with c6
    assert [(e.sample_id, e.row, e.view) for e in exclusions] == [("c5", 5, None), ("c6", 6, "reverse")]


def test_min_size_needs_sizes(two_view_manifest: Path) -> None:
    dataset, _ = load_dataset(two_view_manifest, check_images=False)
    with pytest.raises(KennerError, match="min_size needs the size of every image"):
        apply_filters(dataset, min_size=8)
    sizes = {p: (8, 8) for sample in dataset.samples for p in sample.paths.values()}
    filtered, _ = apply_filters(dataset, min_size=8, image_sizes=sizes)
    assert len(filtered) == 6


def test_min_samples_per_class_counts_after_other_filters(grouped_folder_dataset: Path, make_image) -> None:
    make_image(grouped_folder_dataset / "gamma" / "G2_2.jpg", size=(5, 5))
    dataset, _ = load_dataset(grouped_folder_dataset)
    filtered, exclusions = apply_filters(dataset, min_size=10, min_samples_per_class=3)
    # gamma loses group G2 (2 images) to min_size, then has 2 < 3 samples left
    assert filtered.classes == ["alpha", "beta"]
    assert [e.sample_id for e in exclusions] == ["gamma/G2_1", "gamma/G2_2", "gamma/G1_1", "gamma/G3_1"]
    assert exclusions[-1].reason == "class 'gamma' has 2 samples < min_samples_per_class 3"
