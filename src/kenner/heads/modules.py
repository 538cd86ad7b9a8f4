"""The nn.Modules of a head: hidden blocks, linear or cosine-margin (ArcFace) classifier, SupCon projection.

Every head is a :class:`HeadNet`: ``blocks`` (the body, empty for a linear head) map an embedding to the
penultimate features, ``classifier`` maps features to logits and ``projection`` (only when SupCon is
on) maps features to the space the supervised contrastive loss sees.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kenner.heads.config import HeadConfig
from kenner.train.loop import reset_classifier_


class CosineMarginClassifier(nn.Module):
    """ArcFace (Deng et al. 2019) classifier: logits ``s * cos(theta)``; in training the target class
    gets ``s * cos(theta + m)``.

    Where ``theta + m`` would pass pi (``cos`` no longer falls), the target logit continues as
    ``s * (cos(theta) - m * sin(m))``, as in the reference implementation (insightface).
    """

    def __init__(self, in_dim: int, n_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, in_dim))
        self.scale = scale
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        if labels is None or self.margin == 0:
            return self.scale * cos
        target = cos.gather(1, labels[:, None]).clamp(-1.0, 1.0)
        sin = (1.0 - target.square()).clamp_min(0.0).sqrt()
        shifted = target * math.cos(self.margin) - sin * math.sin(self.margin)
        shifted = torch.where(target > math.cos(math.pi - self.margin), shifted,
                              target - self.margin * math.sin(self.margin))
        return self.scale * cos.scatter(1, labels[:, None], shifted)

    def extra_repr(self) -> str:
        return f"in_dim={self.weight.shape[1]}, n_classes={self.weight.shape[0]}, " \
               f"scale={self.scale}, margin={self.margin}"


class HeadNet(nn.Module):
    """Body blocks, then a classifier; an optional projection for SupCon."""

    def __init__(
        self, blocks: list[nn.Module], classifier: nn.Module, projection: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier
        self.projection = projection

    def features(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Penultimate features: ``blocks[start:]`` applied to ``x`` (manifold mixup mixes after block 0)."""
        for block in self.blocks[start:]:
            x = block(x)
        return x

    def classify(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``labels`` switch on the ArcFace margin during training (ignored by a linear layer)."""
        if isinstance(self.classifier, CosineMarginClassifier):
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


def _block(in_dim: int, out_dim: int, config: HeadConfig, generator: torch.Generator) -> nn.Sequential:
    """Linear -> (LayerNorm -> GELU | ReLU) -> Dropout."""
    layers: list[nn.Module] = [_hidden_linear(in_dim, out_dim, generator)]
    layers += [nn.LayerNorm(out_dim), nn.GELU()] if config.gelu_ln else [nn.ReLU()]
    layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)


def build_classifier(config: HeadConfig, in_dim: int, n_classes: int, generator: torch.Generator) -> nn.Module:
    """A last layer initialised by :func:`kenner.train.loop.reset_classifier_`."""
    if config.head_type == "arcface":
        classifier: nn.Module = CosineMarginClassifier(
            in_dim, n_classes, config.arcface_scale, config.arcface_margin
        )
    else:
        classifier = nn.Linear(in_dim, n_classes)
    reset_classifier_(classifier, generator)
    return classifier


def build_head_net(config: HeadConfig, in_dim: int, n_classes: int, generator: torch.Generator) -> HeadNet:
    """The network for ``config.head_type``; all initial weights are drawn from ``generator`` in order:
    hidden layers, then the classifier (:func:`kenner.train.loop.linear_init`), then the projection.

    ``linear``: dropout (if any) on the input, then one linear layer. ``mlp``: a block per hidden size.
    ``arcface``: blocks for all but the last hidden size, the last one a plain linear embedding (no
    activation, so features can point anywhere on the sphere), then the cosine-margin classifier.
    """
    blocks: list[nn.Module] = []
    dim = in_dim
    if config.head_type == "linear":
        if config.dropout > 0:
            blocks.append(nn.Dropout(config.dropout))
    else:
        sizes = config.hidden_sizes
        plain_last = config.head_type == "arcface" and len(sizes) > 0
        for size in sizes[:-1] if plain_last else sizes:
            blocks.append(_block(dim, size, config, generator))
            dim = size
        if plain_last:
            blocks.append(_hidden_linear(dim, sizes[-1], generator))
            dim = sizes[-1]
    classifier = build_classifier(config, dim, n_classes, generator)
    projection = None
    if config.supcon_weight > 0:
        projection = nn.Sequential(
            _hidden_linear(dim, dim, generator), nn.ReLU(), _hidden_linear(dim, config.supcon_dim, generator)
        )
    return HeadNet(blocks, classifier, projection)
