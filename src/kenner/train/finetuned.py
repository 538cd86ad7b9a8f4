"""A fine-tuned model: class probabilities for images, a summary of its training, and save/load (fp32
safetensors + a JSON of what loading needs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as dump_tensors

from kenner import __version__
from kenner.encoders import create_encoder
from kenner.encoders.base import Preprocessing
from kenner.errors import KennerError
from kenner.io import atomic_write_bytes, atomic_write_json
from kenner.train.checkpoint import fp32_state_dict
from kenner.train.data import ImageSamples, make_loader
from kenner.train.epoch import predict_logits, softmax
from kenner.train.model import FinetuneNet, build_model
from kenner.train.precision import auto_settings, detect_device

WEIGHTS = "finetuned.safetensors"
META = "finetuned.json"
FORMAT = "kenner-finetuned"
FORMAT_VERSION = 1


def absolute_encoder(spec: str, weights: str | None) -> tuple[str, str | None]:
    """The encoder spec (``hf:``/``local:`` folders) and weights file with local paths made absolute, so a
    saved model finds them from any working folder."""
    family, colon, target = spec.partition(":")
    if colon and family in ("hf", "local") and Path(target).exists():
        spec = f"{family}:{Path(target).resolve()}"
    return spec, str(Path(weights).resolve()) if weights else None


class FinetunedModel:
    """The best weights of a fine-tuning run (model or EMA) and what predicting with them needs.

    ``info`` holds the encoder (spec, weights, pooling), the views read and how they combine, the class
    names, the background colour, the head fields, the preprocessing, and the training summary.
    """

    def __init__(self, model: FinetuneNet, info: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.model = model.eval()
        self.info = info
        self.history = history

    @property
    def best_epoch(self) -> int:
        return int(self.info["best_epoch"])

    @property
    def best_source(self) -> str:
        """``model`` or ``ema``: which weights scored best on validation."""
        return str(self.info["best_source"])

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    def predict_proba(self, paths: list[dict[str, Path]], *, batch_size: int = 32) -> np.ndarray:
        """Class probabilities [len(paths), n_classes] for images given per view (``paths[i][view]``)."""
        device = str(next(self.model.parameters()).device)
        settings = auto_settings(detect_device(device), num_workers=0)
        pre = Preprocessing(**self.info["preprocessing"])
        samples = ImageSamples(
            paths,
            np.zeros(len(paths), dtype=np.int64),
            self.info["view_names"],
            pre.transform(),
            background=tuple(self.info["background_color"]),
            max_side=pre.resize,
        )
        logits, _ = predict_logits(self.model, make_loader(samples, batch_size, settings), settings, desc="predicting")
        return softmax(logits)

    def summary(self) -> dict[str, Any]:
        """Hardware, best epoch, best weights, best validation value of the monitored metric, fit seconds."""
        keys = ("hardware", "best_epoch", "best_source", "monitor", "best_value", "fit_seconds", "epochs_seconds")
        facts = {key: self.info[key] for key in keys}
        if self.info.get("init", "random") != "random":
            facts["head start"] = self.info["init"]
        if "supcon_probe" in self.info:
            facts["loss"] = "supcon, then a linear probe on the new embeddings"
            facts["probe val accuracy"] = self.info["supcon_probe"].get("val_accuracy")
        if "wise_ft" in self.info:
            wise = self.info["wise_ft"]
            facts["WiSE-FT alpha"] = wise["alpha"]
            facts["WiSE-FT val " + wise["monitor"]] = {
                a: round(v["val_" + wise["monitor"]], 4) for a, v in wise["val"].items()
            }
        return facts

    def save(self, directory: str | Path) -> Path:
        """Write ``finetuned.safetensors`` (fp32) and ``finetuned.json``."""
        directory = Path(directory)
        atomic_write_bytes(directory / WEIGHTS, dump_tensors(fp32_state_dict(self.model)))
        atomic_write_json(
            directory / META,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "kenner_version": __version__,
                **self.info,
                "history": self.history,
            },
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "auto") -> FinetunedModel:
        """A model saved by :meth:`save`, in eval mode on ``device``."""
        directory = Path(directory)
        if not (directory / META).is_file() or not (directory / WEIGHTS).is_file():
            raise KennerError(
                f"{directory}: no fine-tuned model here (expected {META} and {WEIGHTS}); the run "
                "did not finish, rerun it"
            )
        try:
            meta = json.loads((directory / META).read_text(encoding="utf-8"))
            tensors = load_tensors((directory / WEIGHTS).read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as error:
            raise KennerError(f"{directory}: saved model is corrupt ({error}); re-train or re-copy it") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise KennerError(f"{directory / META}: not a fine-tuned model this kenner ({__version__}) can read")
        history = meta.pop("history")
        info = {k: v for k, v in meta.items() if k not in ("format", "format_version", "kenner_version")}
        encoder = create_encoder(
            info["encoder"], weights=info["weights"], pooling=info["pooling"], device="cpu", backend="torch"
        )
        model = build_model(
            encoder,
            info["head"],
            n_views=len(info["view_names"]),
            combine=info["combine"],
            n_classes=len(info["class_names"]),
            seed=0,
        )
        model.load_state_dict(tensors)
        return cls(model.to(detect_device(device).device), info, history)
