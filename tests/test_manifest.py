"""Loading folder and manifest datasets: grouping, views, validation errors, skip-mode reports."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import BAD_FILES, FOLDER_IMAGE_SIZE, MANIFEST_IMAGE_SIZE
from kenner.data.manifest import Exclusion, load_dataset, resolve_views, write_exclusions
from kenner.errors import DataError, ImageError, KennerError


def _edit_manifest(manifest: Path, row: int, column: str, value: str) -> None:
    """Set one cell of a TSV manifest (``row`` counts data rows from 1)."""
    lines = [line.split("\t") for line in manifest.read_text().splitlines()]
    lines[row][lines[0].index(column)] = value
    manifest.write_text("\n".join("\t".join(cells) for cells in lines) + "\n")


# ------------------------------------------------------------------------------------------ folder


def test_folder_classes_groups_ids(grouped_folder_dataset: Path) -> None:
    dataset, exclusions = load_dataset(grouped_folder_dataset, workers=2)
    assert exclusions == []
    assert dataset.views == ["image"]
    assert dataset.classes == ["alpha", "beta", "gamma"]
    assert dataset.class_to_idx == {"alpha": 0, "beta": 1, "gamma": 2}
    by_id = {sample.id: sample for sample in dataset.samples}
    assert sorted(by_id) == sorted(dataset.ids)
    assert by_id["alpha/A1_2"].group == "A1"
    assert by_id["alpha/A3"].group == "A3"  # no "_": its own group
    assert by_id["gamma/G2_2"].label == "gamma"
    assert by_id["alpha/A1_1"].paths["image"] == grouped_folder_dataset / "alpha" / "A1_1.jpg"
    assert all(sample.row is None for sample in dataset.samples)
    assert dataset.groups.count("A1") == 2
    assert set(dataset.image_sizes.values()) == {FOLDER_IMAGE_SIZE}
    assert len(dataset.image_sizes) == len(dataset) == 12


def test_folder_ignores_hidden_and_non_image_files_and_reads_upper_case(grouped_folder_dataset, make_image):
    root = grouped_folder_dataset
    make_image(root / "alpha" / ".thumb_1.jpg")
    make_image(root / ".cache" / "x_1.jpg")
    (root / "beta" / "notes.txt").write_text("hello")
    make_image(root / "beta" / "B9_1.JPG")
    dataset, _ = load_dataset(root, workers=1)
    assert dataset.classes == ["alpha", "beta", "gamma"]
    assert "beta/B9_1" in dataset.ids
    assert len(dataset) == 13


def test_folder_same_id_in_two_classes_is_an_error(grouped_folder_dataset, make_image) -> None:
    make_image(grouped_folder_dataset / "beta" / "A1_7.jpg")
    with pytest.raises(DataError, match="two labels") as caught:
        load_dataset(grouped_folder_dataset)
    message = str(caught.value)
    assert "'A1'" in message and "alpha" in message and "beta" in message
    assert "A1_7.jpg" in message


def test_folder_same_id_two_extensions_is_an_error(grouped_folder_dataset, make_image) -> None:
    make_image(grouped_folder_dataset / "alpha" / "A1_1.png")
    with pytest.raises(DataError, match="same sample id 'alpha/A1_1'"):
        load_dataset(grouped_folder_dataset)


@pytest.mark.parametrize(("name", "make_bad", "reason"), [f for f in BAD_FILES if f[0] != "missing.jpg"])
def test_folder_bad_image_fails_naming_the_file(grouped_folder_dataset, make_image, name, make_bad, reason):
    path = grouped_folder_dataset / "beta" / name
    make_bad(path)
    with pytest.raises(ImageError) as caught:
        load_dataset(grouped_folder_dataset, workers=2)
    message = str(caught.value)
    assert str(path) in message and reason in message and "--on-bad-image skip" in message


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path)


def test_missing_dataset_and_bad_option(tmp_path: Path, grouped_folder_dataset) -> None:
    with pytest.raises(DataError, match="dataset not found"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(KennerError, match="on_bad_image"):
        load_dataset(grouped_folder_dataset, on_bad_image="ignore")


# ---------------------------------------------------------------------------------------- manifest


def test_two_view_manifest(two_view_manifest: Path) -> None:
    dataset, exclusions = load_dataset(two_view_manifest, workers=2)
    assert exclusions == []
    assert dataset.views == ["obverse", "reverse"]
    assert dataset.ids == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert dataset.labels == ["aureus"] * 3 + ["denarius"] * 3
    assert dataset.groups == ["g1", "g1", "g2", "g3", "g4", "g4"]
    assert [sample.row for sample in dataset.samples] == [1, 2, 3, 4, 5, 6]
    first = dataset.samples[0]
    assert first.paths == {
        "obverse": two_view_manifest.parent / "images" / "c1_obv.jpg",
        "reverse": two_view_manifest.parent / "images" / "c1_rev.jpg",
    }
    assert first.conditions == {"obverse": 2.0, "reverse": 1.5}
    assert dataset.samples[1].conditions == {"obverse": 1.0}
    assert dataset.samples[2].conditions == {}
    assert set(dataset.image_sizes.values()) == {MANIFEST_IMAGE_SIZE}
    assert len(dataset.image_sizes) == 12
    assert resolve_views(dataset, "reverse") == ["reverse"]


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_csv_and_sniffed_manifests(two_view_manifest: Path, suffix: str) -> None:
    text = two_view_manifest.read_text().replace("\t", ",")
    other = two_view_manifest.with_suffix(suffix)
    other.write_text(text)
    dataset, _ = load_dataset(other, workers=1)
    assert dataset.ids == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert dataset.views == ["obverse", "reverse"]


def test_group_defaults_to_id_and_plain_path_column(tmp_path: Path, make_image) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png", color=(0, 0, 0))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"ID,Label,path\nx,cat,a.png\ny,dog,{tmp_path / 'b.png'}\n")
    dataset, _ = load_dataset(manifest)
    assert dataset.views == ["image"]
    assert dataset.groups == ["x", "y"]
    assert dataset.samples[1].paths["image"] == tmp_path / "b.png"


@pytest.mark.parametrize(("name", "make_bad", "reason"), BAD_FILES)
def test_manifest_bad_image_names_row_path_and_reason(two_view_manifest, make_image, name, make_bad, reason):
    path = two_view_manifest.parent / "images" / name
    make_bad(path)
    _edit_manifest(two_view_manifest, 3, "reverse_path", f"images/{name}")
    with pytest.raises(ImageError) as caught:
        load_dataset(two_view_manifest, workers=2)
    message = str(caught.value)
    assert message.startswith(f"{two_view_manifest}, row 3: reverse image {path}: {reason}")


@pytest.mark.parametrize(
    ("row", "column", "value", "expected"),
    [
        (2, "id", "c1", "row 2: duplicate id 'c1' (first in row 1)"),
        (4, "label", "", "row 4: empty label for id 'c4'"),
        (5, "id", " ", "row 5: empty id"),
        (1, "obverse_path", "", "row 1: empty obverse_path for id 'c1'"),
        (3, "obverse_condition", "3", "row 3: obverse_condition 3 is outside 0-2"),
        (6, "reverse_condition", "good", "row 6: reverse_condition 'good' is not a number"),
        (6, "reverse_condition", "nan", "row 6: reverse_condition nan is outside 0-2"),
        (3, "group", "g3", "row 4: group 'g3' has two labels: 'aureus' (row 3) and 'denarius' (row 4)"),
    ],
)
def test_manifest_row_errors(two_view_manifest, row, column, value, expected) -> None:
    _edit_manifest(two_view_manifest, row, column, value)
    with pytest.raises(DataError) as caught:
        load_dataset(two_view_manifest, check_images=False)
    assert str(caught.value).startswith(f"{two_view_manifest}, {expected}")


def test_missing_required_column_lists_found_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\tclass\tobverse_path\nc1\tx\ta.jpg\n")
    with pytest.raises(DataError) as caught:
        load_dataset(manifest)
    assert str(caught.value) == (
        f"{manifest}: missing required column(s): label; found columns: id, class, obverse_path"
    )
    manifest.write_text("id\tlabel\tfile\nc1\tx\ta.jpg\n")
    with pytest.raises(DataError, match=r"<view>_path .*found columns: id, label, file"):
        load_dataset(manifest)


def test_wrong_field_count_and_orphan_condition_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\tlabel\tobverse_path\nc1\tx\ta.jpg\nc2\ty\n")
    with pytest.raises(DataError, match=r"row 2: 2 fields but the header has 3"):
        load_dataset(manifest)
    manifest.write_text("id\tlabel\tobverse_path\tedge_condition\nc1\tx\ta.jpg\t1\n")
    with pytest.raises(DataError, match="edge_condition has no matching edge_path column"):
        load_dataset(manifest)


def test_unknown_view_lists_available_views(two_view_manifest: Path) -> None:
    dataset, _ = load_dataset(two_view_manifest, check_images=False)
    with pytest.raises(DataError) as caught:
        resolve_views(dataset, ["obverse", "edge"])
    assert "unknown view(s) 'edge'" in str(caught.value)
    assert "this dataset has views: obverse, reverse" in str(caught.value)


def test_skip_mode_reports_every_bad_image(two_view_manifest: Path, tmp_path: Path) -> None:
    images = two_view_manifest.parent / "images"
    (images / "c2_obv.jpg").unlink()
    (images / "c5_obv.jpg").write_bytes(b"")
    (images / "c5_rev.jpg").write_text("text")

    dataset, exclusions = load_dataset(two_view_manifest, on_bad_image="skip", workers=2)
    assert dataset.ids == ["c1", "c3", "c4", "c6"]
    assert images / "c5_rev.jpg" not in dataset.image_sizes
    assert len(dataset.image_sizes) == 8
    assert exclusions == [
        Exclusion("c2", 2, "obverse", images / "c2_obv.jpg", "file not found"),
        Exclusion("c5", 5, "obverse", images / "c5_obv.jpg", "empty file (0 bytes)"),
        Exclusion("c5", 5, "reverse", images / "c5_rev.jpg", "not an image (unrecognised file format)"),
    ]

    report = write_exclusions(exclusions, tmp_path / "out" / "excluded.csv")
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["sample_id", "row", "view", "path", "reason"]
    assert [(r["sample_id"], r["row"], r["view"]) for r in rows] == [
        ("c2", "2", "obverse"), ("c5", "5", "obverse"), ("c5", "5", "reverse")
    ]
    assert rows[1]["path"] == str(images / "c5_obv.jpg")
    assert rows[2]["reason"].startswith("not an image")


def test_skip_mode_with_nothing_left(tmp_path: Path) -> None:
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\tlabel\tpath\nc1\tx\tgone.jpg\n")
    with pytest.raises(DataError, match="no usable images"):
        load_dataset(manifest, on_bad_image="skip")


def test_without_image_checks_only_existence_is_checked(two_view_manifest: Path) -> None:
    images = two_view_manifest.parent / "images"
    (images / "c3_rev.jpg").write_text("text")
    dataset, _ = load_dataset(two_view_manifest, check_images=False)
    assert len(dataset) == 6 and dataset.image_sizes == {}
    (images / "c3_rev.jpg").unlink()
    with pytest.raises(ImageError, match=r"row 3: reverse image .*c3_rev\.jpg: file not found"):
        load_dataset(two_view_manifest, check_images=False)


def test_subset_keeps_order_and_sizes(two_view_manifest: Path) -> None:
    dataset, _ = load_dataset(two_view_manifest)
    part = dataset.subset(["c5", "c1"])
    assert part.ids == ["c1", "c5"]
    assert part.views == dataset.views
    assert set(part.image_sizes) == {p for s in part.samples for p in s.paths.values()}
    with pytest.raises(KennerError, match="'zz'"):
        dataset.subset(["c1", "zz"])
