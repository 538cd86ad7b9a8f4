"""The nn.Modules of a head: hidden blocks, a linear or ArcFace classifier, a SupCon projection.

Every head is a :class:`HeadNet`: ``blocks`` (the body, empty for a linear head) map an embedding to the
penultimate features, ``classifier`` maps features to logits and ``projection`` (only when SupCon is on)
maps features to the space the supervised contrastive loss sees. The same network sits on the embeddings of
an :class:`~kenner.heads.classifier.EmbeddingClassifier` and on the backbone of a fine-tuned model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kenner.heads.arcface import ArcFace


def linear_init(in_dim: int, n_classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial last layer: ``weight = 0.01 * randn(n_classes, in_dim)`` from ``generator``, ``bias = 0``."""
    return 0.01 * torch.randn(n_classes, in_dim, generator=generator), torch.zeros(n_classes)


def reset_classifier_(classifier: nn.Module, generator: torch.Generator) -> None:
    """Overwrite a last layer (``nn.Linear`` or :class:`ArcFace`) in place with :func:`linear_init`."""
    n_classes, in_dim = classifier.weight.shape
    weight, bias = linear_init(in_dim, n_classes, generator)
    with torch.no_grad():
        classifier.weight.copy_(weight)
        if getattr(classifier, "bias", None) is not None:
            classifier.bias.copy_(bias)


class HeadNet(nn.Module):
    """Body blocks, then a classifier; an optional projection for SupCon."""

    def __init__(
        self, blocks: list[nn.Module], classifier: nn.Module, projection: nn.Module | None, feature_dim: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier
        self.projection = projection
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Penultimate features: ``blocks[start:]`` applied to ``x`` (manifold mixup mixes after block 0)."""
        for block in self.blocks[start:]:
            x = block(x)
        return x

    def classify(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``labels`` switch on the ArcFace margin in training (a linear layer ignores them)."""
        if isinstance(self.classifier, ArcFace):
            return self.classifier(features, labels)
        return self.classifier(features)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.features(x), labels)


def _hidden_linear(in_dim: int, out_dim: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default init, drawn from ``generator``."""
    layer = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def _block(in_dim: int, out_dim: int, params: Mapping[str, Any], generator: torch.Generator) -> nn.Sequential:
    """Linear -> (LayerNorm -> GELU | ReLU) -> Dropout."""
    layers: list[nn.Module] = [_hidden_linear(in_dim, out_dim, generator)]
    layers += [nn.LayerNorm(out_dim), nn.GELU()] if params["gelu_ln"] else [nn.ReLU()]
    layers.append(nn.Dropout(params["dropout"]))
    return nn.Sequential(*layers)


def build_head_net(params: Mapping[str, Any], in_dim: int, n_classes: int, generator: torch.Generator) -> HeadNet:
    """The network of ``params["head_type"]`` (``linear|mlp|arcface``; the HeadConfig and ArcFaceConfig
    fields); all initial weights come from ``generator`` in order: hidden layers, the classifier
    (:func:`linear_init`), the projection.

    ``linear``: dropout (if any) on the input, then one linear layer. ``mlp``: a block per hidden size.
    ``arcface``: blocks for all but the last hidden size, the last one a plain linear embedding (no
    activation, so features can point anywhere on the sphere), then the :class:`ArcFace` classifier.
    """
    head_type = params["head_type"]
    blocks: list[nn.Module] = []
    dim = in_dim
    if head_type == "linear":
        if params["dropout"] > 0:
            blocks.append(nn.Dropout(params["dropout"]))
    else:
        sizes = tuple(params["hidden_sizes"])
        plain_last = head_type == "arcface" and len(sizes) > 0
        for size in sizes[:-1] if plain_last else sizes:
            blocks.append(_block(dim, size, params, generator))
            dim = size
        if plain_last:
            blocks.append(_hidden_linear(dim, sizes[-1], generator))
            dim = sizes[-1]
    classifier: nn.Module = (
        ArcFace(dim, n_classes, params["arcface_scale"], params["arcface_margin"])
        if head_type == "arcface"
        else nn.Linear(dim, n_classes)
    )
    reset_classifier_(classifier, generator)
    projection = None
    if params["supcon_weight"] > 0:
        projection = nn.Sequential(
            _hidden_linear(dim, dim, generator), nn.ReLU(), _hidden_linear(dim, params["supcon_dim"], generator)
        )
    return HeadNet(blocks, classifier, projection, dim)
