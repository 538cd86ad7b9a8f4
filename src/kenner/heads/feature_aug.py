"""Augmentation in embedding space: Gaussian noise, channel-wise scaling and mixup."""

from __future__ import annotations

import torch
from scipy.special import betaincinv
from torch import nn


class FeatureAugment(nn.Module):
    """Per-sample Gaussian noise and channel-wise multiplicative scaling of embeddings.

    Each sample gets ``x + noise_std * eps`` with probability ``p`` and, independently,
    ``x * (1 + scale_std * eps)`` (a factor per channel) with probability ``p``. Identity in eval mode
    and when both strengths are 0 (then no random numbers are drawn, so the generator is untouched).
    """

    def __init__(self, noise_std: float = 0.0, scale_std: float = 0.0, p: float = 0.5) -> None:
        super().__init__()
        if noise_std < 0 or scale_std < 0 or not 0.0 <= p <= 1.0:
            raise ValueError("noise_std and scale_std must be >= 0 and p in [0, 1]")
        self.noise_std = noise_std
        self.scale_std = scale_std
        self.p = p

    @property
    def active(self) -> bool:
        return self.training and (self.noise_std > 0 or self.scale_std > 0) and self.p > 0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.active:
            return x
        if self.noise_std > 0:
            x = x + self._mask(x, generator) * self.noise_std * self._randn(x, generator)
        if self.scale_std > 0:
            x = x * (1.0 + self._mask(x, generator) * self.scale_std * self._randn(x, generator))
        return x

    def _mask(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        draw = torch.rand(x.shape[0], 1, generator=generator, device=_device(x, generator))
        return (draw < self.p).to(x)

    @staticmethod
    def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=_device(x, generator)).to(x)

    def extra_repr(self) -> str:
        return f"noise_std={self.noise_std}, scale_std={self.scale_std}, p={self.p}"


def _device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def mixup(
    x: torch.Tensor, y_soft: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): ``lam * (x, y) + (1 - lam) * (x, y)[perm]``, ``lam ~ Beta(alpha, alpha)``.

    One ``lam`` per batch; ``y_soft`` is one-hot or soft labels ``[B, C]``. ``alpha <= 0`` returns the
    inputs unchanged. ``lam`` is drawn by the inverse Beta CDF of a uniform from ``generator`` so the
    draw is reproducible with an explicit generator on any device.
    """
    if alpha <= 0:
        return x, y_soft
    device = _device(x, generator)
    u = torch.rand(1, generator=generator, device=device).item()
    lam = float(betaincinv(alpha, alpha, u))
    perm = torch.randperm(x.shape[0], generator=generator, device=device).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], lam * y_soft + (1.0 - lam) * y_soft[perm]
