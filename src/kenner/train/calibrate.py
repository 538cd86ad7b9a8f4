"""Temperature scaling (Guo et al. 2017): one scalar ``T`` fitted on validation logits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_temperature(
    logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, *, max_iter: int = 100
) -> float:
    """Return the ``T > 0`` minimising the NLL of ``softmax(logits / T)`` on ``y`` (LBFGS over ``log T``).

    Dividing by ``T`` never changes the argmax, so accuracy is untouched.
    """
    logits = torch.as_tensor(logits).detach().to(torch.float64)
    target = torch.as_tensor(y, device=logits.device).long()
    if logits.shape[0] == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def apply_temperature(logits: torch.Tensor | np.ndarray, T: float) -> torch.Tensor | np.ndarray:
    """Scaled logits ``logits / T`` (same type as the input)."""
    if T <= 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    return logits / T
