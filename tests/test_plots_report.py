"""Plots are real PNGs sized to the class count; report.md carries every section it is given."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from kenner.evaluate.metrics import classification_metrics, per_class_table
from kenner.evaluate.plots import plot_confusion_matrix, plot_curve, plot_reliability_diagram
from kenner.evaluate.report import metrics_markdown_table, write_report


def predictions(n_classes: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, n_classes, n))
    return y_true, y_pred


def test_confusion_matrix_scales_with_classes(tmp_path) -> None:
    sizes = {}
    for n_classes in (4, 100):
        y_true, y_pred = predictions(n_classes, 300)
        names = [f"class {i} with a rather long descriptive name" for i in range(n_classes)]
        path = plot_confusion_matrix(y_true, y_pred, names, tmp_path / f"cm{n_classes}.png")
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            sizes[n_classes] = image.size
    assert sizes[100][0] > 2 * sizes[4][0] and sizes[100][1] > 2 * sizes[4][1]
    assert min(sizes[100]) / 100 >= 20  # at least 20 pixels per class row and column: labels stay legible
    assert not list(tmp_path.glob(".*tmp*"))


def test_confusion_matrix_counts_mode(tmp_path) -> None:
    path = plot_confusion_matrix([0, 1, 1], [0, 1, 0], ["a", "b"], tmp_path / "sub" / "cm.png", normalize=False)
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_reliability_and_curve(tmp_path) -> None:
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(4), 200)
    y_true = rng.integers(0, 4, 200)
    for path in (
        plot_reliability_diagram(proba, y_true, tmp_path / "reliability.png"),
        plot_curve(
            [0.2, 0.5, 1.0],
            [0.99, 0.95, 0.8],
            tmp_path / "curve.png",
            "coverage",
            "accuracy",
            "Accuracy vs coverage",
            marker_point=(0.5, 0.95),
        ),
    ):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_metrics_markdown_table_orders_splits_and_columns() -> None:
    table = metrics_markdown_table(
        {
            "test": {"n": 10, "accuracy": 0.5, "macro_f1": 0.25},
            "train": {"n": 80, "accuracy": 0.9, "macro_f1": 0.875, "ece": 0.05},
        }
    )
    assert table.splitlines() == [
        "| split | n | accuracy | macro_f1 | ece |",
        "|---|---|---|---|---|",
        "| train | 80 | 0.9000 | 0.8750 | 0.0500 |",
        "| test | 10 | 0.5000 | 0.2500 | – |",
    ]


def test_write_report_has_every_section(tmp_path) -> None:
    names = ["a|b", "c", "d", "e"]
    y_true, y_pred = predictions(4, 200, seed=3)
    proba = np.eye(4)[y_pred] * 0.7 + 0.075
    metrics = {split: classification_metrics(y_true, y_pred, proba, names) for split in ("train", "test")}
    plot_confusion_matrix(y_true, y_pred, names, tmp_path / "confusion_matrix.png")
    table = per_class_table(y_true, y_pred, names)
    table.to_csv(tmp_path / "per_class.csv", index=False)
    context = {
        "title": "Coins, linear head",
        "dataset": {"source": "/data/coins.tsv", "samples": 200, "classes": 4, "views": ["obv", "rev"], "excluded": 3},
        "splits": {"train": {"groups": 50, "samples": 140}, "test": {"groups": 12, "samples": 30}},
        "warnings": ["class 'e' has 2 groups: no test sample"],
        "encoder": {"spec": "default", "dim": 1280},
        "head": {"type": "linear", "lr": 3e-5},
        "metrics": metrics,
        "per_class": table,
        "sections": [("Calibration", "Temperature 1.3 lowers ECE.\n")],
    }
    path = write_report(tmp_path, context)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert text.startswith("# Coins, linear head\n")
    for heading in (
        "Dataset",
        "Splits",
        "Warnings",
        "Encoder",
        "Method",
        "Metrics",
        "Files",
        "Worst 10 classes by F1 (test)",
        "Calibration",
    ):
        assert f"\n## {heading}\n" in text
    assert "| views | obv, rev |" in text and "| lr | 3e-05 |" in text
    assert "[confusion_matrix.png](confusion_matrix.png)" in text and "[per_class.csv](per_class.csv)" in text
    assert "predictions.parquet" not in text
    assert f"| test | 200 | {metrics['test']['accuracy']:.4f} |" in text
    assert "a\\|b" in text
    worst_rows = text.split("## Worst 10 classes by F1 (test)")[1].split("## ")[0].strip().splitlines()[2:]
    worst_f1 = sorted(table["f1"])
    assert [float(row.split("|")[-2]) for row in worst_rows] == [round(f, 4) for f in worst_f1]
    assert text.rstrip().endswith("Temperature 1.3 lowers ECE.")


def test_worst_classes_skip_absent_classes(tmp_path) -> None:
    table = pd.DataFrame(
        {
            "class": ["x", "y", "z"],
            "support": [0, 5, 5],
            "precision": [0, 1, 0.5],
            "recall": [0, 1, 0.5],
            "f1": [0.0, 1.0, 0.5],
        }
    )
    text = write_report(tmp_path, {"per_class": table}).read_text()
    assert text.startswith(f"# kenner run {tmp_path.name}\n")
    assert "| z | 5 |" in text and "| x |" not in text
