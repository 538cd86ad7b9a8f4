"""The fine-tuned network: the encoder's backbone over each used view, views averaged or concatenated, then
a head (:func:`kenner.heads.modules.build_head_net`: linear, mlp or arcface)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kenner.encoders.base import Encoder
from kenner.heads.modules import HeadNet, build_head_net
from kenner.loop.epochs import make_generator

# The head fields fine-tuning reads (the HeadConfig fields about the network, and the ArcFace scale/margin).
HEAD_FIELDS = ("head_type", "hidden_sizes", "gelu_ln", "dropout", "arcface_scale", "arcface_margin")


class FinetuneNet(nn.Module):
    """A trainable encoder and a head on its features."""

    def __init__(self, backbone: Encoder, head: HeadNet, *, combine: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.combine = combine

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` [B, V, 3, H, W] -> the head's penultimate features [B, F]."""
        batch, views = pixels.shape[:2]
        per_view = self.backbone(pixels.flatten(0, 1)).reshape(batch, views, -1)
        combined = per_view.flatten(1) if self.combine == "concat" else per_view.mean(dim=1)
        return self.head.features(combined)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``labels`` switch on the ArcFace margin in training."""
        return self.head.classify(self.features(pixels), labels)


def build_model(
    encoder: Encoder,
    head: Mapping[str, Any],
    *,
    n_views: int,
    combine: str,
    n_classes: int,
    seed: int,
    supcon_dim: int = 0,
) -> FinetuneNet:
    """The encoder plus a freshly initialised head (weights drawn from ``make_generator(seed)``); ``head``
    holds the :data:`HEAD_FIELDS`. ``supcon_dim``: the head also gets a SupCon projection of that size."""
    dim = encoder.dim * n_views if combine == "concat" else encoder.dim
    params = {
        **{name: head[name] for name in HEAD_FIELDS},
        "supcon_weight": 1.0 if supcon_dim else 0.0,
        "supcon_dim": supcon_dim or 1,
    }
    return FinetuneNet(encoder, build_head_net(params, dim, n_classes, make_generator(seed)), combine=combine)
