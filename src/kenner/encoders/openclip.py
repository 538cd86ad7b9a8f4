"""``open_clip:<arch>[@tag]`` encoders: the image tower of an OpenCLIP model.

The embedding is ``encode_image`` (after the projection into the joint image-text space), returned
raw, not L2-normalised: heads get the unscaled features, CLIP zero-shot normalises when it needs to.
The whole model is kept (``encoder.model``), so zero-shot can use ``encode_text`` with the same weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch

from kenner.encoders.base import Encoder, Preprocessing, download_error, hash_file, hash_state_dict
from kenner.encoders.hub import cached, require_hub
from kenner.errors import KennerError

logger = logging.getLogger(__name__)


def preprocessing_from_open_clip(model: torch.nn.Module) -> Preprocessing:
    """Map OpenCLIP's preprocess config (size, mean/std, interpolation, resize_mode)."""
    config = open_clip.get_model_preprocess_cfg(model)
    size = config["size"]
    size = int(size[-1] if isinstance(size, list | tuple) else size)
    resize_mode = config.get("resize_mode", "shortest")
    if resize_mode == "longest":
        logger.warning("open_clip resize_mode 'longest' (pad) is approximated by a centre crop")
    return Preprocessing(
        size=size,
        resize=size,
        mean=config.get("mean", open_clip.OPENAI_DATASET_MEAN),
        std=config.get("std", open_clip.OPENAI_DATASET_STD),
        interpolation=config.get("interpolation", "bicubic"),
        crop="squash" if resize_mode == "squash" else "center",
    )


class OpenClipEncoder(Encoder):
    """An OpenCLIP model; ``forward`` is its ``encode_image``."""

    def __init__(self, model: torch.nn.Module, *, name: str, weights_hash: str) -> None:
        super().__init__(
            name=name,
            dim=int(model.visual.output_dim),
            preprocessing=preprocessing_from_open_clip(model),
            pooling="cls",
            weights_hash=weights_hash,
        )
        self.model = model.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


def create_open_clip_encoder(spec: str, *, weights: str | Path | None = None, pooling: str = "cls") -> OpenClipEncoder:
    """``<arch>@<tag>`` (``ViT-B-32@openai``), ``hf-hub:<repo>``, or ``<arch>`` with ``--weights FILE``."""
    if pooling != "cls":
        raise KennerError("open_clip encoders have one pooled output (pooling 'cls'); --pooling is not used")
    arch, _, tag = spec.partition("@")
    if weights is not None and tag:
        raise KennerError(f"open_clip:{spec}: give either a pretrained tag or --weights FILE, not both")
    if weights is not None and not Path(weights).is_file():
        raise KennerError(f"weights file not found: {weights}")
    hub = arch.startswith(("hf-hub:", "local-dir:"))
    if not hub and arch not in open_clip.list_models():
        raise KennerError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    if not hub and weights is None and not tag:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise KennerError(
            f"open_clip:{arch} needs a pretrained tag (open_clip:{arch}@TAG; tags: {tags}) or --weights FILE"
        )
    if weights is None:
        require_open_clip(spec)
    try:
        model = open_clip.create_model(arch, pretrained=str(weights) if weights is not None else tag or None)
    except (OSError, RuntimeError) as error:
        if weights is not None:
            raise KennerError(f"could not load open_clip weights {weights}: {error}") from error
        if "download" in str(error).lower() or isinstance(error, OSError):
            raise download_error(f"open_clip weights {spec!r}", error) from error
        raise KennerError(f"could not create open_clip:{spec}: {error}") from error
    weights_hash = hash_file(weights) if weights is not None else hash_state_dict(model.state_dict())
    return OpenClipEncoder(model, name=f"open_clip:{spec}", weights_hash=weights_hash)


def require_open_clip(spec: str) -> None:
    """Fail fast, with the way to use a local file, when the weights would come from an unreachable hub."""
    arch, _, tag = spec.partition("@")
    if arch.startswith("local-dir:"):
        return
    if arch.startswith("hf-hub:"):
        repo, url = arch.removeprefix("hf-hub:"), None
    else:
        pretrained = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
        repo, url = pretrained.get("hf_hub", "").strip("/"), pretrained.get("url") or None
    if repo and cached(repo, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        return
    require_hub("open_clip", f"{arch}@{tag}" if tag else arch, url=None if repo else url)
