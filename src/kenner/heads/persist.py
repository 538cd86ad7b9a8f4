"""Save and load a fitted EmbeddingClassifier: ``head.safetensors`` (tensors) + ``head.json`` (the rest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as dump_tensors

from kenner import __version__
from kenner.device import resolve_device
from kenner.errors import KennerError
from kenner.heads.classifier import EmbeddingClassifier
from kenner.heads.config import HeadConfig
from kenner.heads.modules import build_head_net
from kenner.io import atomic_write_bytes, atomic_write_json
from kenner.train.loop import make_generator

FORMAT = "kenner-head"
FORMAT_VERSION = 1
WEIGHTS = "head.safetensors"
META = "head.json"


def save_head(clf: EmbeddingClassifier, directory: str | Path) -> Path:
    """Write the fitted head into ``directory`` (created); ``head.json`` is written last, atomically."""
    if not hasattr(clf, "model_"):
        raise KennerError("cannot save a head that has not been fitted")
    directory = Path(directory)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in clf.model_.state_dict().items()}
    for name in ("mean_", "scale_", "log_prior_"):
        tensors[name.rstrip("_")] = torch.from_numpy(np.ascontiguousarray(getattr(clf, name), dtype=np.float32))
    atomic_write_bytes(directory / WEIGHTS, dump_tensors(tensors))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kenner_version": __version__,
        "config": (clf.config or HeadConfig()).to_dict(),
        "n_classes": len(clf.classes_),
        "input_dim": int(clf.n_features_in_),
        "temperature": float(clf.temperature_),
        "best_epoch": int(clf.best_epoch_),
        "fit_seconds": float(clf.fit_seconds_),
        "history": clf.history_,
    }
    atomic_write_json(directory / META, meta)
    return directory


def load_head(directory: str | Path, *, device: str = "auto") -> EmbeddingClassifier:
    """Rebuild a head saved by :func:`save_head`; it predicts exactly as before saving."""
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        raise KennerError(f"{directory}: no saved head here (expected {META} and {WEIGHTS}); "
                          "point to the model/ folder of a run")
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        tensors = load_tensors((directory / WEIGHTS).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as error:
        raise KennerError(f"{directory}: saved head is corrupt ({error}); re-train or re-copy it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise KennerError(f"{directory / META}: not a kenner head file")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise KennerError(f"{directory / META}: format version {meta.get('format_version')!r} from kenner "
                          f"{meta.get('kenner_version')} is not readable by kenner {__version__}; upgrade kenner")
    try:
        config = HeadConfig.from_dict(meta["config"])
        n_classes, input_dim = int(meta["n_classes"]), int(meta["input_dim"])
        model = build_head_net(config, input_dim, n_classes, make_generator(config.seed))
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        arrays = {name: tensors[name].numpy() for name in ("mean", "scale", "log_prior")}
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise KennerError(f"{directory}: saved head is incomplete or inconsistent ({error}); "
                          "re-train or re-copy it") from None
    clf = EmbeddingClassifier(config)
    clf.model_ = model.to(resolve_device(device)).eval()
    clf.classes_ = np.arange(n_classes)
    clf.n_features_in_ = input_dim
    clf.mean_, clf.scale_, clf.log_prior_ = arrays["mean"], arrays["scale"], arrays["log_prior"]
    clf.temperature_ = float(meta["temperature"])
    clf.best_epoch_ = int(meta.get("best_epoch", 0))
    clf.fit_seconds_ = float(meta.get("fit_seconds", 0.0))
    clf.history_ = meta.get("history", [])
    return clf
