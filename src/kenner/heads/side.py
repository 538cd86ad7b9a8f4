"""Coin side classifier: which photo is the obverse? Data building and features for it.

Two tasks on two-view data (views ``(a, b)``, e.g. obverse and reverse):

- ``pair``: each sample gives two rows, ``[f(a), f(b)] -> 0`` and ``[f(b), f(a)] -> 1``; a head on the
  concatenated features predicts the order.
- ``single``: each photo alone, ``f(a) -> 0`` and ``f(b) -> 1`` ("is this an obverse or a reverse?"),
  for sorting unlabelled photos before pairing them.

Both rows of a sample stay in the sample's split, so a coin never leaks between train and test.
Per-view features ``f`` are the cached pooled embeddings, or, for encoders with patch tokens
(``Encoder.embed_tokens``), tokens pooled with foreground weights (:func:`mask_weighted_pool`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kenner.data.images import load_image
from kenner.encoders.base import Encoder
from kenner.errors import KennerError

SIDE_TASKS = ("pair", "single")


def side_class_names(views: Sequence[str], task: str = "pair") -> list[str]:
    """Names of the two classes: ``["a|b", "b|a"]`` (pair order) or ``["a", "b"]`` (single photo)."""
    first, second = _two_views(views)
    if task == "pair":
        return [f"{first}|{second}", f"{second}|{first}"]
    if task == "single":
        return [first, second]
    raise KennerError(f"side classifier task must be one of {', '.join(SIDE_TASKS)}, not {task!r}")


def side_dataset(
    first: np.ndarray, second: np.ndarray, task: str = "pair"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``X``, labels ``y`` and ``source`` (the sample index of each row) for the side task.

    ``first`` / ``second`` are per-view features [N, D] of the same N samples.
    """
    first = np.asarray(first, dtype=np.float32)
    second = np.asarray(second, dtype=np.float32)
    if first.shape != second.shape or first.ndim != 2:
        raise KennerError(
            f"both views need features of the same shape [N, D]; got {first.shape} and {second.shape}"
        )
    n = len(first)
    if task == "pair":
        X = np.concatenate([np.hstack([first, second]), np.hstack([second, first])])
    elif task == "single":
        X = np.concatenate([first, second])
    else:
        raise KennerError(f"side classifier task must be one of {', '.join(SIDE_TASKS)}, not {task!r}")
    y = np.repeat(np.array([0, 1], dtype=np.int64), n)
    return X, y, np.tile(np.arange(n), 2)


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


def view_features(
    encoder: Encoder,
    paths: Sequence[str | Path],
    *,
    mask_pooling: bool = True,
    batch_size: int = 32,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Per-image features computed on the fly: mask-pooled patch tokens, or ``encoder.embed`` when
    ``mask_pooling`` is off. Tokens are not cached (they are T times larger than embeddings)."""
    transform = encoder.preprocessing.transform()
    size = encoder.preprocessing.size
    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="side features", unit="batch", disable=None):
        batch = torch.stack([
            transform(load_image(path, background=background, max_side=size))
            for path in paths[start : start + batch_size]
        ])
        features = mask_weighted_pool(encoder.embed_tokens(batch)) if mask_pooling else encoder.embed(batch)
        chunks.append(features.cpu().numpy().astype(np.float32))
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)


def _two_views(views: Sequence[str]) -> tuple[str, str]:
    if len(views) != 2:
        raise KennerError(
            f"the side classifier needs a two-view manifest (e.g. obverse_path and reverse_path columns); "
            f"this dataset has {len(views)} view(s): {', '.join(views)}"
        )
    return views[0], views[1]
