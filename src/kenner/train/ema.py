"""Exponential moving average of the weights: timm's ``ModelEmaV3``, plus the gap to the live model.

After every optimizer step ``ema.update(model)`` sets each floating-point entry of the state dict
(parameters and buffers) to ``decay * ema + (1 - decay) * model``; ``ema.module`` is the averaged copy,
always in eval mode, evaluated beside the model each epoch.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


def create_ema(model: nn.Module, decay: float) -> ModelEmaV3 | None:
    """An EMA copy of ``model`` with a constant ``decay``, or None when ``decay`` is 0 (EMA off)."""
    if decay <= 0:
        return None
    return ModelEmaV3(model, decay=decay)


@torch.no_grad()
def ema_gap(model: nn.Module, ema: ModelEmaV3) -> float:
    """Mean absolute difference between the model's parameters and their averages."""
    total, count = 0.0, 0
    for live, averaged in zip(model.parameters(), ema.module.parameters(), strict=True):
        total += float((live.detach().float() - averaged.float()).abs().sum())
        count += live.numel()
    return total / max(count, 1)
