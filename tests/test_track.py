"""Experiment tracking: MLflow in a temporary SQLite store, read back with MlflowClient; W&B and none."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kenner.config.sections import TrackingConfig
from kenner.errors import KennerError
from kenner.runs.tracking import (
    MlflowTracker,
    NullTracker,
    create_tracker,
    flatten_params,
    tracker_for,
)


@dataclass
class _Head:
    kind: str = "linear"
    lr: float = 0.01


def test_flatten_params() -> None:
    params = {"head": _Head(), "data": {"root": Path("/d"), "ratios": [0.7, 0.3], "empty": {}}, "seed": 0}
    assert flatten_params(params) == {
        "head.kind": "linear",
        "head.lr": 0.01,
        "data.root": "/d",
        "data.ratios": [0.7, 0.3],
        "data.empty": {},
        "seed": 0,
    }


def test_mlflow_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")
    run_folder = tmp_path / "run"
    (run_folder / "model").mkdir(parents=True)
    (run_folder / "model" / "head.json").write_text("{}")
    params = {"head": {"type": "mlp", "hidden": 64}, "note": "x" * 7000, "bad key!": 1}

    tracker = create_tracker("mlflow", experiment="coins")
    assert tracker.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    with tracker.start_run("first", params, tags={"dataset": "coins"}):
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            tracker.log_metrics({"loss": loss, "val/f1": 0.1 * step}, step=step)
        tracker.log_artifact(artifact)
        tracker.log_artifacts(run_folder)
        run_id = tracker.run_id
    assert tracker.run_id is None

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "coins"
    assert run.data.params["head.type"] == "mlp" and run.data.params["head.hidden"] == "64"
    assert run.data.params["bad key_"] == "1"
    assert len(run.data.params["note"]) == 6000
    assert run.data.tags["dataset"] == "coins"
    history = client.get_metric_history(run_id, "loss")
    assert [(metric.step, metric.value) for metric in history] == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert {item.path for item in client.list_artifacts(run_id)} == {"metrics.json", "model"}
    assert [item.path for item in client.list_artifacts(run_id, "model")] == ["model/head.json"]
    assert (tmp_path / "mlruns").is_dir()

    with pytest.raises(ValueError), create_tracker("mlflow", experiment="coins").start_run("second", {}):
        raise ValueError("training crashed")
    runs = client.search_runs([run.info.experiment_id], filter_string="attributes.run_name = 'second'")
    assert [item.info.status for item in runs] == ["FAILED"]


def test_tracking_uri_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert MlflowTracker().tracking_uri == f"sqlite:///{tmp_path}/env.db"
    assert MlflowTracker(tracking_uri="http://127.0.0.1:1").tracking_uri == "http://127.0.0.1:1"


def test_null_tracker_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with create_tracker("none").start_run("quiet", {"a": 1}) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_artifacts(tmp_path)
    assert isinstance(tracker, NullTracker)
    assert list(tmp_path.iterdir()) == []


def test_wandb_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it now raises ImportError
    with pytest.raises(KennerError, match="pip install wandb"):
        create_tracker("wandb", experiment="kenner")


def test_unknown_tracker_and_status() -> None:
    with pytest.raises(KennerError, match="unknown tracker"):
        create_tracker("tensorboard")
    with pytest.raises(ValueError, match="status"):
        NullTracker().end_run("DONE")


def test_tracker_from_the_tracking_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert isinstance(tracker_for(TrackingConfig(track="none")), NullTracker)
    tracker = tracker_for(TrackingConfig(experiment="saguis"), run_dir=tmp_path)
    assert isinstance(tracker, MlflowTracker) and tracker.experiment == "saguis"
    assert tracker.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    with pytest.raises(KennerError, match="tracking-uri"):
        tracker_for(TrackingConfig(track="wandb", tracking_uri="sqlite:///x.db"))


def test_wandb_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")
    with create_tracker("wandb", experiment="kenner-test", run_dir=tmp_path / "store").start_run(
        "offline", {"head": {"lr": 0.1}}, tags={"dataset": "coins"}
    ) as tracker:
        for step, loss in enumerate([1.0, 0.5]):
            tracker.log_metrics({"loss": loss}, step=step)
        tracker.log_artifact(artifact)
        assert dict(tracker.run.config) == {"head.lr": 0.1}
    assert tracker.run is None
    assert len(list((tmp_path / "store" / "wandb").glob("offline-run-*"))) == 1
