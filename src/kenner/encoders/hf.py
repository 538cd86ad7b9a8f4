"""``hf:<repo-or-dir>`` encoders: vision transformers from Hugging Face transformers.

DINOv2 (with or without registers), DINOv3 and other ``AutoModel`` vision backbones load directly;
for CLIP and SigLIP checkpoints only the vision tower is loaded. Pooling: ``cls`` is the model's pooled
output (the normed CLS token for DINO, CLS after post-layernorm for CLIP, the attention-pool head for
SigLIP), ``mean`` averages the patch tokens (CLS and register tokens excluded), ``cls+mean``
concatenates both (twice the dimension).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PretrainedConfig

from kenner.encoders.base import INTERPOLATIONS, Encoder, Preprocessing, download_error, hash_state_dict
from kenner.encoders.hub import cached, require_hub
from kenner.errors import KennerError

logger = logging.getLogger(__name__)

# Multimodal checkpoints whose vision tower is loaded on its own.
VISION_TOWERS = {
    "clip": transformers.CLIPVisionModel,
    "siglip": transformers.SiglipVisionModel,
}
UNSUPPORTED = {"siglip2": "SigLIP 2 (variable-resolution inputs)"}
# PIL resampling codes used by image processors.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size_value(size: object, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def preprocessing_from_processor(processor: object) -> Preprocessing:
    """Map an image processor's resize / centre-crop / normalisation settings onto ``Preprocessing``."""
    size = getattr(processor, "size", None) or {}
    shortest = _size_value(size, "shortest_edge")
    height = _size_value(size, "height")
    resize = shortest or height
    if resize is None:
        raise KennerError(f"cannot read the input size from image processor {type(processor).__name__}")
    crop_size = getattr(processor, "crop_size", None) or {}
    crop = _size_value(crop_size, "height") if getattr(processor, "do_center_crop", False) else None
    resample = getattr(processor, "resample", 3)
    interpolation = RESAMPLE.get(int(resample), "bicubic") if resample is not None else "bicubic"
    return Preprocessing(
        size=min(crop or resize, resize),
        resize=resize,
        mean=tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN),
        std=tuple(getattr(processor, "image_std", None) or IMAGENET_STD),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
        crop="center" if shortest else "squash",
    )


def _preprocessing(source: str, config: PretrainedConfig) -> Preprocessing:
    try:
        return preprocessing_from_processor(AutoImageProcessor.from_pretrained(source))
    except OSError:
        vision = getattr(config, "vision_config", config)
        size = int(vision.image_size)
        logger.warning("%s has no preprocessor_config.json; using %dpx, ImageNet mean/std, bicubic", source, size)
        return Preprocessing(size=size, resize=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop="squash")


class HFEncoder(Encoder):
    """A transformers vision model returning ``last_hidden_state`` (and ``pooler_output``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        *,
        name: str,
        pooling: str,
        weights_hash: str,
    ) -> None:
        hidden = int(model.config.hidden_size)
        super().__init__(
            name=name,
            dim=2 * hidden if pooling == "cls+mean" else hidden,
            preprocessing=preprocessing,
            pooling=pooling,
            weights_hash=weights_hash,
        )
        self.model = model.eval()
        patch = model.config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, list | tuple) else patch)

    def _tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """All tokens, the pooled output, and how many leading tokens are not patches (CLS, registers)."""
        output = self.model(pixel_values=pixels)
        tokens = output.last_hidden_state
        patches = (pixels.shape[-2] // self.patch_size) * (pixels.shape[-1] // self.patch_size)
        return tokens, getattr(output, "pooler_output", None), tokens.shape[1] - patches

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens, pooled, prefix = self._tokens(pixels)
        if self.pooling != "mean" and pooled is None:
            if prefix == 0:
                raise KennerError(f"{self.name} has no CLS token or pooled output; use --pooling mean")
            pooled = tokens[:, 0]
        mean = tokens[:, prefix:].mean(dim=1)
        if self.pooling == "cls":
            return pooled
        if self.pooling == "mean":
            return mean
        return torch.cat([pooled, mean], dim=1)

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens, _, prefix = self._tokens(pixels)
        return tokens[:, prefix:]


def _load_model(source: str, config: PretrainedConfig) -> torch.nn.Module:
    model_class = VISION_TOWERS.get(config.model_type, AutoModel)
    model, info = model_class.from_pretrained(source, output_loading_info=True)
    missing = info.get("missing_keys") or []
    if missing:
        raise KennerError(
            f"{source}: {len(missing)} weights missing from the checkpoint (e.g. {sorted(missing)[:3]}); "
            "is this a vision model checkpoint?"
        )
    return model


def require_hf(repo: str) -> None:
    """Fail fast when hub repo ``repo`` is neither cached here nor downloadable (nothing is loaded)."""
    if not cached(repo, "config.json"):
        require_hub("hf", repo)


def create_hf_encoder(source: str, *, weights: str | Path | None = None, pooling: str = "cls") -> HFEncoder:
    """``hf:<repo-or-dir>``: a hub name (``facebook/dinov2-small``) or a local ``save_pretrained`` dir."""
    if weights is not None:
        raise KennerError("--weights is not used with hf: encoders; pass the model folder as hf:/path/to/dir")
    looks_local = Path(source).expanduser().is_dir() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not Path(source).expanduser().is_dir():
        raise KennerError(f"model directory not found: {source}")
    source = str(Path(source).expanduser()) if looks_local else source
    if not looks_local:
        require_hf(source)
    try:
        config = AutoConfig.from_pretrained(source)
        if config.model_type in UNSUPPORTED:
            raise KennerError(f"{source}: {UNSUPPORTED[config.model_type]} is not supported yet")
        preprocessing = _preprocessing(source, config)
        model = _load_model(source, config)
    except OSError as error:
        if looks_local:
            raise KennerError(f"could not load a transformers model from {source}: {error}") from error
        raise download_error(f"{source!r} from the Hugging Face hub", error) from error
    except ValueError as error:  # e.g. a config.json of a model type transformers does not know
        reason = str(error).splitlines()[0]
        raise KennerError(f"could not load {source} with transformers: {reason}") from error
    return HFEncoder(
        model,
        preprocessing,
        name=f"hf:{source}",
        pooling=pooling,
        weights_hash=hash_state_dict(model.state_dict()),
    )
