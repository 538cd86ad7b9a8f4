"""What a run starts from (``kenner.runs.data``): identical images merged into one group, too few classes refused,
split warnings summarised, files left out listed. No encoder is needed for any of this."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest

from conftest import write_image
from kenner.config.sections import DataConfig, SplitConfig
from kenner.data.duplicates import merge_duplicates
from kenner.data.manifest import load_dataset
from kenner.data.splits import split_of_samples
from kenner.errors import DataError, KennerError
from kenner.runs.data import load_data, resolve_split


def _folder(root: Path, classes: int, groups: int, photos: int = 1, size: int = 12) -> Path:
    seed = 0
    for c in range(classes):
        for g in range(groups):
            for p in range(photos):
                write_image(root / f"class{c:03d}" / f"c{c}g{g}_{p}.png", (size, size), noise=40, seed=seed)
                seed += 1
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_copies_under_new_names_share_a_group_and_a_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder(tmp_path / "data", classes=2, groups=10)
    for c in range(2):
        for g in range(5):  # 10 copies under new names, each its own group
            shutil.copyfile(root / f"class{c:03d}" / f"c{c}g{g}_0.png", root / f"class{c:03d}" / f"copy{c}x{g}_0.png")
    run = tmp_path / "run"
    cfg = DataConfig(data=str(root))
    with caplog.at_level(logging.WARNING):
        dataset, _ = load_data(cfg, run, cache_dir=str(tmp_path / "cache"))
    assert "10 image(s) appear in more than one group" in caplog.text and str(run / "duplicates.csv") in caplog.text
    group = dict(zip(dataset.ids, dataset.groups, strict=True))
    assert all(
        group[f"class{c:03d}/copy{c}x{g}_0"] == group[f"class{c:03d}/c{c}g{g}_0"] for c in range(2) for g in range(5)
    )
    assert len(set(dataset.groups)) == 20 and len(dataset.merged_groups) == 10
    for seed in range(5):
        split = resolve_split(dataset, SplitConfig(split_seed=seed), tmp_path / f"split{seed}")
        where = dict(zip(dataset.ids, split_of_samples(split, dataset.groups), strict=True))
        assert all(
            where[f"class{c:03d}/copy{c}x{g}_0"] == where[f"class{c:03d}/c{c}g{g}_0"]
            for c in range(2)
            for g in range(5)
        )
    rows = _rows(run / "duplicates.csv")
    assert len(rows) == 10 and rows[0]["sample_ids"] == "class000/c0g0_0;class000/copy0x0_0"
    assert rows[0]["group"] == "c0g0" and rows[0]["groups"] == "c0g0;copy0x0"


def _manifest_with_one_file_twice(tmp_path: Path) -> Path:
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / f"{name}.png", noise=40, seed=ord(name))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,label,group,path\nx1,cat,g1,a.png\nx2,cat,g2,b.png\nx3,cat,g3,a.png\ny1,dog,h1,c.png\ny2,dog,h2,d.png\n"
    )
    return manifest


def test_refuse_names_the_rows_and_ignore_keeps_the_groups(tmp_path: Path) -> None:
    manifest = _manifest_with_one_file_twice(tmp_path)
    cache = str(tmp_path / "cache")
    with pytest.raises(DataError) as caught:
        load_data(DataConfig(data=str(manifest), duplicates="refuse"), cache_dir=cache)
    assert str(caught.value) == (
        f"{manifest}: 1 image(s) appear in more than one group: row 1 (x1, group g1) = "
        "row 3 (x3, group g3); remove the copies or give them one group, or use "
        "--duplicates merge"
    )
    dataset, _ = load_data(DataConfig(data=str(manifest), duplicates="ignore"), cache_dir=cache)
    assert dataset.groups == ["g1", "g2", "g3", "h1", "h2"] and not dataset.merged_groups
    dataset, _ = load_data(DataConfig(data=str(manifest)), cache_dir=cache)
    assert dataset.groups == ["g1", "g2", "g1", "h1", "h2"] and dataset.merged_groups == {"g3": "g1"}


def test_identical_images_with_two_labels_are_an_error(tmp_path: Path) -> None:
    manifest = _manifest_with_one_file_twice(tmp_path)
    manifest.write_text(manifest.read_text().replace("y2,dog,h2,d.png", "y2,dog,h2,b.png"))
    dataset, _ = load_dataset(manifest)
    hashes = {path: path.name for sample in dataset.samples for path in sample.paths.values()}  # name as content
    with pytest.raises(
        DataError,
        match=r"identical images with two labels: row 2 \(x2, group g2\) \('cat'\) and "
        r"row 5 \(y2, group h2\) \('dog'\)",
    ):
        merge_duplicates(dataset, hashes)


def test_merging_joins_chains_of_groups(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}.png", noise=40, seed=ord(name))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,label,group,front_path,back_path\n1,cat,g3,a.png,b.png\n2,cat,g2,b.png,c.png\n3,cat,g1,c.png,c.png\n"
    )
    dataset, _ = load_dataset(manifest)
    hashes = {path: path.name for sample in dataset.samples for path in sample.paths.values()}
    merged, copies = merge_duplicates(dataset, hashes)
    assert merged.groups == ["g1", "g1", "g1"] and {c.group for c in copies} == {"g1"}


@pytest.mark.parametrize("how", ["manifest", "folder", "filter"])
def test_fewer_than_two_classes_are_refused(tmp_path: Path, how: str) -> None:
    if how == "manifest":
        write_image(tmp_path / "a.png")
        (tmp_path / "m.csv").write_text("id,label,path\nx,cat,a.png\n")
        cfg = DataConfig(data=str(tmp_path / "m.csv"))
    else:
        root = _folder(tmp_path / "data", classes=1 if how == "folder" else 2, groups=3)
        cfg = DataConfig(data=str(root), omit_classes=("class001",) if how == "filter" else ())
    with pytest.raises(
        KennerError,
        match=r": 1 class \('(class000|cat)'\) after validation and filters; a "
        r"classifier needs at least 2 classes",
    ):
        load_data(cfg, cache_dir=str(tmp_path / "cache"))
    dataset, _ = load_data(cfg, cache_dir=str(tmp_path / "cache"), min_classes=1)  # evaluate and embed take it
    assert len(dataset.classes) == 1


def test_split_warnings_are_summarised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder(tmp_path / "data", classes=300, groups=1, size=8)
    dataset, _ = load_data(DataConfig(data=str(root), duplicates="ignore"))
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        resolve_split(dataset, SplitConfig(), run)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 6
    assert lines[0] == "split: class 'class000' has 1 group: no val or test sample"
    assert lines[-1] == f"split: ... and 295 more warnings (300 in all, listed in {run / 'split_warnings.txt'})"
    assert len((run / "split_warnings.txt").read_text().splitlines()) == 300


def test_files_left_out_of_a_folder_are_in_excluded_csv(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", classes=2, groups=3)
    (root / "class000" / "c0g9_0.HEIC").write_bytes(b"heic")
    (root / "class001" / "c1g9_0.jpg").symlink_to(root / "gone.jpg")
    run = tmp_path / "run"
    load_data(DataConfig(data=str(root)), run, cache_dir=str(tmp_path / "cache"))
    rows = {Path(row["path"]).name: row["reason"] for row in _rows(run / "excluded.csv")}
    assert set(rows) == {"c0g9_0.HEIC", "c1g9_0.jpg"}
    assert rows["c0g9_0.HEIC"].startswith("unsupported file type") and "dangling" in rows["c1g9_0.jpg"]
