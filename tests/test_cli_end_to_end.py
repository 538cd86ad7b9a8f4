"""End to end through the ``kenner`` CLI on a generated grouped two-view dataset."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kenner.cli import main
from synthetic import write_two_view_dataset


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    manifest = write_two_view_dataset(root / "data")
    run, cache = root / "run", root / "cache"
    code = main(
        [
            "train",
            "--data",
            str(manifest),
            "--out-dir",
            str(run),
            "--cache-dir",
            str(cache),
            "--views",
            "both_concat",
            "--head-type",
            "mlp",
            "--hidden-sizes",
            "32",
            "--epochs",
            "40",
            "--lr",
            "0.01",
            "--standardize",
            "standardize",
            "--embed-batch-size",
            "8",
            "--num-workers",
            "0",
            "--no-track",
        ]
    )
    assert code == 0
    return manifest, run, cache


def test_train_writes_the_run_folder(trained_run: tuple[Path, Path, Path]) -> None:
    _, run, _ = trained_run
    for name in (
        "run_config.json",
        "class_to_idx.json",
        "metrics.json",
        "per_class.csv",
        "confusion_matrix.png",
        "predictions.parquet",
        "report.md",
        "splits/train_ids.json",
        "splits/val_ids.json",
        "splits/test_ids.json",
        "model/model_info.json",
    ):
        assert (run / name).exists(), name
    assert json.loads((run / "class_to_idx.json").read_text()) == {"aureus": 0, "denarius": 1, "sestertius": 2}
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"train", "val", "test"}
    assert metrics["train"]["accuracy"] == 1.0  # colours separate the classes easily
    assert metrics["test"]["macro_f1"] > 0.6


def test_groups_never_cross_splits(trained_run: tuple[Path, Path, Path]) -> None:
    _, run, _ = trained_run
    predictions = pd.read_parquet(run / "predictions.parquet")
    predictions["group"] = predictions["sample_id"].str.rsplit("_", n=1).str[0]
    assert predictions.groupby("group")["split"].nunique().max() == 1
    splits = {
        name: set(json.loads((run / "splits" / f"{name}_ids.json").read_text())) for name in ("train", "val", "test")
    }
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])


def test_predict_on_a_manifest_matches_the_run(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    manifest, run, cache = trained_run
    out = tmp_path / "predictions.json"
    assert main(["predict", str(run), str(manifest), "-k", "2", "--output", str(out), "--cache-dir", str(cache)]) == 0
    results = json.loads(out.read_text())
    assert len(results) == 36 and len(results[0]["predictions"]) == 2
    stored = pd.read_parquet(run / "predictions.parquet").set_index("sample_id")
    for result in results:
        assert result["predictions"][0]["label"] == stored.loc[result["id"], "predicted"]


def test_predict_refuses_single_files_for_a_two_view_run(
    trained_run: tuple[Path, Path, Path], capsys: pytest.CaptureFixture
) -> None:
    manifest, run, cache = trained_run
    image = manifest.parent / "obverse" / "aur00_0.png"
    assert main(["predict", str(run), str(image), "--cache-dir", str(cache)]) == 2
    assert "obverse_path, reverse_path" in capsys.readouterr().err


def test_repeat_from_run_config_reuses_the_split(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run, cache = trained_run
    again = tmp_path / "again"
    assert (
        main(
            [
                "train",
                "--config",
                str(run / "run_config.json"),
                "--out-dir",
                str(again),
                "--splits",
                str(run / "splits"),
                "--cache-dir",
                str(cache),
                "--no-track",
            ]
        )
        == 0
    )
    for name in ("train_ids.json", "val_ids.json", "test_ids.json"):
        assert (again / "splits" / name).read_bytes() == (run / "splits" / name).read_bytes()
    assert json.loads((again / "run_config.json").read_text())["head"]["hidden_sizes"] == [32]


def test_evaluate_rescores_the_run(trained_run: tuple[Path, Path, Path]) -> None:
    _, run, cache = trained_run
    assert main(["evaluate", str(run), "--cache-dir", str(cache)]) == 0
    again = json.loads((run / "eval" / "metrics.json").read_text())
    original = json.loads((run / "metrics.json").read_text())
    assert again["test"]["accuracy"] == pytest.approx(original["test"]["accuracy"])


def test_split_command_is_reproducible(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    manifest, _, _ = trained_run
    for out in ("a", "b"):
        assert main(["split", "--data", str(manifest), "--out-dir", str(tmp_path / out), "--split-seed", "7"]) == 0
    for name in ("train_ids.json", "val_ids.json", "test_ids.json", "summary.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_manifest_row_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_two_view_dataset(tmp_path / "data", groups_per_class=2)
    lines = manifest.read_text().splitlines()
    lines[3] = lines[3].replace("obverse/", "missing/")
    manifest.write_text("\n".join(lines) + "\n")
    assert main(["train", "--data", str(manifest), "--out-dir", str(tmp_path / "run"), "--no-track"]) == 2
    err = capsys.readouterr().err
    assert "row 3" in err and "missing/" in err and "Traceback" not in err


def test_train_logs_to_mlflow_in_the_working_folder(
    trained_run: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    manifest, _, cache = trained_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        main(
            [
                "train",
                "--data",
                str(manifest),
                "--out-dir",
                "tracked",
                "--cache-dir",
                str(cache),
                "--epochs",
                "5",
                "--early-stopping-patience",
                "0",
                "--experiment",
                "coins",
            ]
        )
        == 0
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("coins").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["head.head_type"] == "linear"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 5
    assert "test/macro_f1" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "confusion_matrix.png"} <= artifacts


def test_embed_fills_the_cache_and_exports(
    trained_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, _, cache = trained_run
    out = tmp_path / "emb.npz"
    assert main(["embed", "--data", str(manifest), "--cache-dir", str(cache), "--output", str(out)]) == 0
    assert "36 samples x 2 view(s)" in capsys.readouterr().out
    exported = np.load(out)
    assert exported["view_obverse"].shape == (36, 1280) and exported["view_reverse"].shape == (36, 1280)
    assert not np.allclose(exported["view_obverse"], exported["view_reverse"])


def test_demo_runs_on_real_fashion_mnist(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kenner.data import fashion_mnist

    if not (fashion_mnist.DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it as root)")
    assert main(["demo", "--out-dir", str(tmp_path), "--per-class", "10", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "test: accuracy=" in out and (tmp_path / "fashion_mnist_run" / "report.md").exists()
    assert len(list((tmp_path / "fashion_mnist").glob("*/*.png"))) == 100


def test_reject_option_on_a_classifier_run(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    manifest, run, cache = trained_run
    out = tmp_path / "reject"
    # A target coverage of 0.5 forces the rule to refuse about half of val, whatever the accuracy.
    assert (
        main(
            [
                "train",
                "--config",
                str(run / "run_config.json"),
                "--out-dir",
                str(out),
                "--splits",
                str(run / "splits"),
                "--cache-dir",
                str(cache),
                "--target-coverage",
                "0.5",
                "--no-track",
            ]
        )
        == 0
    )
    reject = json.loads((out / "reject.json").read_text())
    assert reject["val_operating_point"]["coverage"] == pytest.approx(0.5, abs=0.2)
    assert set(reject["splits"]) == {"train", "val", "test"}  # measured on test too, not assumed
    assert (out / "coverage_accuracy.png").exists() and "Reject option" in (out / "report.md").read_text()
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert (~predictions["accepted"]).any() and predictions.loc[~predictions["accepted"], "predicted"].isna().all()
    results = json.loads(_predict_json(out, manifest, cache, tmp_path))
    refused = [r for r in results if r["predicted"] == "unclassifiable"]
    assert 0 < len(refused) < len(results)


def test_metric_mode_run_and_retrieval_predict(
    trained_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, run, cache = trained_run
    out = tmp_path / "metric"
    assert (
        main(
            [
                "train",
                "--mode",
                "metric",
                "--data",
                str(manifest),
                "--out-dir",
                str(out),
                "--splits",
                str(run / "splits"),
                "--cache-dir",
                str(cache),
                "--views",
                "both_concat",
                "--proj-type",
                "linear",
                "--embedding-dim",
                "16",
                "--p",
                "3",
                "--k",
                "4",
                "--epochs",
                "5",
                "--metric-scale",
                "16",
                "--metric-margin",
                "0.2",
                "--knn-k",
                "5",
                "--eval-method",
                "hdbscan",
                "--no-track",
            ]
        )
        == 0
    )
    for name in (
        "knn_metrics.json",
        "embeddings_val.npy",
        "labels_val.npy",
        "hdbscan_metrics.json",
        "model/gallery/gallery.faiss",
        "report.md",
    ):
        assert (out / name).exists(), name
    assert json.loads((out / "run_config.json").read_text())["metric"]["embedding_dim"] == 16
    results = json.loads(_predict_json(out, manifest, cache, tmp_path))
    stored = pd.read_parquet(out / "predictions.parquet").set_index("sample_id")
    test_ids = stored.index[stored["split"] == "test"]
    by_id = {r["id"]: r for r in results}
    for sample_id in test_ids:  # test rows are not in the gallery: the same vote as in the run
        assert by_id[sample_id]["predicted"] == stored.loc[sample_id, "predicted"]
    capsys.readouterr()
    assert main(["search", str(out), str(manifest), "-k", "3", "--cache-dir", str(cache), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["neighbours"]) == 3


def _predict_json(run: Path, manifest: Path, cache: Path, tmp_path: Path) -> str:
    out = tmp_path / f"{run.name}_predictions.json"
    assert main(["predict", str(run), str(manifest), "--output", str(out), "--cache-dir", str(cache)]) == 0
    return out.read_text()


def _break_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# (what is broken, edit(data_root, manifest), extra flags, words the message must contain)
BAD_INPUTS = [
    (
        "zero-byte image",
        lambda root, m: (root / "obverse" / "aur00_1.png").write_bytes(b""),
        [],
        ["row 2", "aur00_1.png", "empty file"],
    ),
    (
        "non-image file",
        lambda root, m: (root / "reverse" / "den01_0.png").write_text("not a picture"),
        [],
        ["row 7", "den01_0.png", "not an image"],
    ),
    (
        "truncated image",
        lambda root, m: _break_truncate(root / "obverse" / "ses00_0.png"),
        [],
        ["row 9", "ses00_0.png", "truncated"],
    ),
    (
        "duplicate id",
        lambda root, m: m.write_text(m.read_text().replace("aur01_0\t", "aur00_0\t", 1)),
        [],
        ["row 3", "duplicate id 'aur00_0'"],
    ),
    (
        "empty label",
        lambda root, m: m.write_text(m.read_text().replace("den00_1\tdenarius", "den00_1\t", 1)),
        [],
        ["row 6", "empty label"],
    ),
    (
        "missing column",
        lambda root, m: m.write_text(m.read_text().replace("label", "class", 1)),
        [],
        ["missing required column(s): label"],
    ),
    ("unknown view", lambda root, m: None, ["--views", "edge"], ["--views", "unknown view mode 'edge'"]),
]


@pytest.mark.parametrize(("what", "edit", "flags", "words"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture, what, edit, flags, words) -> None:
    manifest = write_two_view_dataset(tmp_path / "data", groups_per_class=2)
    edit(manifest.parent, manifest)
    code = main(
        [
            "train",
            "--data",
            str(manifest),
            "--out-dir",
            str(tmp_path / "run"),
            "--no-track",
            "--cache-dir",
            str(tmp_path / "cache"),
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, what
    assert err.startswith(f"kenner: error: {manifest}") and "Traceback" not in err
    for word in words:
        assert word in err, (what, word, err)
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_dir()]  # nothing was embedded (hashes may be)


def _copy_dataset(manifest: Path, target: Path) -> Path:
    """A copy of the dataset (same bytes, so the embedding cache still applies)."""
    shutil.copytree(manifest.parent, target)
    return target / manifest.name


def test_skip_and_min_size_write_excluded_csv(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    manifest, _, cache = trained_run
    copy = _copy_dataset(manifest, tmp_path / "data")
    (copy.parent / "obverse" / "aur00_0.png").write_bytes(b"")
    Image.new("RGB", (40, 20), (150, 150, 160)).save(copy.parent / "reverse" / "den01_1.png")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(copy),
                "--out-dir",
                str(run),
                "--cache-dir",
                str(cache),
                "--on-bad-image",
                "skip",
                "--min-size",
                "32",
                "--epochs",
                "3",
                "--no-track",
            ]
        )
        == 0
    )
    excluded = pd.read_csv(run / "excluded.csv", dtype={"row": "Int64"})
    assert list(excluded.columns) == ["sample_id", "row", "view", "path", "reason"]
    by_id = excluded.set_index("sample_id")
    assert set(by_id.index) == {"aur00_0", "den01_0", "den01_1"}  # den01_0 goes with its group
    assert by_id.loc["aur00_0", "row"] == 1 and "empty file" in by_id.loc["aur00_0", "reason"]
    assert all(
        "group 'den01'" in by_id.loc[i, "reason"] and "min_size 32" in by_id.loc[i, "reason"]
        for i in ("den01_0", "den01_1")
    )
    predictions = pd.read_parquet(run / "predictions.parquet")
    assert len(predictions) == 33 and not set(predictions["sample_id"]) & set(by_id.index)
    assert "| excluded | 3 |" in (run / "report.md").read_text()


def test_train_folds_writes_fold_runs_and_summary(
    trained_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, _, cache = trained_run
    out = tmp_path / "folds"
    common = ["--data", str(manifest), "--cache-dir", str(cache), "--folds", "3", "--epochs", "3", "--no-track"]
    assert main(["train", "--out-dir", str(out), *common]) == 0
    assert "mean over 3 folds" in capsys.readouterr().out
    summary = json.loads((out / "folds_metrics.json").read_text())
    assert len(summary["test"]["macro_f1"]["values"]) == 3
    assert "3-fold summary" in (out / "folds_summary.md").read_text()
    tests = [set(json.loads((out / "splits" / f"fold_{i}" / "test_ids.json").read_text())) for i in range(3)]
    assert not (tests[0] & tests[1] or tests[0] & tests[2] or tests[1] & tests[2])
    assert len(set().union(*tests)) == 18  # every group is tested exactly once
    for i in range(3):
        fold = out / f"fold_{i}"
        assert (fold / "metrics.json").exists() and (fold / "report.md").exists()
        assert (fold / "splits" / "test_ids.json").read_bytes() == (
            out / "splits" / f"fold_{i}" / "test_ids.json"
        ).read_bytes()
    assert main(["evaluate", str(out / "fold_0"), "--cache-dir", str(cache)]) == 0  # a fold is a whole run
    again = tmp_path / "again"
    assert main(["train", "--out-dir", str(again), "--splits", str(out / "splits"), *common]) == 0
    assert (again / "splits" / "fold_2" / "val_ids.json").read_bytes() == (
        out / "splits" / "fold_2" / "val_ids.json"
    ).read_bytes()


def test_single_view_run_predicts_files_folders_and_manifests(
    trained_run: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, run, cache = trained_run
    out = tmp_path / "obverse_run"
    assert (
        main(
            [
                "train",
                "--data",
                str(manifest),
                "--out-dir",
                str(out),
                "--cache-dir",
                str(cache),
                "--splits",
                str(run / "splits"),
                "--views",
                "obv",
                "--background-class",
                "sestertius",
                "--epochs",
                "20",
                "--lr",
                "0.01",
                "--no-track",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert {"macro_f1_fg", "weighted_f1_fg", "macro_precision_fg", "macro_recall_fg", "accuracy_fg"} <= set(
            metrics[split]
        )
    capsys.readouterr()

    images = manifest.parent / "obverse"
    files = [str(images / "aur00_0.png"), str(images / "ses03_1.png")]
    assert main(["predict", str(out), *files, "-k", "2", "--cache-dir", str(cache)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["id", "obverse_path", "predicted", "label_1", "probability_1", "label_2", "probability_2"]
    assert [r["id"] for r in rows] == files
    assert float(rows[0]["probability_1"]) >= float(rows[0]["probability_2"])

    folder_json = tmp_path / "folder.json"
    assert main(["predict", str(out), str(images), "--output", str(folder_json), "--cache-dir", str(cache)]) == 0
    from_folder = {Path(r["id"]).name: r for r in json.loads(folder_json.read_text())}
    assert len(from_folder) == 36 and len(from_folder["aur00_0.png"]["predictions"]) == 3

    query = tmp_path / "query.csv"
    query.write_text(f"id,obverse_path\nq1,{images / 'ses03_1.png'}\nq2,{images / 'aur00_0.png'}\n")
    assert main(["predict", str(out), str(query), "--format", "json", "--cache-dir", str(cache)]) == 0
    from_manifest = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in from_manifest] == ["q1", "q2"]
    assert from_manifest[1]["predicted"] == from_folder["aur00_0.png"]["predicted"] == rows[0]["predicted"]
    assert from_manifest[0]["predicted"] == rows[1]["predicted"]

    query.write_text(f"id,obverse_path\nq1,{images / 'gone.png'}\n")
    assert main(["predict", str(out), str(query), "--cache-dir", str(cache)]) == 2
    assert f"{query}, row 1: obverse image" in capsys.readouterr().err


def test_evaluate_on_another_labelled_dataset(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    manifest, run, cache = trained_run
    other = tmp_path / manifest.name
    lines = manifest.read_text().splitlines()
    kept = [line for line in lines[1:] if not line.startswith("aur")]
    other.write_text(
        "\n".join([lines[0], *kept])
        .replace("\tobverse/", f"\t{manifest.parent}/obverse/")
        .replace("\treverse/", f"\t{manifest.parent}/reverse/")
        + "\n"
    )
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--data",
                str(other),
                "--out-dir",
                str(out),
                "--background-class",
                "sestertius",
                "--cache-dir",
                str(cache),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"test"} and metrics["test"]["n"] == 24  # another dataset: every row is test
    assert "macro_f1_fg" in metrics["test"] and "accuracy_fg" in metrics["test"]
    assert (out / "report.md").exists() and (out / "confusion_matrix.png").exists()


def test_background_images_and_calibration_in_a_train_run(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    manifest, run, cache = trained_run
    background = tmp_path / "background"
    rng = np.random.default_rng(3)
    for i in range(30):
        path = background / ("street" if i % 2 else "sky") / f"bg{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "bg_run"
    assert (
        main(
            [
                "train",
                "--data",
                str(manifest),
                "--out-dir",
                str(out),
                "--splits",
                str(run / "splits"),
                "--cache-dir",
                str(cache),
                "--background-dir",
                str(background),
                "--bg",
                "2",
                "--profile",
                "calib",
                "--no-track",
            ]
        )
        == 0
    )
    assert json.loads((out / "class_to_idx.json").read_text())["background"] == 3
    predictions = pd.read_parquet(out / "predictions.parquet")
    added = predictions[predictions["true"] == "background"]
    per_split = added.groupby("split").size().to_dict()
    assert per_split == {"train": 6, "val": 6, "test": 6}  # 2 per foreground class (3 classes) in every split
    images = added["sample_id"].str.split("#").str[0]
    assert images.groupby(images).apply(lambda s: added.loc[s.index, "split"].nunique()).max() == 1  # no leak
    metrics = json.loads((out / "metrics.json").read_text())
    assert "macro_f1_fg" in metrics["test"]  # the background class is left out of the _fg metrics
    assert {"ece_uncalibrated", "temperature"} <= set(metrics["test"])
    assert "ECE before" in (out / "report.md").read_text()
    assert (
        main(["train", "--data", str(manifest), "--out-dir", str(tmp_path / "x"), "--bg", "2", "--no-track"]) == 2
    )  # --bg without --background-dir is a clear error


def test_reject_by_both_signals_from_the_cli(trained_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, run, cache = trained_run
    out = tmp_path / "both"
    assert (
        main(
            [
                "train",
                "--config",
                str(run / "run_config.json"),
                "--out-dir",
                str(out),
                "--splits",
                str(run / "splits"),
                "--cache-dir",
                str(cache),
                "--reject-by",
                "both",
                "--target-coverage",
                "0.5",
                "--no-track",
            ]
        )
        == 0
    )
    reject = json.loads((out / "reject.json").read_text())
    assert reject["by"] == "both" and None not in reject["rule"].values()
    assert reject["val_operating_point"]["coverage"] >= 0.5
