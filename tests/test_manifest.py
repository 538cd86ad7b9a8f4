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
        ("c2", "2", "obverse"),
        ("c5", "5", "obverse"),
        ("c5", "5", "reverse"),
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


# ------------------------------------------------------------------ left out, grouping, columns


def test_folder_lists_files_it_cannot_use(grouped_folder_dataset: Path, make_image) -> None:
    root = grouped_folder_dataset
    (root / "alpha" / "A9_1.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (root / "beta" / "gone_1.jpg").symlink_to(root / "beta" / "nowhere.jpg")
    (root / "gamma" / "loop_1.jpg").symlink_to(root / "gamma" / "loop_2.jpg")
    (root / "gamma" / "loop_2.jpg").symlink_to(root / "gamma" / "loop_1.jpg")
    make_image(root / "stray_1.jpg")
    dataset, left_out = load_dataset(root, workers=1)
    assert len(dataset) == 12
    reasons = {item.path.name: item.reason for item in left_out}
    assert set(reasons) == {"A9_1.HEIC", "gone_1.jpg", "loop_1.jpg", "loop_2.jpg", "stray_1.jpg"}
    assert "unsupported file type" in reasons["A9_1.HEIC"] and ".heic" in reasons["A9_1.HEIC"]
    assert "dangling symbolic link" in reasons["gone_1.jpg"]
    assert reasons["loop_1.jpg"] == "symbolic link loop"
    assert "not inside a class folder" in reasons["stray_1.jpg"]
    assert {item.sample_id for item in left_out if item.path.name == "A9_1.HEIC"} == {"alpha/A9_1"}


def test_fail_mode_lists_every_bad_image(grouped_folder_dataset: Path, two_view_manifest: Path) -> None:
    bad = [grouped_folder_dataset / "beta" / f"Z{i}_1.jpg" for i in range(25)]
    for path in bad:
        path.write_bytes(b"")
    with pytest.raises(ImageError) as caught:
        load_dataset(grouped_folder_dataset, workers=2)
    message = str(caught.value)
    assert message.startswith(f"{grouped_folder_dataset}: 25 bad images: ") and "\n" not in message
    assert sum(str(path) in message for path in bad) == 20 and "and 5 more" in message

    images = two_view_manifest.parent / "images"
    (images / "c2_obv.jpg").unlink()
    (images / "c5_rev.jpg").write_text("text")
    with pytest.raises(ImageError) as caught:
        load_dataset(two_view_manifest)
    assert str(caught.value).startswith(
        f"{two_view_manifest}: 2 bad images: row 2 obverse image {images / 'c2_obv.jpg'}: file not found; "
        f"row 5 reverse image {images / 'c5_rev.jpg'}: not an image"
    )


def _camera_folder(root: Path, make_image, classes: dict[str, int]) -> Path:
    seed = 0
    for label, count in classes.items():
        for i in range(count):
            make_image(root / label / f"IMG_{i:04d}.png", noise=20, seed=seed)
            seed += 1
    return root


def test_camera_style_names_explain_the_group_rule(tmp_path: Path, make_image) -> None:
    root = _camera_folder(tmp_path / "photos", make_image, {"cat": 3, "dog": 3})
    with pytest.raises(DataError) as caught:
        load_dataset(root)
    message = str(caught.value)
    assert "group 'IMG' has two labels" in message
    assert "the part of the file name before the last '_'" in message and "--group-by file" in message

    dataset, _ = load_dataset(root, group_by="file")
    assert sorted(dataset.groups) == sorted(dataset.ids) and len(set(dataset.groups)) == 6
    with pytest.raises(DataError, match=r"6 file name\(s\) do not match --group-regex 'x\(\\d\)'"):
        load_dataset(root, group_regex=r"x(\d)")
    with pytest.raises(KennerError, match="not a regular expression"):
        load_dataset(root, group_regex="(")


def test_group_regex_takes_its_first_group_or_the_match(tmp_path: Path, make_image) -> None:
    for seed, name in enumerate(["cat/tom left.png", "cat/tom right.png", "cat/kit left.png", "dog/rex left.png"]):
        make_image(tmp_path / "pets" / name, seed=seed, noise=20)
    dataset, _ = load_dataset(tmp_path / "pets", group_regex=r"^(\w+) ")
    assert dict(zip(dataset.ids, dataset.groups, strict=True)) == {
        "cat/kit left": "kit",
        "cat/tom left": "tom",
        "cat/tom right": "tom",
        "dog/rex left": "rex",
    }
    dataset, _ = load_dataset(tmp_path / "pets", group_regex=r"^\w+")
    assert sorted(set(dataset.groups)) == ["kit", "rex", "tom"]


def test_one_group_holding_most_of_a_class_is_reported(
    tmp_path: Path, make_image, caplog: pytest.LogCaptureFixture
) -> None:
    root = _camera_folder(tmp_path / "photos", make_image, {"cat": 4})
    make_image(root / "dog" / "d1_1.png", seed=50)
    make_image(root / "dog" / "d2_1.png", seed=51)
    make_image(root / "dog" / "d3_1.png", seed=52)
    with caplog.at_level("WARNING"):
        load_dataset(root)
    assert [record.getMessage() for record in caplog.records if "holds" in record.getMessage()] == [
        "class 'cat': group 'IMG' holds 4 of its 4 images and a group never crosses splits (the group is the part "
        "of the file name before the last '_' (IMG_0001.jpg -> IMG)); if these are not photos of one object, use "
        "--group-by file (every photo its own object) or --group-regex REGEX"
    ]
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_dataset(root, group_by="file")
    assert not caplog.records


def test_grouping_options_are_for_folders(two_view_manifest: Path) -> None:
    with pytest.raises(DataError, match="apply to folder datasets"):
        load_dataset(two_view_manifest, group_by="file")


def _add_column(manifest: Path, name: str, values: list[str]) -> None:
    lines = manifest.read_text().splitlines()
    lines = [f"{line}\t{cell}" for line, cell in zip(lines, [name, *values], strict=True)]
    manifest.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("old", "new", "intended"),
    [
        ("obverse_path", "obverse_pth", "obverse_path"),
        ("obverse_path", "obverse-paths", "obverse_path"),
        ("reverse_condition", "reverse_conditon", "reverse_condition"),
        ("group", "gruop", "group"),
    ],
)
def test_misspelled_view_column_is_an_error(two_view_manifest: Path, old: str, new: str, intended: str) -> None:
    text = two_view_manifest.read_text()
    two_view_manifest.write_text(text.replace(old, new, 1))
    with pytest.raises(DataError) as caught:
        load_dataset(two_view_manifest, check_images=False)
    assert str(caught.value).startswith(f"{two_view_manifest}: column {new!r} looks like a misspelling of {intended!r}")


def test_undeclared_column_of_image_paths_is_an_error(two_view_manifest: Path) -> None:
    _add_column(two_view_manifest, "edge", [f"images/c{i}_edge.JPG" for i in range(1, 7)])
    with pytest.raises(
        DataError,
        match=r"column 'edge' holds image paths \(first: 'images/c1_edge.JPG'\) but is "
        r"not a view; name it edge_path",
    ):
        load_dataset(two_view_manifest, check_images=False)


def test_other_columns_are_metadata(two_view_manifest: Path) -> None:
    _add_column(two_view_manifest, "Mint", ["Rome", "Rome", "", "Lyon", "Lyon", "Rome"])
    _add_column(two_view_manifest, "source_url", [f"https://example.org/c{i}.jpg" for i in range(1, 7)])
    dataset, _ = load_dataset(two_view_manifest)
    assert dataset.metadata_columns == ["mint", "source_url"]
    assert dataset.samples[0].metadata == {"mint": "Rome", "source_url": "https://example.org/c1.jpg"}
    assert dataset.samples[2].metadata["mint"] == ""
    assert dataset.subset(["c4"]).samples[0].metadata["mint"] == "Lyon"
