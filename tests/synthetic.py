"""Synthetic data shared by tests: embeddings with known class structure."""

from __future__ import annotations

import numpy as np


def blobs(
    sizes: list[int], dim: int = 8, sep: float = 3.0, seed: int = 0, draw: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: ``sizes[c]`` rows of class c around centre c (centres from ``seed``, scaled by
    ``sep``; unit noise from ``draw``, so another ``draw`` is a fresh sample of the same classes)."""
    centres = np.random.default_rng(seed).normal(size=(len(sizes), dim)) * sep
    y = np.repeat(np.arange(len(sizes)), sizes)
    noise = np.random.default_rng([seed, draw]).normal(size=(len(y), dim))
    return (centres[y] + noise).astype(np.float32), y
