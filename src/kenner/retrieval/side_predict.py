"""The side classifier on new photos: the features its run trained on, then the head's probabilities.

A ``single`` run sorts unlabelled photos one by one (query items have one view, ``image``, like a
folder dataset); a ``pair`` run needs both views of a coin (a manifest with the run's ``<view>_path``
columns) and tells their order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kenner.data.manifest import FOLDER_VIEW
from kenner.heads.persist import load_head
from kenner.heads.side import view_features
from kenner.pipeline import embed_views


def side_input_views(info: dict) -> list[str]:
    """Views each query item needs for a side-classifier run described by ``model_info.json``."""
    return [FOLDER_VIEW] if info["side"]["task"] == "single" else list(info["view_names"])


def side_proba(run_dir: Path, info: dict, paths: list[dict[str, Path]], *, cache_dir: str | None = None,
               device: str = "auto") -> np.ndarray:
    """Class probabilities ([N, 2], classes ``info["class_names"]``) for query items ``paths``
    (one dict per item: view -> image path, views from :func:`side_input_views`)."""
    views = side_input_views(info)
    from kenner.predict import run_encoder

    encoder, enc_cfg = run_encoder(info, cache_dir=cache_dir, device=device)
    background = tuple(info["background_color"])
    if info["side"]["mask_pooling"]:
        per_view = {view: view_features(encoder, [item[view] for item in paths], background=background)
                    for view in views}
    else:
        per_view = embed_views(paths, views, encoder, enc_cfg, background)
    X = np.hstack([per_view[view] for view in views])
    return load_head(run_dir / "model").predict_proba(X)
