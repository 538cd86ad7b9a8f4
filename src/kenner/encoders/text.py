"""Text towers of CLIP-like encoders, for zero-shot classification.

``open_clip:`` specs use the model's ``encode_text`` with its tokenizer; ``hf:`` (and ``local:``) CLIP and
SigLIP checkpoints load the whole model with transformers and use ``get_text_features``. The run's cached
image embeddings are the image side: open_clip's are already in the joint space, transformers' are the
vision tower's pooled output, which ``projection`` maps there (CLIP's ``visual_projection``; SigLIP has none).
SigLIP models (a ``logit_bias``) score classes with a sigmoid, CLIP ones with a softmax.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kenner.encoders.base import Encoder, hash_file, hash_state_dict
from kenner.errors import KennerError

TEXT_BATCH = 256


@dataclass
class TextTower:
    """What zero-shot needs from a CLIP-like model besides the image embeddings.

    ``encode``: prompts -> L2-normalised text embeddings [N, D]; ``projection`` [D_image, D] or None;
    ``logit_scale`` (already exponentiated) and ``logit_bias`` (None: softmax scores; a number: sigmoid).
    ``weights_hash`` identifies the weights (keys the text embedding cache).
    """

    encode: Callable[[list[str]], np.ndarray]
    projection: np.ndarray | None
    logit_scale: float
    logit_bias: float | None
    weights_hash: str
    model: torch.nn.Module | None = None


def load_text_tower(spec: str, encoder: Encoder, *, weights: str | None = None) -> TextTower:
    """The text tower belonging to image encoder ``spec`` (``encoder``: the run's, already built)."""
    family, _, target = spec.partition(":")
    if family == "open_clip":
        return _open_clip_tower(target, encoder, weights)
    if family in ("hf", "local"):
        if family == "local" and "architecture" in _read_config(Path(target).expanduser()):
            raise KennerError(f"zero-shot needs a CLIP or SigLIP model; {spec} is a timm model")
        if encoder.pooling != "cls":
            raise KennerError(f"zero-shot with {spec} needs --pooling cls (the pooled output the text is matched to)")
        return _hf_tower(str(Path(target).expanduser()) if family == "local" else target)
    raise KennerError(f"zero-shot needs a CLIP or SigLIP encoder (open_clip:..., hf:DIR of CLIP/SigLIP), not {spec!r}")


def text_weights_id(spec: str, encoder: Encoder) -> str:
    """What identifies the text tower's weights without loading them: open_clip's image encoder hashes the
    whole model already; for ``hf:``/``local:`` the hashes of the model folder's weight files (a hub repo's
    cached snapshot), since the image encoder hashes only the vision tower."""
    family, _, target = spec.partition(":")
    if family not in ("hf", "local"):
        return encoder.weights_hash
    folder = Path(target).expanduser()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(target, local_files_only=True))
        except Exception:  # not cached as a snapshot: the vision weights and the spec must do
            return encoder.weights_hash
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    return ",".join(hash_file(p) for p in files) or encoder.weights_hash


def _read_config(directory: Path) -> dict:
    try:
        return json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()


def _batched(texts: list[str], encode_batch: Callable[[list[str]], torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        parts = [_normalise(encode_batch(texts[i : i + TEXT_BATCH])) for i in range(0, len(texts), TEXT_BATCH)]
    return np.concatenate(parts).astype(np.float32)


def _open_clip_tower(target: str, encoder: Encoder, weights: str | None) -> TextTower:
    import open_clip

    from kenner.encoders.openclip import OpenClipEncoder, create_open_clip_encoder

    if not isinstance(encoder, OpenClipEncoder):  # e.g. the ONNX backend: the text tower needs the torch model
        encoder = create_open_clip_encoder(target, weights=weights)
    model = encoder.model
    tokenizer = open_clip.get_tokenizer(target.partition("@")[0])
    device = encoder.device
    bias = getattr(model, "logit_bias", None)
    return TextTower(
        encode=lambda texts: _batched(texts, lambda batch: model.encode_text(tokenizer(batch).to(device))),
        projection=None,
        logit_scale=float(model.logit_scale.detach().exp()),
        logit_bias=float(bias.detach()) if bias is not None else None,
        weights_hash=encoder.weights_hash,
        model=model,
    )


def _hf_tower(source: str) -> TextTower:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source)
        if config.model_type not in ("clip", "siglip"):
            raise KennerError(f"zero-shot needs a CLIP or SigLIP checkpoint; {source} is {config.model_type!r}")
        model = AutoModel.from_pretrained(source).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise KennerError(f"could not load the text tower of {source}: {str(error).splitlines()[0]}") from error
    sigmoid = config.model_type == "siglip"
    # SigLIP was trained on prompts padded to the full length; CLIP on unpadded ones
    padding = {"padding": "max_length", "max_length": config.text_config.max_position_embeddings} if sigmoid else {}

    def encode_batch(batch: list[str]) -> torch.Tensor:
        tokens = tokenizer(batch, return_tensors="pt", truncation=True, **({"padding": True} | padding))
        output = model.get_text_features(**{k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")})
        return getattr(output, "pooler_output", output)

    projection = None if sigmoid else model.visual_projection.weight.detach().float().T.numpy()
    return TextTower(
        encode=lambda texts: _batched(texts, encode_batch),
        projection=projection,
        logit_scale=float(model.logit_scale.detach().exp()),
        logit_bias=float(model.logit_bias.detach()) if sigmoid else None,
        weights_hash=hash_state_dict(model.state_dict()),
        model=model,
    )
