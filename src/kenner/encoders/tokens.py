"""Patch tokens of ViT encoders pooled into one vector per image with foreground weights.

Used by the coin side classifier, whose question (which side is up?) lives in where the object's
details are, which a plain CLS token blurs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kenner.data.images import load_image
from kenner.encoders.base import Encoder
from kenner.errors import KennerError
from kenner.progress import progress_bar


def mask_weighted_pool(tokens: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Pool patch tokens [B, T, D] -> [B, D] with foreground weights from the token L2 norms.

    Norms are standardised per image and turned into weights by ``softmax(z / temperature)``: tokens
    with larger norms (the object, on plain backgrounds) dominate; a large temperature tends to the
    plain mean. (ViTs without registers can show a few high-norm background "artifact" tokens; the
    standardisation keeps their influence bounded, and ``--disable-mask-pooling`` turns this off.)
    """
    if tokens.ndim != 3:
        raise KennerError(f"mask-weighted pooling needs tokens [B, T, D], got shape {tuple(tokens.shape)}")
    norms = tokens.float().norm(dim=-1)
    mean = norms.mean(dim=1, keepdim=True)
    # The floor keeps float noise in (nearly) equal norms from being blown up into weights.
    z = (norms - mean) / (norms.std(dim=1, keepdim=True, unbiased=False) + 1e-3 * mean + 1e-12)
    weights = torch.softmax(z / temperature, dim=1)
    return torch.einsum("bt,btd->bd", weights, tokens.float())


def has_patch_tokens(encoder: Encoder) -> bool:
    """True when ``encoder`` gives patch tokens (ViTs), so :func:`pooled_tokens` can run."""
    return type(encoder).forward_tokens is not Encoder.forward_tokens


def pooled_tokens(
    encoder: Encoder,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    background: tuple[int, ...] = (255, 255, 255),
) -> np.ndarray:
    """Mask-pooled patch tokens of images, computed on the fly [N, dim]. Tokens are not cached (they are
    T times larger than embeddings)."""
    transform = encoder.preprocessing.transform()
    size = encoder.preprocessing.size
    chunks = []
    for start in progress_bar(range(0, len(paths), batch_size), desc="patch tokens", unit="batch"):
        batch = torch.stack(
            [
                transform(load_image(path, background=background, max_side=size))
                for path in paths[start : start + batch_size]
            ]
        )
        features = mask_weighted_pool(encoder.embed_tokens(batch))
        chunks.append(features.cpu().numpy().astype(np.float32))
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
