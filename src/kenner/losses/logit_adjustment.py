"""Logit adjustment for long-tailed labels (Menon et al. 2021) and balanced softmax (Ren et al. 2020)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def log_prior(counts: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Log class priors ``log(n_c / n)`` as float32.

    Absent classes are counted as one sample so their prior stays finite (a ``-inf`` prior would make
    post-hoc adjustment predict them everywhere).
    """
    counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64).clamp(min=1.0)
    return torch.log(counts / counts.sum()).float()


def adjust_logits(logits: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """Post-hoc adjustment at inference: ``logits - tau * log_prior`` favours rare classes."""
    return logits - tau * log_prior.to(logits)


def logit_adjusted_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    log_prior: torch.Tensor,
    tau: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Logit-adjusted cross-entropy for training: CE on ``logits + tau * log_prior``.

    ``y`` holds class indices or soft labels (rows summing to 1, e.g. after mixup).
    """
    return F.cross_entropy(logits + tau * log_prior.to(logits), y, label_smoothing=label_smoothing)


def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Balanced softmax: CE on ``logits + log_prior`` (the logit-adjusted loss with ``tau = 1``)."""
    return logit_adjusted_loss(logits, y, log_prior, 1.0)
