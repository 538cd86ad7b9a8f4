"""The Embedder: a run's encoder and embedding cache, turning image paths into embeddings.

The encoder is built on first use, so a run that never needs embeddings (fine-tuning reads pixels) never
loads it. Only images missing from the cache are encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.sections import ComputeConfig, EncoderConfig
from kenner.device import resolve_device
from kenner.encoders import create_encoder
from kenner.encoders.base import Encoder
from kenner.encoders.extract import extract_embeddings
from kenner.encoders.store import EmbeddingStore
from kenner.errors import KennerError
from kenner.paths import default_cache_dir


class Embedder:
    """Embeddings of images with one encoder configuration, through the embedding cache.

    ``fingerprint``: the fingerprint a trained run recorded; building an encoder whose weights or
    preprocessing changed since is an error instead of silently different embeddings.
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        compute: ComputeConfig | None = None,
        *,
        background: Sequence[int] = (255, 255, 255),
        fingerprint: str | None = None,
    ) -> None:
        self.config = encoder
        self.compute = compute or ComputeConfig()
        self.background = tuple(int(v) for v in background)
        self.expected_fingerprint = fingerprint

    @property
    def spec(self) -> str:
        return self.config.encoder

    @cached_property
    def cache_dir(self) -> Path:
        return Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()

    @property
    def encoder_settings(self) -> dict[str, Any]:
        """What :func:`create_encoder` is called with, less the device."""
        cfg = self.config
        return {
            "spec": cfg.encoder,
            "weights": cfg.weights,
            "pooling": cfg.pooling,
            "backend": cfg.backend,
            "cache_dir": self.cache_dir,
        }

    @cached_property
    def encoder(self) -> Encoder:
        """The encoder, built now (on the run's device; ONNX Runtime where ``backend`` picks it)."""
        cfg = self.config
        encoder = build_encoder(self.encoder_settings, str(resolve_device(self.compute.device)))
        if self.expected_fingerprint is not None and encoder.fingerprint != self.expected_fingerprint:
            raise KennerError(
                f"the encoder {cfg.encoder!r} now has fingerprint {encoder.fingerprint}, but the run was trained "
                f"with {self.expected_fingerprint}: its weights or preprocessing changed"
            )
        return encoder

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint

    def embed(self, paths: Sequence[Path]) -> np.ndarray:
        """float32 [len(paths), dim], rows in ``paths`` order (cached images are read, not computed)."""
        store = EmbeddingStore(self.cache_dir, self.encoder.fingerprint, self.encoder.dim)
        fill = None
        if self.compute.ray:
            from kenner.encoders.ray_extract import RayFill

            fill = RayFill(
                self.compute.ray,
                partial(build_encoder, self.encoder_settings),
                self.encoder.preprocessing,
                store,
                workers=self.compute.ray_workers,
                batch_size=self.config.embed_batch_size,
                background=self.background,
            )
        return extract_embeddings(
            self.encoder,
            list(paths),
            store,
            batch_size=self.config.embed_batch_size,
            num_workers=self.compute.num_workers,
            background=self.background,
            fill=fill,
        )

    def per_view(self, items: Sequence[dict[str, Path]], views: Sequence[str]) -> dict[str, np.ndarray]:
        """Embeddings of every view of every item (one extraction pass over all their images)."""
        matrix = self.embed([item[view] for view in views for item in items])
        n = len(items)
        return {view: matrix[i * n : (i + 1) * n] for i, view in enumerate(views)}


def build_encoder(settings: dict[str, Any], device: str) -> Encoder:
    """The encoder of ``settings`` (:attr:`Embedder.encoder_settings`) on ``device``: how a Ray actor builds its own."""
    settings = dict(settings)
    return create_encoder(settings.pop("spec"), device=device, **settings)
