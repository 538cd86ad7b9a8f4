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
from kenner.config.tree import build_config, to_nested
from kenner.device import resolve_device
from kenner.errors import KennerError
from kenner.heads.classifier import EmbeddingClassifier, head_params
from kenner.heads.modules import build_head_net
from kenner.io import atomic_write_bytes, atomic_write_json
from kenner.loop.epochs import make_generator

FORMAT = "kenner-head"
FORMAT_VERSION = 2
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
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in clf.get_params().items()},
        "classes": clf.classes_.tolist(),
        "input_dim": int(clf.n_features_in_),
        "temperature": float(clf.temperature_),
        "best_epoch": int(clf.best_epoch_),
        "fit_seconds": float(clf.fit_seconds_),
        "history": clf.history_,
    }
    atomic_write_json(directory / META, meta)
    return directory


def load_head(directory: str | Path, *, device: str = "auto") -> EmbeddingClassifier:
    """Rebuild a head saved by :func:`save_head`; it predicts the same labels and probabilities as before."""
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
        raise KennerError(
            f"{directory}: no saved head here (expected {META} and {WEIGHTS}); point to the model/ folder of a run"
        )
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        tensors = load_tensors((directory / WEIGHTS).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as error:
        raise KennerError(f"{directory}: saved head is corrupt ({error}); re-train or re-copy it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise KennerError(f"{directory / META}: not a kenner head file")
    version = meta.get("format_version")
    if not isinstance(version, int) or version != FORMAT_VERSION:
        advice = "upgrade kenner" if isinstance(version, int) and version > FORMAT_VERSION else "re-train it"
        raise KennerError(
            f"{directory / META}: format version {version!r} from kenner "
            f"{meta.get('kenner_version')} is not readable by kenner {__version__}; {advice}"
        )
    try:
        params = head_params(build_config([to_nested(meta["params"], where=str(directory / META))]))
        classes, input_dim = np.asarray(meta["classes"]), int(meta["input_dim"])
        model = build_head_net(params, input_dim, len(classes), make_generator(params["seed"]))
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        arrays = {name: tensors[name].numpy() for name in ("mean", "scale", "log_prior")}
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise KennerError(
            f"{directory}: saved head is incomplete or inconsistent ({error}); re-train or re-copy it"
        ) from None
    clf = EmbeddingClassifier(**params)
    clf.model_ = model.to(resolve_device(device)).eval()
    clf.classes_ = classes
    clf.n_features_in_ = input_dim
    clf.mean_, clf.scale_, clf.log_prior_ = arrays["mean"], arrays["scale"], arrays["log_prior"]
    clf.temperature_ = float(meta["temperature"])
    clf.best_epoch_ = int(meta["best_epoch"])
    clf.fit_seconds_ = float(meta["fit_seconds"])
    clf.history_ = meta["history"]
    return clf
