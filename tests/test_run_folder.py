"""One folder, one run: repeated runs reuse, other settings are refused (or replaced with --overwrite), a folder
being written is locked, and outputs that cannot be written fail before any work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from kenner.cli import main
from kenner.runs.claim import claim_folder
from kenner.train.checkpoint import resume_path
from synthetic import write_two_view_dataset

FAST = ["--epochs", "5", "--no-track", "--views", "obverse"]


@pytest.fixture(scope="module")
def coins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("folder")
    return write_two_view_dataset(root / "data"), str(root / "cache")


def train(coins: tuple[Path, str], out: Path, *flags: str) -> int:
    manifest, cache = coins
    return main(["train", "--data", str(manifest), "--out-dir", str(out), "--cache-dir", cache, *FAST, *flags])


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("kenner: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_the_same_run_again_reuses_its_folder_and_other_settings_are_refused(
    coins: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert train(coins, run) == 0
    split = (run / "splits" / "test_ids.json").read_text()
    assert train(coins, run, "--device", "cpu") == 0  # how it is computed is not what the run is
    assert (run / "splits" / "test_ids.json").read_text() == split
    capsys.readouterr()
    assert train(coins, run, "--split-seed", "7", "--split-ratios", ".5,.25,.25") == 2
    message = one_line_error(capsys)
    assert "holds a run with other settings (split_ratios, split_seed)" in message and "--overwrite" in message
    assert json.loads((run / "run_config.json").read_text())["split"]["split_seed"] == 42  # still describes the run
    assert train(coins, run, "--method", "knn") == 2
    assert "(method" in one_line_error(capsys)

    assert train(coins, run, "--method", "knn", "--overwrite") == 0
    assert json.loads((run / "run_config.json").read_text())["method"] == "knn"
    assert not (run / "model" / "head.json").exists() and (run / "model" / "retrieval.json").exists()


def test_a_run_refused_for_its_input_leaves_the_folder_free(
    coins: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    (tmp_path / "bad.csv").write_text("id,label,obverse_path\nx,cat,missing.png\n")
    manifest, cache = coins
    flags = ["--out-dir", str(run), "--cache-dir", cache, *FAST]
    assert main(["train", "--data", str(tmp_path / "bad.csv"), *flags]) == 2
    one_line_error(capsys)
    assert main(["train", "--data", str(manifest), *flags]) == 0  # nothing was done, so nothing to protect
    assert json.loads((run / "run_config.json").read_text())["data"]["data"] == str(manifest)


def test_a_folder_being_written_is_locked(
    coins: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    with claim_folder(run, {}, record="run_config.json"):  # another run holds the folder
        assert train(coins, run) == 2
    assert "is being written by another kenner run (pid" in one_line_error(capsys)
    assert train(coins, run) == 0  # free again
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("keep me")
    assert train(coins, tmp_path / "notes") == 2
    assert "not empty and holds no kenner run" in one_line_error(capsys)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "keep me"


def test_outputs_that_cannot_be_written_fail_before_any_work(
    coins: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, cache = coins
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["train", "--data", str(manifest), "--out-dir", "/proc/kenner-run", "--cache-dir", cache], "cannot write"),
        (["train", "--data", str(manifest), "--out-dir", str(a_file), "--cache-dir", cache], "is a file"),
        (["finetune", "--data", str(manifest), "--out-dir", str(a_file), "--cache-dir", cache], "is a file"),
        (["sweep", "--data", str(manifest), "--out-dir", str(a_file), "--cache-dir", cache], "is a file"),
        (
            ["train", "--data", str(manifest), "--out-dir", str(tmp_path / "r"), "--cache-dir", str(a_file)],
            "--cache-dir",
        ),
        (["embed", "--data", str(manifest), "--cache-dir", str(a_file)], "--cache-dir"),
        (["embed", "--data", str(manifest), "--cache-dir", cache, "--output", "/proc/emb.npz"], "--output"),
    ]
    for argv, words in cases:
        assert main([*argv, "--no-track"] if argv[0] in ("train", "finetune", "sweep") else argv) == 2, argv
        message = one_line_error(capsys)
        assert words in message, (argv, message)
    monkeypatch.setenv("KENNER_CACHE", "/proc/kenner-cache")
    assert main(["embed", "--data", str(manifest)]) == 2
    assert "/proc/kenner-cache" in one_line_error(capsys)


def test_predict_skips_bad_images_with_their_reason_and_checks_its_output_first(
    coins: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert train(coins, run) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    good = sorted((Path(coins[0]).parent / "obverse").glob("*.png"))[:3]
    for path in good:
        Image.open(path).save(photos / path.name)
    (photos / "broken.png").write_bytes(b"not a picture")
    (photos / "empty.png").write_bytes(b"")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(photos), "--output", str(out), "--cache-dir", coins[1]]) == 2
    assert "broken.png" in one_line_error(capsys) and not out.exists()  # fail mode: one line, nothing written
    assert (
        main(
            ["predict", str(run), str(photos), "--output", str(out), "--cache-dir", coins[1], "--on-bad-image", "skip"]
        )
        == 0
    )
    rows = {Path(row["id"]).name: row for row in csv.DictReader(out.open())}
    assert rows["broken.png"]["predicted"] == "" and "not an image" in rows["broken.png"]["error"]
    assert "empty file" in rows["empty.png"]["error"]
    assert all(rows[path.name]["predicted"] and not rows[path.name]["error"] for path in good)
    assert main(["predict", str(run), str(photos), "--output", "/proc/preds.csv", "--cache-dir", coins[1]]) == 2
    assert "--output /proc/preds.csv" in one_line_error(capsys)


def test_fine_tuning_removes_half_written_checkpoints_a_killed_run_left(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "latest_model.pt").write_bytes(b"kept")
    (checkpoints / ".best_model.pt.tmp-4242").write_bytes(b"x" * 1000)
    assert resume_path(checkpoints, resume=None, fresh=False) == checkpoints / "latest_model.pt"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["latest_model.pt"]
