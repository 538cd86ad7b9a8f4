"""``timm:<name>`` encoders: any timm model, pooled features before its classifier."""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from timm.models import load_state_dict
from torch import nn

from kenner.encoders.base import Encoder, Preprocessing, download_error, hash_file, hash_state_dict
from kenner.encoders.hub import cached, require_hub
from kenner.errors import KennerError


def preprocessing_from_timm(model: nn.Module) -> Preprocessing:
    """Map timm's data config (input size, crop_pct, crop_mode, mean/std) onto ``Preprocessing``."""
    config = resolve_data_config(model=model)
    size = int(config["input_size"][-1])
    crop_mode = config.get("crop_mode", "center")
    return Preprocessing(
        size=size,
        resize=max(size, math.floor(size / config.get("crop_pct", 1.0))),
        mean=config["mean"],
        std=config["std"],
        interpolation=config.get("interpolation", "bicubic"),
        crop="squash" if crop_mode == "squash" else "center",
    )


def read_state_dict(path: str | Path) -> dict:
    """A local state dict (.pth/.pt/.bin/.safetensors); a missing or unreadable file is a KennerError."""
    path = Path(path)
    if not path.is_file():
        raise KennerError(f"weights file not found: {path}")
    try:
        return load_state_dict(str(path))
    except Exception as error:
        raise KennerError(f"could not read weights file {path}: {error}") from error


def load_weights_file(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict (.pth/.pt/.bin/.safetensors) into ``model``, ignoring only its classifier."""
    path = Path(path)
    state_dict = read_state_dict(path)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ([classifiers] if isinstance(classifiers, str) else classifiers))
    own = model.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if k in own or not k.startswith(prefixes)}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise KennerError(
            f"weights file {path} does not fit timm model {model.pretrained_cfg.get('architecture')}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {mismatched[:3]} "
            "(expected a timm state dict for this architecture)"
        )
    model.load_state_dict(state_dict)


class TimmEncoder(Encoder):
    """Wraps a timm model; the embedding is ``forward_head(forward_features(x), pre_logits=True)``."""

    def __init__(self, model: nn.Module, *, name: str, pooling: str, weights_hash: str) -> None:
        dim = getattr(model, "head_hidden_size", None) or model.num_features
        super().__init__(
            name=name,
            dim=int(dim),
            preprocessing=preprocessing_from_timm(model),
            pooling=pooling,
            weights_hash=weights_hash,
        )
        self.model = model.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(pixels), pre_logits=True)

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        prefix = getattr(self.model, "num_prefix_tokens", None)
        if prefix is None:
            return super().forward_tokens(pixels)
        return self.model.forward_features(pixels)[:, prefix:]


def require_timm(name: str, cfg: object | None = None) -> None:
    """Fail fast when timm model ``name``'s pretrained weights are neither cached here nor downloadable."""
    cfg = cfg or timm.models.get_pretrained_cfg(name)
    if cfg is None or getattr(cfg, "file", None):
        return
    if cfg.hf_hub_id and cached(cfg.hf_hub_id, "model.safetensors", "pytorch_model.bin"):
        return
    require_hub("timm", name, url=None if cfg.hf_hub_id else cfg.url)


def create_timm_model(name: str, *, weights: str | Path | None, **kwargs) -> tuple[nn.Module, str]:
    """A timm model with hub weights (``weights=None``) or a local file; returns it and its weights hash."""
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KennerError(f"unknown timm model {name!r}{hint}")
    if weights is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_weights_file(model, weights)
        return model, hash_file(weights)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # a tag this architecture does not have
        raise KennerError(f"timm model {name!r}: {error}") from error
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise KennerError(f"timm model {name!r} has no pretrained weights; pass --weights FILE")
    require_timm(name, cfg)
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except OSError as error:
        raise download_error(f"timm weights for {name!r}", error) from error
    return model, hash_state_dict(model.state_dict())


def create_timm_encoder(name: str, *, weights: str | Path | None = None, pooling: str = "cls") -> TimmEncoder:
    """``timm:<name>``. Pooling ``cls`` keeps the model's own pooling, ``mean`` averages the final
    (normed) patch tokens of a ViT; a CNN average-pools either way."""
    if pooling not in ("cls", "mean"):
        raise KennerError(f"timm encoders support pooling 'cls' or 'mean', not {pooling!r}")
    model, weights_hash = create_timm_model(name, weights=weights, num_classes=0)
    if getattr(model, "num_prefix_tokens", 0) == 0:
        pooling = "avg"  # no class token: both poolings are the model's global average pool
    elif pooling == "mean":
        model.reset_classifier(0, global_pool="avg")
    return TimmEncoder(model, name=f"timm:{name}", pooling=pooling, weights_hash=weights_hash)
