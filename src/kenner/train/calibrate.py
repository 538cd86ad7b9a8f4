"""Temperature scaling (Guo et al. 2017): one scalar ``T`` fitted on validation logits, and the
calibration it buys (ECE and NLL before and after) for a run's report."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kenner.evaluate.calibration import expected_calibration_error

log = logging.getLogger(__name__)

# The temperature is kept in this range: outside it, probabilities are all but one-hot or uniform.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(
    logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, *, max_iter: int = 100
) -> float:
    """Return the ``T`` in [0.05, 20] minimising the NLL of ``softmax(logits / T)`` on ``y`` (LBFGS over
    ``log T``).

    Dividing by ``T`` never changes the argmax, so accuracy is untouched. When every row is already
    classified correctly the NLL falls all the way to ``T -> 0`` (no finite optimum; the probabilities
    would become one-hot), so ``T = 1`` is kept and a warning says why.
    """
    logits = torch.as_tensor(logits).detach().to(torch.float64)
    target = torch.as_tensor(y, device=logits.device).long()
    if logits.shape[0] == 0:
        return 1.0
    if bool((logits.argmax(dim=1) == target).all()):
        log.warning("temperature scaling: all %d validation rows are classified correctly, so no finite "
                    "temperature minimises their NLL; keeping T = 1 (use a larger validation split)",
                    logits.shape[0])
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return min(max(float(log_t.detach().exp()), MIN_TEMPERATURE), MAX_TEMPERATURE)


def apply_temperature(logits: torch.Tensor | np.ndarray, T: float) -> torch.Tensor | np.ndarray:
    """Scaled logits ``logits / T`` (same type as the input)."""
    if T <= 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    return logits / T


def calibration_summary(
    logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, temperature: float
) -> dict[str, float]:
    """ECE and NLL of ``softmax(logits)`` (before) and ``softmax(logits / temperature)`` (after).

    ``logits`` are the ones predictions come from (after any inference-time logit adjustment).
    Keys: ``temperature``, ``ece_before``, ``ece_after``, ``nll_before``, ``nll_after``, ``n``.
    """
    logits = torch.as_tensor(logits).detach().double().cpu()
    target = torch.as_tensor(np.asarray(y)).long()
    summary: dict[str, float] = {"temperature": float(temperature), "n": len(target)}
    for when, scaled in (("before", logits), ("after", logits / temperature)):
        proba = torch.softmax(scaled, dim=1).numpy()
        summary[f"ece_{when}"] = expected_calibration_error(proba, target.numpy())
        summary[f"nll_{when}"] = float(F.cross_entropy(scaled, target))
    return summary


def head_calibration(head: Any, X: np.ndarray, y: np.ndarray, split: np.ndarray) -> dict[str, dict[str, float]]:
    """:func:`calibration_summary` per split (``val``, ``test``, where present) of a fitted
    :class:`~kenner.heads.classifier.EmbeddingClassifier` with its ``temperature_``."""
    from kenner.heads.config import HeadConfig
    from kenner.train.loop import inference_logits

    config = head.config or HeadConfig()
    logits = inference_logits(torch.as_tensor(head.decision_function(X)),
                              torch.as_tensor(head.log_prior_), config)
    split = np.asarray(split)
    return {name: calibration_summary(logits[torch.as_tensor(split == name)], np.asarray(y)[split == name],
                                      head.temperature_)
            for name in ("val", "test") if (split == name).any()}


def calibration_markdown(summaries: dict[str, dict[str, float]]) -> str:
    """A report section: the temperature, then ECE and NLL before/after per split."""
    if not summaries:
        return "No validation or test rows to measure calibration on.\n"
    temperature = next(iter(summaries.values()))["temperature"]
    lines = [f"Temperature T = {temperature:.4g}, fitted on the validation split (argmax unchanged).", "",
             "| split | n | ECE before | ECE after | NLL before | NLL after |", "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        nll = [f"{s[k]:.4f}" if math.isfinite(s[k]) else "inf" for k in ("nll_before", "nll_after")]
        lines.append(f"| {name} | {s['n']} | {s['ece_before']:.4f} | {s['ece_after']:.4f} | {nll[0]} | {nll[1]} |")
    return "\n".join(lines) + "\n"
