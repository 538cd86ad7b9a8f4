"""Combine per-view embeddings (e.g. a coin's obverse and reverse) into one row per sample.

Modes: a view name (that view only), ``avg`` (mean of the views), ``concat`` (views side by side in
the dict's order). Coin aliases: ``obv`` / ``rev`` pick the view whose name starts with that prefix,
``both_avg`` = ``avg``, ``both_concat`` = ``concat``. With a single view, ``avg`` and ``concat``
return that view unchanged.
"""

from __future__ import annotations

import numpy as np

from kenner.errors import KennerError

COMBINED_MODES = ("avg", "concat")
ALIASES = {"both_avg": "avg", "both_concat": "concat"}
PREFIX_ALIASES = ("obv", "rev")


def available_modes(views: list[str]) -> list[str]:
    """Every mode ``combine_views`` accepts for these view names."""
    modes = [*views, *COMBINED_MODES, *ALIASES]
    modes += [p for p in PREFIX_ALIASES if p not in views and len(_starting_with(views, p)) == 1]
    return modes


def resolve_mode(views: list[str], mode: str) -> str:
    """The canonical form of ``mode`` for these views: one of ``views``, ``avg`` or ``concat``.

    Raises ``KennerError`` listing the views and modes when ``mode`` fits none of them.
    """
    mode = ALIASES.get(mode, mode)
    if mode in views or mode in COMBINED_MODES:
        return mode
    if mode in PREFIX_ALIASES:
        matches = _starting_with(views, mode)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise KennerError(f"view mode {mode!r} is ambiguous: views {', '.join(matches)}; name one")
    raise KennerError(
        f"unknown view mode {mode!r}; views: {', '.join(views)}; modes: {', '.join(available_modes(views))}"
    )


def combine_views(per_view: dict[str, np.ndarray], mode: str) -> np.ndarray:
    """One float32 matrix [n_samples, dim] from per-view matrices [n_samples, dim_view]."""
    if not per_view:
        raise KennerError("no views to combine")
    arrays = {name: np.asarray(matrix, dtype=np.float32) for name, matrix in per_view.items()}
    rows = {name: matrix.shape[0] for name, matrix in arrays.items()}
    if any(matrix.ndim != 2 for matrix in arrays.values()) or len(set(rows.values())) != 1:
        shapes = ", ".join(f"{name}: {matrix.shape}" for name, matrix in arrays.items())
        raise KennerError(f"views must be 2-D matrices with the same number of rows, got {shapes}")
    mode = resolve_mode(list(arrays), mode)
    if mode in arrays:
        return arrays[mode]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    if mode == "concat":
        return np.concatenate(list(arrays.values()), axis=1)
    dims = {matrix.shape[1] for matrix in arrays.values()}
    if len(dims) != 1:
        raise KennerError(f"view mode 'avg' needs views of one dimension, got {sorted(dims)}; use 'concat'")
    return np.mean(np.stack(list(arrays.values())), axis=0, dtype=np.float32)


def output_dim(dim: int, n_views: int, mode: str) -> int:
    """Width of ``combine_views`` output for ``n_views`` views of width ``dim`` each."""
    if n_views < 1:
        raise KennerError(f"need at least one view, got {n_views}")
    return dim * n_views if ALIASES.get(mode, mode) == "concat" else dim


def _starting_with(views: list[str], prefix: str) -> list[str]:
    return [view for view in views if view.lower().startswith(prefix)]
