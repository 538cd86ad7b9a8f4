"""Sweeps on generated embeddings: grid naming, batched and one-by-one fits, results + summary, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import kenner.runs.sweep as sweep_module
from kenner.data.background import draw_background
from kenner.errors import KennerError
from kenner.evaluate.metrics import classification_metrics
from kenner.heads import EmbeddingClassifier, head_params
from kenner.methods.base import Samples, TaskData
from kenner.runs.sweep import Grid, expand_grid, sweep_tasks
from kenner.runs.tracking import Tracker


def _task(seed=0, n=150, dim=10, n_classes=4, background_class=None) -> TaskData:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = (rng.normal(0, 2, (n_classes, dim))[y] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    split = np.array(["train"] * 90 + ["val"] * 30 + ["test"] * 30)
    ids = [f"s{i}" for i in range(n)]
    samples = Samples(ids, [{"image": Path(f"{i}.png")} for i in ids], embedder=None, views="image")
    return TaskData(
        samples.with_embeddings({"image": X}),
        y,
        split,
        [f"c{i}" for i in range(n_classes)],
        ids,
        background_class=background_class,
    )


FIXED = {"epochs": 4, "batch_size": 32, "device": "cpu", "patience": 2}


def _grid(**values) -> Grid:
    methods = values.pop("methods", ("linear",))
    profiles = values.pop("profiles", ("base",))
    return Grid(methods=methods, profiles=profiles, values={k: tuple(v) for k, v in values.items()})


def run_sweep(tasks, grid, out_dir, **kwargs):
    return sweep_tasks(tasks, grid, FIXED, out_dir, dataset="coins", **kwargs)


def test_run_names_follow_the_users_pattern_and_invalid_combinations_are_skipped():
    grid = _grid(
        methods=("mlp",),
        profiles=("full", "arcface"),
        hidden_sizes=["1024,512"],
        mixup=["0.1"],
        label_smoothing=["0.1"],
    )
    runs, skipped = expand_grid(dataclasses.replace(grid, encoders=("dinov2",)), FIXED, dataset="coins", bg=5)
    assert [r.name for r in runs] == ["coins_dinov2_mlp1024_512_mix0p1_ls0p1_full_bg5"]
    cfg = runs[0].config
    assert cfg.head.head_type == "mlp" and cfg.head.hidden_sizes == (1024, 512)
    assert cfg.loss.class_weight == "effective" and cfg.loss.mixup == 0.1
    assert len(skipped) == 1 and "arcface" in skipped[0][0] and "mixup" in skipped[0][1]
    grid = dataclasses.replace(_grid(lr=["0.001", "0.01"], seed=["0", "1"]), encoders=("e",))
    names = [r.name for r in expand_grid(grid, FIXED, dataset="d")[0]]
    assert "d_e_lin_mix0_ls0_lr0p001_base_s1" in names and len(names) == 4
    assert {r.config_name for r in expand_grid(grid, FIXED, dataset="d")[0]} == {
        "d_e_lin_mix0_ls0_lr0p001_base",
        "d_e_lin_mix0_ls0_lr0p01_base",
    }
    lin = dataclasses.replace(_grid(methods=("linear", "mlp"), hidden_sizes=["8", "16"]), encoders=("e",))
    assert sorted(r.name for r in expand_grid(lin, FIXED, dataset="d")[0]) == [
        "d_e_lin_mix0_ls0_base",
        "d_e_mlp16_mix0_ls0_base",
        "d_e_mlp8_mix0_ls0_base",
    ]  # one linear run, not two


def test_draw_background_per_foreground_class_and_split():
    y = np.repeat([0, 1, 2], 4)
    split = np.array(["train"] * 8 + ["test"] * 4)
    drawn = draw_background(split, y, 3, n_pool=10, n_per_class=1, seed=0)
    assert len(drawn["train"]) == 2 and len(drawn["test"]) == 1  # classes 0,1 in train; class 2 in test
    assert not set(drawn["train"]) & set(drawn["test"])  # disjoint shares of the pool
    assert len(set(drawn["train"])) == 2  # without replacement while the share lasts
    small = draw_background(split, y, 3, n_pool=2, n_per_class=3, seed=0)
    assert len(small["train"]) == 6 and len(set(small["train"])) == 1  # share of 1 image: with replacement
    with pytest.raises(KennerError, match="too few"):
        draw_background(split, y, 3, n_pool=1, n_per_class=1, seed=0)


def test_sweep_end_to_end_writes_results_and_summary(tmp_path):
    torch.set_num_threads(1)
    grid = _grid(
        methods=("linear", "mlp"),
        hidden_sizes=["8"],
        profiles=("base", "full"),
        label_smoothing=["0", "0.1"],
        lr=["0.01", "0.03"],
        seed=["0", "1"],
    )
    data = {"enc_a": _task(0), "enc_b": _task(1)}
    results = run_sweep(data, grid, tmp_path, reference="base")
    assert len(results) == 2 * 2 * 2 * 2 * 2 * 2 and results["name"].is_unique
    assert set(results.loc[results["profile"] == "base", "batched_heads"]) == {4}  # ls x lr together
    assert set(results.loc[results["profile"] == "full", "batched_heads"]) == {1}  # hard mining: alone
    for column in (
        "macro_f1_fg",
        "weighted_f1_fg",
        "macro_precision_fg",
        "macro_recall_fg",
        "accuracy",
        "ece",
        "fit_seconds",
        "calibration_seconds",
        "evaluation_seconds",
    ):
        assert results[column].notna().all(), column
    np.testing.assert_allclose(results["macro_f1_fg"], results["macro_f1"])  # no background class
    assert (results.loc[results["profile"] == "full", "calibration_seconds"] > 0).all()
    assert pd.read_csv(tmp_path / "results.csv")["name"].tolist() == results["name"].tolist()

    # a batched run scores exactly what a separate EmbeddingClassifier with its config scores
    row = results[(results["profile"] == "base") & (results["head"] == "mlp8")].iloc[3]
    run = next(
        r
        for r in expand_grid(dataclasses.replace(grid, encoders=(row["encoder"],)), FIXED, dataset="coins")[0]
        if r.name == row["name"]
    )
    task = data[row["encoder"]]
    X, part = task.samples.features(), {s: task.split == s for s in ("train", "val", "test")}
    head = EmbeddingClassifier(**head_params(run.config)).fit(
        X[part["train"]], task.y[part["train"]], X_val=X[part["val"]], y_val=task.y[part["val"]], classes=range(4)
    )
    proba = head.predict_proba(X[part["test"]])
    want = classification_metrics(task.y[part["test"]], proba.argmax(1), proba, task.class_names)
    assert row["macro_f1_fg"] == pytest.approx(want["macro_f1"], abs=1e-9)
    assert row["ece"] == pytest.approx(want["ece"], abs=1e-4)

    summary = (tmp_path / "summary.md").read_text()
    for heading in (
        "Mean per profile",
        "Mean per encoder",
        "Mean per head",
        "Mean per label_smoothing",
        "Mean per lr",
        "Best configuration per encoder × profile",
        "Delta against the reference",
    ):
        assert heading in summary
    delta_line = next(line for line in summary.splitlines() if line.startswith("| full |"))
    assert delta_line.split("|")[2].strip() == "32"  # every full run has its base twin
    results_md = (tmp_path / "results.md").read_text()
    assert "Mean ± std over seeds" in results_md and "coins_enc_b_mlp8_mix0_ls0p1_lr0p03_full" in results_md


def test_background_class_in_the_data_gives_foreground_metrics(tmp_path):
    results = run_sweep({"e": _task(4, background_class="c3")}, _grid(), tmp_path)
    (row,) = results.itertuples()
    assert row.macro_f1_fg != row.macro_f1


def test_interrupted_sweep_resumes_without_refitting(tmp_path, monkeypatch):
    grid = _grid(profiles=("base", "calib"), mixup=["0", "0.2"], lr=["0.01", "0.03"])
    data = {"e": _task(3)}
    real_metrics, calls = sweep_module._metrics, []

    def failing_metrics(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real_metrics(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "_metrics", failing_metrics)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(data, grid, tmp_path)
    first = pd.read_csv(tmp_path / "results.csv")
    assert len(first) == 3

    monkeypatch.setattr(sweep_module, "_metrics", real_metrics)
    fitted = []
    real_fit_group = sweep_module._fit_group

    def counting_fit_group(runs, *args):
        fitted.extend(run.name for run in runs)
        return real_fit_group(runs, *args)

    monkeypatch.setattr(sweep_module, "_fit_group", counting_fit_group)
    results = run_sweep(data, grid, tmp_path)
    assert len(results) == 8 and results["name"].is_unique
    assert not set(fitted) & set(first["name"]) and len(fitted) == 5
    pd.testing.assert_frame_equal(results.iloc[:3].reset_index(drop=True), first)  # kept as they were

    fitted.clear()
    assert len(run_sweep(data, grid, tmp_path)) == 8 and fitted == []  # nothing left to do
    with pytest.raises(KennerError, match="other settings"):
        sweep_tasks(data, grid, {**FIXED, "epochs": 5}, tmp_path, dataset="coins")


def test_sweep_command_on_images(tmp_path, grouped_folder_dataset, make_image):
    import argparse

    from kenner.cli.sweep import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for i in range(6):
        make_image(tmp_path / "bg" / f"wall{i}.png", (40, 32), color=(128, 128, 128), noise=30, seed=i)
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--data",
        str(grouped_folder_dataset),
        "--encoders",
        "default",
        "--methods",
        "linear,mlp",
        "--profiles",
        "base,calib",
        "--lr",
        "0.01,0.03",
        "--hidden-sizes",
        "16",
        "--epochs",
        "3",
        "--background-dir",
        str(tmp_path / "bg"),
        "--bg",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--out-dir",
        str(out),
    ]
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "coin-sweep"]
    args = parser.parse_args(argv + tracking)
    assert args.func(args) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 2 * 2
    assert "folder_default_mlp16_mix0_ls0_lr0p03_calib_bg1" in set(results["name"])
    assert (results["macro_f1_fg"] != results["macro_f1"]).any()  # the background class is not foreground
    assert (out / "splits" / "train_ids.json").exists() and (out / "summary.md").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("coin-sweep")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert sorted(run.info.run_name for run in runs) == sorted(results["name"])  # one run per configuration
    tracked = {run.info.run_name: run.data.metrics for run in runs}
    for row in results.itertuples():
        assert tracked[row.name]["macro_f1_fg"] == pytest.approx(row.macro_f1_fg)
        assert tracked[row.name]["ece_uncalibrated"] == pytest.approx(row.ece_uncalibrated)

    for extra, message in (
        (["--bg", "0"], "--background-dir is used with --bg"),
        (["--bg", "-1"], "--bg must be >= 0"),
    ):
        args = parser.parse_args([*argv, *extra, "--no-track"])
        with pytest.raises(KennerError, match=message):
            args.func(args)
    args = parser.parse_args([*argv, "--folds", "3", "--no-track"])
    with pytest.raises(KennerError, match="--folds is for kenner train"):
        args.func(args)
    for profile in ("full", "hardmine", "arcface", "supcon"):  # profiles that cannot be batched run too
        args = parser.parse_args(
            [
                *argv[:5],
                "--methods",
                "mlp",
                "--hidden-sizes",
                "8",
                "--profiles",
                profile,
                "--epochs",
                "3",
                "--cache-dir",
                str(tmp_path / "cache"),
                "--device",
                "cpu",
                "--out-dir",
                str(tmp_path / profile),
                "--no-track",
            ]
        )
        assert args.func(args) == 0
        assert pd.read_csv(tmp_path / profile / "results.csv")["batched_heads"].tolist() == [1]
    args = parser.parse_args(
        [
            *argv[:5],
            "--mlp",
            "lin",
            "8",
            "--out-dir",
            str(tmp_path / "old"),
            "--no-track",
            "--epochs",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert args.func(args) == 0  # kenner 0.1's --mlp still works (with a warning)
    assert sorted(pd.read_csv(tmp_path / "old" / "results.csv")["head"]) == ["lin", "mlp8"]
    no_dir = [a for a in argv if a != str(tmp_path / "bg") and a != "--background-dir"]
    args = parser.parse_args([*no_dir, "--no-track"])
    with pytest.raises(KennerError, match="--background-dir DIR"):
        args.func(args)
    with pytest.raises(KennerError, match="unknown profile 'nope'"):
        args = parser.parse_args([*argv[:5], "--profiles", "base,nope", "--out-dir", str(out)])
        args.func(args)


def test_calibrated_runs_report_ece_before_and_after_temperature_scaling(tmp_path):
    grid = _grid(
        methods=("mlp",),
        hidden_sizes=["8"],
        profiles=("baseline_minimal", "calib"),
        label_smoothing=["0", "0.1"],
        standardize=["none"],
    )
    results = run_sweep({"e": _task(5)}, grid, tmp_path).set_index("name")
    assert set(results["batched_heads"]) == {4}  # calibration is per head: both profiles train together
    for ls in ("0", "0p1"):
        base = results.loc[f"coins_e_mlp8_mix0_ls{ls}_baseline_minimal"]
        calib = results.loc[f"coins_e_mlp8_mix0_ls{ls}_calib"]
        assert base["temperature"] == 1.0 and base["ece_uncalibrated"] == base["ece"]
        assert base["calibration_seconds"] == 0.0 and calib["calibration_seconds"] > 0
        assert calib["temperature"] != 1.0
        assert calib["ece_uncalibrated"] == pytest.approx(base["ece"], abs=1e-12)  # the same head before T
        assert calib["ece"] != pytest.approx(calib["ece_uncalibrated"])
        assert calib["macro_f1_fg"] == base["macro_f1_fg"]  # temperature never changes the argmax
    assert "ece_uncalibrated" in (tmp_path / "results.md").read_text()


def test_calibration_without_validation_rows_is_a_clear_error(tmp_path):
    task = _task(6)
    task.split = np.where(task.split == "val", "train", task.split)
    with pytest.raises(KennerError, match="validation rows"):
        run_sweep({"e": task}, _grid(profiles=("calib",)), tmp_path)


class RecordingTracker(Tracker):
    """Keeps what a sweep tracks, run by run."""

    def __init__(self) -> None:
        self.runs: list[dict] = []

    def start_run(self, name, params, tags=None):
        self.runs.append({"name": name, "params": params, "tags": dict(tags or {}), "metrics": {}, "status": None})
        return self

    def log_metrics(self, metrics, step=None):
        self.runs[-1]["metrics"].update(metrics)

    def log_artifact(self, path):
        raise AssertionError("a sweep run has no artifacts")

    def log_artifacts(self, directory):
        raise AssertionError("a sweep run has no artifacts")

    def end_run(self, status="FINISHED"):
        self.runs[-1]["status"] = status


def test_every_configuration_is_one_tracked_run_and_resume_tracks_only_new_ones(tmp_path):
    tracker = RecordingTracker()
    grid = _grid(profiles=("base", "calib"), lr=["0.01", "0.03"])
    results = run_sweep({"e": _task(7)}, grid, tmp_path, tracker=tracker)
    assert [run["name"] for run in tracker.runs] == results["name"].tolist()
    run = tracker.runs[-1]
    row = results.iloc[-1]
    assert run["status"] == "FINISHED" and run["tags"]["kenner.sweep"] == tmp_path.name
    assert run["params"]["profile"] == row["profile"] and run["params"]["head"] == json.loads(row["config"])
    for key in (
        "macro_f1_fg",
        "weighted_f1_fg",
        "macro_precision_fg",
        "macro_recall_fg",
        "accuracy",
        "ece",
        "ece_uncalibrated",
        "fit_seconds",
        "calibration_seconds",
        "evaluation_seconds",
    ):
        assert run["metrics"][key] == pytest.approx(row[key]), key
    more = _grid(profiles=("base", "calib"), lr=["0.01", "0.03", "0.1"])
    run_sweep({"e": _task(7)}, more, tmp_path, tracker=tracker)
    assert len(tracker.runs) == 6  # only the two new configurations
