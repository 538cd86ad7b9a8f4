"""Data problems through the ``kenner`` CLI: metadata columns and identical images in a run, one-line refusals,
grouping flags, and the images ``kenner embed --on-bad-image skip`` leaves out."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_image
from kenner.cli import main
from synthetic import write_two_view_dataset


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _with_mint_and_a_copy(manifest: Path) -> Path:
    """Add a ``mint`` column and give row 5 the obverse file of row 1 (another group)."""
    lines = [line.split("\t") for line in manifest.read_text().splitlines()]
    lines[0].append("mint")
    for index, cells in enumerate(lines[1:]):
        cells.append("Rome" if index % 2 else "Lyon")
    lines[5][lines[0].index("obverse_path")] = lines[1][lines[0].index("obverse_path")]
    manifest.write_text("\n".join("\t".join(cells) for cells in lines) + "\n")
    return manifest


def test_run_keeps_metadata_and_merges_identical_images(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = _with_mint_and_a_copy(write_two_view_dataset(tmp_path / "data"))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--method",
                "knn",
                "--data",
                str(manifest),
                "--out-dir",
                str(run),
                "--cache-dir",
                str(cache),
                "--num-workers",
                "0",
                "--no-track",
            ]
        )
        == 0
    )
    assert "1 image(s) appear in more than one group" in caplog.text
    predictions = pd.read_parquet(run / "predictions.parquet").set_index("sample_id")
    assert predictions.loc["aur00_0", "mint"] == "Lyon" and predictions.loc["aur00_1", "mint"] == "Rome"
    assert predictions.loc["aur00_0", "split"] == predictions.loc["aur02_0", "split"]
    with open(run / "duplicates.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["sample_ids"] == "aur00_0;aur02_0" and row["group"] == "aur00"
    report = (run / "report.md").read_text()
    assert "| metadata columns (in predictions.parquet) | mint |" in report
    assert "| groups merged for identical images (duplicates.csv) | 1 |" in report


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kenner: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_refusals_are_one_line(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    write_image(tmp_path / "a.png")
    (tmp_path / "one.csv").write_text("id,label,path\nx,cat,a.png\n")
    base = ["--out-dir", str(tmp_path / "run"), "--cache-dir", str(cache), "--no-track"]
    err = _one_line_error(["train", "--method", "knn", "--data", str(tmp_path / "one.csv"), *base], capsys)
    assert "1 class ('cat')" in err and "at least 2 classes" in err

    manifest = _with_mint_and_a_copy(write_two_view_dataset(tmp_path / "coins", groups_per_class=3))
    err = _one_line_error(
        ["train", "--method", "knn", "--data", str(manifest), "--duplicates", "refuse", *base], capsys
    )
    assert "row 1 (aur00_0, group aur00) = row 5 (aur02_0, group aur02)" in err

    (manifest.parent / "coins.tsv").write_text(manifest.read_text().replace("obverse_path", "obverse_pth"))
    err = _one_line_error(["split", "--data", str(manifest), "--out-dir", str(tmp_path / "split")], capsys)
    assert "column 'obverse_pth' looks like a misspelling of 'obverse_path'" in err


def test_grouping_flags_of_folder_datasets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for seed in range(12):
        write_image(tmp_path / "photos" / ("cat" if seed % 2 else "dog") / f"IMG_{seed:04d}.png", noise=30, seed=seed)
    argv = ["split", "--data", str(tmp_path / "photos"), "--out-dir", str(tmp_path / "split")]
    err = _one_line_error(argv, capsys)
    assert "group 'IMG' has two labels" in err and "before the last '_'" in err and "--group-by file" in err
    assert main([*argv, "--group-by", "file"]) == 0
    assert main([*argv, "--group-regex", r"IMG_(\d+)"]) == 0


def test_embed_lists_what_skip_left_out(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_two_view_dataset(tmp_path / "data", groups_per_class=2)
    (manifest.parent / "obverse" / "aur00_1.png").write_bytes(b"")
    (manifest.parent / "reverse" / "den01_0.png").write_text("not a picture")
    out = tmp_path / "export" / "emb.npz"
    assert (
        main(
            [
                "embed",
                "--data",
                str(manifest),
                "--cache-dir",
                str(cache),
                "--on-bad-image",
                "skip",
                "--num-workers",
                "0",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "10 samples x 2 view(s)" in printed and "2 image(s)/file(s) left out:" in printed
    assert f"{manifest.parent / 'obverse' / 'aur00_1.png'}: empty file (0 bytes)" in printed
    assert f"{manifest.parent / 'reverse' / 'den01_0.png'}: not an image" in printed
    rows = pd.read_csv(out.parent / "excluded.csv")
    assert list(rows["sample_id"]) == ["aur00_1", "den01_0"]
