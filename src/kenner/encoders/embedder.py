"""The Embedder: a run's encoder and embedding cache, turning image paths into embeddings.

The encoder is built on first use, so a run that never needs embeddings (fine-tuning reads pixels) never
loads it. Only images missing from the cache are encoded. An encoder ensemble (``--encoder a,b,c``) is an
:class:`EnsembleEmbedder`: each member embeds through its own cache, and the embeddings are the members'
L2-normalised embeddings side by side (``dims`` says where each one's block is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.sections import ComputeConfig, EncoderConfig
from kenner.device import resolve_device
from kenner.encoders import create_encoder, ensemble_members
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

    @property
    def built(self) -> bool:
        """Whether the encoder was needed (and built)."""
        return "encoder" in vars(self)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def specs(self) -> list[str]:
        """The encoder spec of each block of the embeddings (one here)."""
        return [self.spec]

    @property
    def dims(self) -> list[int]:
        """The width of each block of the embeddings (one here)."""
        return [self.dim]

    def embed(self, paths: Sequence[Path]) -> np.ndarray:
        """float32 [len(paths), dim], rows in ``paths`` order (cached images are read, not computed)."""
        store = EmbeddingStore(self.cache_dir, self.encoder.fingerprint, self.encoder.dim)
        fill = None
        if self.compute.ray:
            from kenner.encoders.ray_extract import RayFill

            if not self.encoder.preprocessing_only:
                raise KennerError(f"{self.spec} prepares images its own way (face detection); run it without --ray")
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


def l2_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0).astype(np.float32, copy=False)


class EnsembleEmbedder:
    """Embeddings of an encoder ensemble: each member's L2-normalised embeddings, side by side.

    ``fingerprint``: the members' fingerprints joined by ``+``; a trained run's must match member by member.
    """

    def __init__(
        self,
        encoder: EncoderConfig,
        compute: ComputeConfig | None = None,
        *,
        background: Sequence[int] = (255, 255, 255),
        fingerprint: str | None = None,
    ) -> None:
        specs = ensemble_members(encoder.encoder)
        if encoder.weights is not None:
            raise KennerError(f"--weights gives one encoder's weights; the ensemble {encoder.encoder!r} takes none")
        expected = fingerprint.split("+") if fingerprint is not None else [None] * len(specs)
        if len(expected) != len(specs):
            raise KennerError(f"the run recorded {len(expected)} encoder fingerprints for the {len(specs)} of {specs}")
        self.config = encoder
        self.compute = compute or ComputeConfig()
        self.background = tuple(int(v) for v in background)
        self.members = [
            Embedder(replace(encoder, encoder=spec), self.compute, background=background, fingerprint=member)
            for spec, member in zip(specs, expected, strict=True)
        ]

    @property
    def spec(self) -> str:
        return self.config.encoder

    @property
    def cache_dir(self) -> Path:
        return self.members[0].cache_dir

    @property
    def encoder(self) -> Encoder:
        raise KennerError(f"this needs one encoder, not the ensemble {self.spec!r}; pass --encoder SPEC")

    @property
    def fingerprint(self) -> str:
        return "+".join(member.fingerprint for member in self.members)

    @property
    def built(self) -> bool:
        return all(member.built for member in self.members)

    @property
    def specs(self) -> list[str]:
        return [member.spec for member in self.members]

    @property
    def dims(self) -> list[int]:
        return [member.dim for member in self.members]

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def embed(self, paths: Sequence[Path]) -> np.ndarray:
        """float32 [len(paths), sum(dims)]: every member's normalised embeddings of ``paths``, side by side."""
        return np.concatenate([l2_rows(member.embed(paths)) for member in self.members], axis=1)

    def per_view(self, items: Sequence[dict[str, Path]], views: Sequence[str]) -> dict[str, np.ndarray]:
        matrix = self.embed([item[view] for view in views for item in items])
        n = len(items)
        return {view: matrix[i * n : (i + 1) * n] for i, view in enumerate(views)}


AnyEmbedder = Embedder | EnsembleEmbedder


def make_embedder(
    encoder: EncoderConfig,
    compute: ComputeConfig | None = None,
    *,
    background: Sequence[int] = (255, 255, 255),
    fingerprint: str | None = None,
) -> AnyEmbedder:
    """An :class:`Embedder`, or an :class:`EnsembleEmbedder` when ``encoder.encoder`` names several encoders."""
    kind = EnsembleEmbedder if len(ensemble_members(encoder.encoder)) > 1 else Embedder
    return kind(encoder, compute, background=background, fingerprint=fingerprint)
