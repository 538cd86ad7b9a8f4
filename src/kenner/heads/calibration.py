"""Temperature scaling (Guo et al. 2017): one scalar ``T`` fitted on validation logits. What it buys (ECE and
NLL before and after) is measured by :func:`kenner.evaluate.calibration.calibration_summary`."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# The temperature is kept in this range: outside it, probabilities are all but one-hot or uniform.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, *, max_iter: int = 100) -> float:
    """Return the ``T`` in [0.05, 20] minimising the NLL of ``softmax(logits / T)`` on class indices ``y``
    (LBFGS over ``log T``).

    Dividing by ``T`` never changes the argmax, so accuracy is untouched. When every row is classified
    correctly the NLL falls all the way to ``T -> 0`` (no finite optimum: probabilities would become one-hot),
    so ``T`` is chosen instead to make the mean top probability equal what n correct answers out of n say of
    the accuracy, ``(n + 1) / (n + 2)`` (Laplace's rule of succession): confident, but not certain.
    """
    logits = torch.as_tensor(logits).detach().to(torch.float64)
    target = torch.as_tensor(y, device=logits.device).long()
    if logits.shape[0] == 0:
        return 1.0
    if bool((logits.argmax(dim=1) == target).all()):
        n = logits.shape[0]
        return temperature_for_confidence(logits, (n + 1) / (n + 2))
    log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return min(max(float(log_t.detach().exp()), MIN_TEMPERATURE), MAX_TEMPERATURE)


def temperature_for_confidence(logits: torch.Tensor, confidence: float, *, steps: int = 60) -> float:
    """The ``T`` in [0.05, 20] whose mean top probability ``softmax(logits / T).max(1).mean()`` is
    ``confidence`` (bisection on ``log T``: the mean falls as ``T`` grows)."""
    low, high = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
    for _ in range(steps):
        middle = (low + high) / 2
        mean_top = torch.softmax(logits / np.exp(middle), dim=1).max(dim=1).values.mean().item()
        low, high = (middle, high) if mean_top > confidence else (low, middle)
    return float(np.exp((low + high) / 2))
