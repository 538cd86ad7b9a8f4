"""``kenner embed``: fill the embedding cache for a dataset, and optionally export the embeddings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from kenner.config.tree import RunConfig
from kenner.data.manifest import Exclusion, write_exclusions
from kenner.encoders import check_encoder
from kenner.io import atomic_write_bytes, writable_dir
from kenner.runs.data import EXCLUDED, embedder_for, load_data

LISTED = 20


def embed_dataset(cfg: RunConfig, *, output: str | None = None) -> str:
    """Embed every view of every sample (only images missing from the cache are computed); with ``output``
    also write an ``.npz`` with ids, labels, groups and one array per view, and the images and files left out
    (``--on-bad-image skip``, unusable files of a folder) to ``excluded.csv`` beside it. Returns a summary."""
    check_encoder(cfg.encoder.encoder, weights=cfg.encoder.weights)
    embedder = embedder_for(cfg)
    writable_dir(embedder.cache_dir, "--cache-dir")
    dataset, exclusions = load_data(cfg.data, cache_dir=cfg.encoder.cache_dir, min_classes=1)
    per_view = embedder.per_view([sample.paths for sample in dataset.samples], dataset.views)
    summary = (
        f"{len(dataset.samples)} samples x {len(dataset.views)} view(s) embedded with {cfg.encoder.encoder} "
        f"(fingerprint {embedder.fingerprint}, dim {embedder.dim})"
    )
    if output:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            ids=np.asarray(dataset.ids),
            labels=np.asarray(dataset.labels),
            groups=np.asarray(dataset.groups),
            **{f"view_{view}": matrix for view, matrix in per_view.items()},
        )
        atomic_write_bytes(output, buffer.getvalue())
        summary += f"\nexported to {output}"
    if exclusions:
        summary += "\n" + _left_out(exclusions, Path(output).parent / EXCLUDED if output else None)
    return summary


def _left_out(exclusions: list[Exclusion], path: Path | None) -> str:
    """The images and files left out, with their reasons (the first ``LISTED``; all of them in ``path``)."""
    lines = [f"{len(exclusions)} image(s)/file(s) left out:"]
    lines += [f"  {item.path or item.sample_id}: {item.reason}" for item in exclusions[:LISTED]]
    if len(exclusions) > LISTED:
        lines.append(f"  ... and {len(exclusions) - LISTED} more")
    if path is not None:
        lines.append(f"all listed in {write_exclusions(exclusions, path)}")
    return "\n".join(lines)
