"""One ArcFace (Deng et al. 2019): pytorch-metric-learning's ``ArcFaceLoss`` as a classifier layer, and the
margin schedule every ArcFace user (heads, metric learning, fine-tuning) follows.

Logits are ``s * cos(theta)`` between L2-normalised features and class weights (pml's ``get_logits``); in
training the target class gets ``s * cos(theta + m)`` (``s * (cos(theta) - m * sin(m))`` where
``theta + m`` would pass pi), computed by pml's own methods exactly as ``ArcFaceLoss`` computes its loss,
so that label smoothing and class weights can be applied to the margin logits by ``F.cross_entropy``.
"""

from __future__ import annotations

import math

import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torch import nn


def margin_at(epoch: int, *, margin: float, warmup_epochs: int, ramp_epochs: int) -> float:
    """The ArcFace margin (radians) in 0-based ``epoch``: 0 for ``warmup_epochs`` epochs, then a linear ramp
    over ``ramp_epochs`` epochs to ``margin`` (``ramp_epochs=0``: the full margin at once)."""
    if epoch < warmup_epochs:
        return 0.0
    return margin * min(1.0, (epoch - warmup_epochs + 1) / (ramp_epochs + 1))


def margin_logits(loss: ArcFaceLoss, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The scaled logits with the additive angular margin on each row's target class, as
    ``ArcFaceLoss.compute_loss`` builds them before its cross-entropy."""
    mask = loss.get_target_mask(embeddings, labels)
    cosine = loss.get_cosine(embeddings)
    target = cosine[mask == 1]
    shift = (loss.modify_cosine_of_target_classes(target) - target).unsqueeze(1)
    return loss.scale_logits(cosine + mask * shift, embeddings)


class ArcFace(nn.Module):
    """A classifier layer around ``ArcFaceLoss(n_classes, in_dim)``: ``forward(features)`` gives the
    inference logits, ``forward(features, labels)`` the margin logits of training."""

    def __init__(self, in_dim: int, n_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.loss = ArcFaceLoss(n_classes, in_dim, margin=math.degrees(margin), scale=scale)

    @property
    def margin(self) -> float:
        """The additive angular margin in radians (pml keeps it in radians after construction)."""
        return float(self.loss.margin)

    @margin.setter
    def margin(self, value: float) -> None:
        self.loss.margin = float(value)

    @property
    def scale(self) -> float:
        return float(self.loss.scale)

    @property
    def weight(self) -> torch.Tensor:
        """The class weights [n_classes, in_dim] (a view of pml's ``W`` [in_dim, n_classes])."""
        return self.loss.W.T

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None or self.margin == 0:
            return self.loss.get_logits(features)
        return margin_logits(self.loss, features, labels)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.weight.shape[1]}, n_classes={self.weight.shape[0]}, scale={self.scale}, margin={self.margin}"
        )
