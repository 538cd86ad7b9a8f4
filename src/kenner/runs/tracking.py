"""Experiment tracking: MLflow in a local SQLite file by default, Weights & Biases on request, or none.

Runs read the ``tracking`` section of their config (``--track mlflow|wandb|none``, ``--wandb`` and
``--no-track`` for short, ``--experiment``, ``--tracking-uri``) and build their tracker with
:func:`tracker_for`::

    with tracker_for(cfg.tracking).start_run("linear-dinov2", params=config) as tracker:
        tracker.log_metrics({"val_macro_f1": 0.8}, step=epoch)
        tracker.log_artifacts(run_dir)

By default MLflow writes ``./mlflow.db`` and ``./mlruns/`` in the working folder; browse them with
``mlflow ui --backend-store-uri sqlite:///mlflow.db``. MLflow and wandb are imported only when used.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from kenner.config.sections import TrackingConfig
from kenner.errors import KennerError

STATUSES = ("FINISHED", "FAILED", "KILLED")
TRACKERS = ("mlflow", "wandb", "none")
_KEY_UNSAFE = re.compile(r"[^\w\-. :/]")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (and dataclasses) become dotted keys; paths become strings; other leaves stay."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = str(value) if isinstance(value, os.PathLike) else value
    return flat


class Tracker(ABC):
    """One run at a time: ``start_run`` -> ``log_*`` -> ``end_run``; also a context manager.

    Leaving the ``with`` block ends the run as FINISHED, FAILED (an exception) or KILLED (Ctrl-C).
    """

    @abstractmethod
    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Tracker:
        """Open a run called ``name`` with its (possibly nested) parameters; returns ``self``."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record numeric ``metrics`` at ``step`` (per epoch, say); ``None`` means step 0 / next."""

    @abstractmethod
    def log_artifact(self, path: str | os.PathLike) -> None:
        """Attach one file to the run."""

    @abstractmethod
    def log_artifacts(self, directory: str | os.PathLike) -> None:
        """Attach the files of ``directory`` (recursively) to the run."""

    @abstractmethod
    def end_run(self, status: str = "FINISHED") -> None:
        """Close the run with ``status`` in FINISHED, FAILED, KILLED; a second call does nothing."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.end_run("FINISHED")
        else:
            self.end_run("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


class NullTracker(Tracker):
    """Tracks nothing (``--no-track``)."""

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Tracker:
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike) -> None:
        pass

    def log_artifacts(self, directory: str | os.PathLike) -> None:
        pass

    def end_run(self, status: str = "FINISHED") -> None:
        _check_status(status)


class MlflowTracker(Tracker):
    """MLflow through ``MlflowClient`` (no global active run, so several trackers can coexist).

    The store is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<run_dir>/mlflow.db``
    with artifacts in ``<run_dir>/mlruns`` (``run_dir`` defaults to the working folder). Nothing is
    imported or written before the first run starts.
    """

    def __init__(
        self,
        experiment: str = "kenner",
        *,
        tracking_uri: str | None = None,
        run_dir: str | os.PathLike | None = None,
    ) -> None:
        folder = Path(run_dir or Path.cwd()).resolve()
        self.tracking_uri = (
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
        )
        self.artifact_location = (folder / "mlruns").as_uri() if self.tracking_uri.startswith("sqlite:") else None
        self.experiment = experiment
        self.run_id: str | None = None
        self._client = None

    @property
    def client(self):  # -> mlflow.tracking.MlflowClient; created on first use (it creates the store)
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Tracker:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        if self.run_id is not None:
            raise RuntimeError("end the current run before starting another")
        try:
            run = self.client.create_run(
                self._experiment_id(), run_name=name, tags={key: str(value) for key, value in (tags or {}).items()}
            )
            self.run_id = run.info.run_id
            flat = [
                Param(_key(key), str(value)[:MAX_PARAM_VAL_LENGTH]) for key, value in flatten_params(params).items()
            ]
            for start in range(0, len(flat), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=flat[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        except MlflowException as error:
            raise KennerError(
                f"MLflow tracking at {self.tracking_uri} failed: {error.message}; "
                "pass another --tracking-uri or --no-track"
            ) from error
        return self

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        batch = [Metric(_key(key), float(value), now, step or 0) for key, value in metrics.items()]
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self._active(), metrics=batch[start : start + MAX_METRICS_PER_BATCH])

    def log_artifact(self, path: str | os.PathLike) -> None:
        self.client.log_artifact(self._active(), os.fspath(path))

    def log_artifacts(self, directory: str | os.PathLike) -> None:
        self.client.log_artifacts(self._active(), os.fspath(directory))

    def end_run(self, status: str = "FINISHED") -> None:
        _check_status(status)
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None

    def _active(self) -> str:
        if self.run_id is None:
            raise RuntimeError("start_run() first")
        return self.run_id


class WandbTracker(Tracker):
    """Weights & Biases; ``WANDB_MODE=offline`` keeps runs on disk (``wandb sync`` uploads them later)."""

    def __init__(self, project: str = "kenner", *, run_dir: str | os.PathLike | None = None) -> None:
        try:
            import wandb
        except ImportError as error:
            raise KennerError(
                "tracking with --wandb needs the wandb package: pip install wandb "
                "(or leave out --wandb to track with MLflow)"
            ) from error
        self._wandb = wandb
        self.project = project
        self.run_dir = Path(run_dir).resolve() if run_dir else None
        self.run = None

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Tracker:
        if self.run is not None:
            raise RuntimeError("end the current run before starting another")
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = self._wandb.init(
            project=self.project,
            name=name,
            config=flatten_params(params),
            tags=[f"{key}={value}"[:64] for key, value in (tags or {}).items()] or None,
            dir=os.fspath(self.run_dir) if self.run_dir else None,
        )
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._active().log({key: float(value) for key, value in metrics.items()}, step=step)

    def log_artifact(self, path: str | os.PathLike) -> None:
        artifact = self._artifact(Path(path).name)
        artifact.add_file(os.fspath(path))
        self._active().log_artifact(artifact)

    def log_artifacts(self, directory: str | os.PathLike) -> None:
        artifact = self._artifact(Path(directory).name)
        artifact.add_dir(os.fspath(directory))
        self._active().log_artifact(artifact)

    def end_run(self, status: str = "FINISHED") -> None:
        _check_status(status)
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
            self.run = None

    def _artifact(self, name: str):
        safe = re.sub(r"[^\w\-.]", "-", f"{self._active().id}-{name}")
        return self._wandb.Artifact(safe, type="file")

    def _active(self):
        if self.run is None:
            raise RuntimeError("start_run() first")
        return self.run


def create_tracker(
    kind: str,
    *,
    experiment: str = "kenner",
    tracking_uri: str | None = None,
    run_dir: str | os.PathLike | None = None,
) -> Tracker:
    """A tracker by name: ``mlflow``, ``wandb`` (``experiment`` is the project) or ``none``.

    ``run_dir`` is where the local store lives (MLflow's ``mlflow.db``/``mlruns``, wandb's ``wandb/``).
    """
    if kind == "mlflow":
        return MlflowTracker(experiment, tracking_uri=tracking_uri, run_dir=run_dir)
    if kind == "wandb":
        if tracking_uri is not None:
            raise KennerError("--tracking-uri is for MLflow; W&B reads WANDB_BASE_URL instead")
        return WandbTracker(experiment, run_dir=run_dir)
    if kind == "none":
        return NullTracker()
    raise KennerError(f"unknown tracker {kind!r}; choose one of {', '.join(TRACKERS)}")


def tracker_for(cfg: TrackingConfig, *, run_dir: str | os.PathLike | None = None) -> Tracker:
    """The tracker the ``tracking`` section asks for (``--track``, ``--experiment``, ``--tracking-uri``)."""
    return create_tracker(cfg.track, experiment=cfg.experiment, tracking_uri=cfg.tracking_uri, run_dir=run_dir)


def _key(name: str) -> str:
    """A metric/param name MLflow accepts: unsupported characters become ``_``, at most 250 characters."""
    return _KEY_UNSAFE.sub("_", str(name))[:250]


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
