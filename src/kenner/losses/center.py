"""Center loss (Wen et al. 2016): pull each embedding towards a trainable centre of its class.

pytorch-metric-learning has no plain center loss (only SubCenterArcFace), so it is written here.
"""

from __future__ import annotations

import torch
from torch import nn


class CenterLoss(nn.Module):
    """``mean_i 0.5 * ||x_i - c_{y_i}||^2`` with centres ``c`` as a parameter (zero-initialised).

    Add it to the classification loss with a small weight; the centres train with the same optimizer.
    """

    def __init__(self, n_classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.zeros(n_classes, dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        diff = features - self.centers[labels]
        return 0.5 * diff.pow(2).sum(dim=1).mean()
