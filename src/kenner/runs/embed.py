"""``kenner embed``: fill the embedding cache for a dataset, and optionally export the embeddings."""

from __future__ import annotations

import io

import numpy as np

from kenner.config.tree import RunConfig
from kenner.io import atomic_write_bytes
from kenner.runs.data import embedder_for, load_data


def embed_dataset(cfg: RunConfig, *, output: str | None = None) -> str:
    """Embed every view of every sample (only images missing from the cache are computed); with ``output``
    also write an ``.npz`` with ids, labels, groups and one array per view. Returns a summary line."""
    dataset, _ = load_data(cfg.data)
    embedder = embedder_for(cfg)
    per_view = embedder.per_view([sample.paths for sample in dataset.samples], dataset.views)
    summary = (f"{len(dataset.samples)} samples x {len(dataset.views)} view(s) embedded with {cfg.encoder.encoder} "
               f"(fingerprint {embedder.fingerprint}, dim {embedder.encoder.dim})")
    if output:
        buffer = io.BytesIO()
        np.savez(buffer, ids=np.asarray(dataset.ids), labels=np.asarray(dataset.labels),
                 groups=np.asarray(dataset.groups), **{f"view_{view}": matrix for view, matrix in per_view.items()})
        atomic_write_bytes(output, buffer.getvalue())
        summary += f"\nexported to {output}"
    return summary
