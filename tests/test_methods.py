"""Every registered method through the one run driver, from the CLI: k folds, background images, the reject
option, ``kenner evaluate`` and ``kenner predict`` — the same way for all of them."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kenner.cli import main
from kenner.methods import METHODS
from synthetic import write_two_view_dataset
from tiny_clip import save_open_clip

# Flags that keep each method's run small on tiny data; everything else is the method's defaults.
FAST = {
    "linear": ["--epochs", "30"],
    "mlp": ["--epochs", "30", "--hidden-sizes", "64"],
    "arcface": ["--epochs", "30", "--hidden-sizes", "64", "--arcface-scale", "16", "--arcface-margin", "0.2"],
    "knn": [],
    "blend": ["--epochs", "30"],
    "metric": ["--epochs", "8", "--pk-p", "4", "--pk-k", "2", "--embedding-dim", "32"],
    "side": ["--epochs", "30"],
    "finetune": ["--epochs", "4", "--freeze-epochs", "3", "--lr", "0.01", "--img-size", "64", "--batch-size", "8"],
    "zeroshot": ["--encoder", "{tiny_clip}"],  # a tiny random open_clip model: its answers are chance
}


@pytest.fixture(scope="module")
def coins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(two-view manifest, folder of background images, shared embedding cache)."""
    root = tmp_path_factory.mktemp("methods")
    manifest = write_two_view_dataset(root / "data")
    background = root / "background"
    background.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(background / f"noise{i}.png")
    return manifest, background, root / "cache"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save_open_clip(tmp_path_factory.mktemp("tiny_clip") / "model")


def test_every_method_is_registered_with_fast_flags() -> None:
    assert set(FAST) == set(METHODS.list())


@pytest.mark.parametrize("method", METHODS.list())
def test_every_method_runs_folds_background_reject_evaluate_and_predict(
    method: str, coins: tuple[Path, Path, Path], tiny_clip: str, tmp_path: Path
) -> None:
    manifest, background, cache = coins
    fast = [flag.replace("{tiny_clip}", tiny_clip) for flag in FAST[method]]
    run = tmp_path / "run"
    common = ["--cache-dir", str(cache), "--device", "cpu"]
    assert (
        main(
            [
                "train",
                "--method",
                method,
                "--data",
                str(manifest),
                "--out-dir",
                str(run),
                "--folds",
                "3",
                "--background-dir",
                str(background),
                "--bg",
                "2",
                "--target-precision",
                "0.9",
                "--no-track",
                "--num-workers",
                "0",
                *common,
                *fast,
            ]
        )
        == 0
    )

    summary = json.loads((run / "folds_metrics.json").read_text())
    assert len(summary["test"]["macro_f1"]["values"]) == 3 and (run / "folds_summary.md").is_file()
    chance = 1 / 4  # three coin types and the background class (two classes for the side classifier)
    if method != "zeroshot":  # random text and image towers: no better than chance
        assert summary["test"]["accuracy"]["mean"] > (0.5 if method == "side" else chance) + 0.2, summary["test"]
    for index in range(3):
        fold = run / f"fold_{index}"
        for name in (
            "run_config.json",
            "class_to_idx.json",
            "metrics.json",
            "per_class.csv",
            "predictions.parquet",
            "confusion_matrix.png",
            "reject.json",
            "coverage_accuracy.png",
            "history.json",
            "report.md",
            "splits/test_ids.json",
            "model/model_info.json",
        ):
            assert (fold / name).is_file(), f"{method} fold_{index}: {name}"
        assert json.loads((fold / "run_config.json").read_text())["method"] == method
        reject = json.loads((fold / "reject.json").read_text())
        assert reject["target_precision"] == 0.9 and "test" in reject["splits"]
        classes = json.loads((fold / "class_to_idx.json").read_text())
        assert ("background" in classes) != (method == "side")

    fold = run / "fold_0"
    trained = pd.read_parquet(fold / "predictions.parquet").set_index("sample_id")
    assert main(["evaluate", str(fold), *common]) == 0
    evaluated = pd.read_parquet(fold / "eval" / "predictions.parquet").set_index("sample_id")
    shared = evaluated.index.intersection(trained.index)
    assert len(shared) >= 36, "every real sample is scored again"
    assert (evaluated.loc[shared, "split"] == trained.loc[shared, "split"]).all()
    assert (evaluated.loc[shared, "predicted"].fillna("") == trained.loc[shared, "predicted"].fillna("")).all()
    np.testing.assert_allclose(
        np.stack(evaluated.loc[shared, "topk_scores"]), np.stack(trained.loc[shared, "topk_scores"]), atol=1e-5
    )

    assert main(["export", str(fold), "--format", "arrays", "--cache-dir", str(cache)]) == 0
    arrays = fold / "export_arrays"
    test_rows = trained[trained["split"] == "test"]
    names = json.loads((arrays / "names.json").read_text())
    top = [labels[0] for labels in test_rows["topk_labels"]]
    assert [names[i] for i in np.load(arrays / "predictions.npy")] == top
    assert [names[i] for i in np.load(arrays / "true_labels.npy")] == test_rows["true"].tolist()
    summary = json.loads((arrays / "summary.json").read_text())
    assert summary["n"] == len(test_rows) and len(summary["best_classes"]) >= 1 and "prediction_cv" in summary
    assert (arrays / "embeddings.npy").is_file() == METHODS.get(method).uses_embeddings
    assert "Best and worst classes by F1" in (fold / "report.md").read_text()

    out = tmp_path / "predictions.csv"
    assert main(["predict", str(fold), str(manifest), "-k", "2", "--output", str(out), *common]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 36
    if method == "side":  # the manifest's photos are in obverse|reverse order
        assert np.mean([row["predicted"] == "obverse|reverse" for row in rows]) > 0.7
    else:
        test_ids = set(trained.index[trained["split"] == "test"])
        by_id = {row["id"]: row for row in rows}
        for sample_id in test_ids & set(by_id):  # new images are predicted as the run predicted them
            expected = trained.loc[sample_id, "predicted"]
            assert by_id[sample_id]["predicted"] == (expected if isinstance(expected, str) else "unclassifiable")

    # `kenner serve` answers as `kenner predict` did, for every method (4 items in one request)
    from fastapi.testclient import TestClient

    from kenner.serve.app import create_app
    from kenner.serve.engine import load_engine

    table = pd.read_csv(manifest, sep="\t").head(4)
    app = create_app(lambda: load_engine(fold, cache_dir=str(cache), device="cpu"))
    with TestClient(app) as client:
        while client.get("/ready").status_code == 503 and not app.state.kenner.loaded.is_set():
            time.sleep(0.05)
        views = client.get("/v1/info").json()["input_views"]
        files = [
            (view, (f"{row['id']}.png", (manifest.parent / row[f"{view}_path"]).read_bytes(), "image/png"))
            for _, row in table.iterrows()
            for view in views
        ]
        response = client.post("/v1/predict", params={"top_k": 2}, files=files)
    assert response.status_code == 200, response.text
    by_id = {row["id"]: row for row in rows}
    for sample_id, result in zip(table["id"], response.json()["results"], strict=True):
        expected = by_id[sample_id]
        assert result["predicted"] == expected["predicted"], (method, sample_id)
        assert result["predictions"][0]["label"] == expected["label_1"]
        assert abs(result["predictions"][0]["probability"] - float(expected["probability_1"])) < 1e-4
