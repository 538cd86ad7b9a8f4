"""A Faiss gallery of labelled embeddings: build, search, save and load with a run.

Vectors are L2-normalised and searched by inner product, so a search returns the **cosine
similarity** of each neighbour. The ``auto`` index is exact (``Flat``) up to :data:`EXACT_UP_TO` vectors and an
inverted file above (``IVF<nlist>,Flat`` probing an eighth of its lists); on the synthetic 434,528-vector benchmark
(``bench/bench_scale.py``) its Recall@1 was at least exact's, though its top-1 matched exact's for 65 % of queries.
kenner defines the **distance** as ``1 - cosine`` (0 for identical directions, 2 for opposite ones); votes, reject
thresholds and the CLI all use it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import faiss
import numpy as np

from kenner.errors import KennerError
from kenner.io import atomic_write_bytes, atomic_write_json, read_json

INDEX_FILE = "gallery.faiss"
LABELS_FILE = "gallery_labels.npy"
META_FILE = "gallery.json"
AUTO = "auto"
EXACT_UP_TO = 100_000  # an exact search of this many 768-d vectors answers ~200 queries/s on 2 CPU cores


def pick_index(n: int) -> tuple[str, str]:
    """The Faiss factory and search parameters ``auto`` means for a gallery of ``n`` vectors."""
    if n <= EXACT_UP_TO:
        return "Flat", ""
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    return f"IVF{nlist},Flat", f"nprobe={nlist // 8}"


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit length (zero rows stay zero)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Neighbours:
    """Top-k search results; row q holds the neighbours of query q, nearest first.

    Slots Faiss could not fill (approximate indexes, a gallery smaller than k) have index -1,
    label -1 and similarity -inf.
    """

    indices: np.ndarray  # [Q, K] int64 gallery row
    similarities: np.ndarray  # [Q, K] float32 cosine similarity
    labels: np.ndarray  # [Q, K] int64 gallery label

    @property
    def distances(self) -> np.ndarray:
        """Cosine distance ``1 - similarity`` ([Q, K]; inf for empty slots), float rounding clipped at 0."""
        return np.maximum(1.0 - self.similarities, 0.0)


class Gallery:
    """Labelled embeddings in a Faiss index; build one with :meth:`build`, reopen it with :meth:`load`.

    ``search_params`` is a Faiss ParameterSpace string such as ``"nprobe=16"`` or ``"efSearch=128"``.
    """

    def __init__(
        self,
        index: faiss.Index,
        labels: np.ndarray,
        *,
        class_names: list[str] | None = None,
        ids: list[str] | None = None,
        paths: list[str] | None = None,
        factory: str = "Flat",
        search_params: str = "",
    ) -> None:
        self.index = index
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names) if class_names is not None else None
        self.ids = list(ids) if ids is not None else None
        self.paths = [str(p) for p in paths] if paths is not None else None
        self.factory = factory
        self.search_params = search_params
        for name, values in (("labels", self.labels), ("ids", self.ids), ("paths", self.paths)):
            if values is not None and len(values) != index.ntotal:
                raise KennerError(f"gallery {name} has {len(values)} entries for {index.ntotal} vectors")
        if search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(index, search_params)
            except RuntimeError as error:
                raise KennerError(f"invalid Faiss search parameters {search_params!r}: {error}") from error

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        labels: np.ndarray,
        *,
        factory: str = "Flat",
        **kwargs,
    ) -> Gallery:
        """Index ``vectors`` (L2-normalised first) with their integer ``labels``.

        ``factory`` is any Faiss ``index_factory`` string ("Flat" = exact, "IVF256,Flat", "HNSW32",
        "IVF256,PQ16"...) or ``auto`` (:func:`pick_index`, with its search parameters unless some are given);
        indexes that need training are trained on the gallery itself. Other keyword arguments (``class_names``,
        ``ids``, ``paths``, ``search_params``) go to the constructor.
        """
        if factory == AUTO:
            factory, params = pick_index(len(vectors))
            kwargs["search_params"] = kwargs.get("search_params") or params
        vectors = l2_normalize(vectors)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise KennerError(f"a gallery needs a non-empty [N, D] matrix; got shape {vectors.shape}")
        try:
            index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise KennerError(f"invalid Faiss index factory string {factory!r}: {error}") from error
        if not index.is_trained:
            try:
                index.train(vectors)
            except RuntimeError as error:
                raise KennerError(
                    f"cannot train Faiss index {factory!r} on {len(vectors)} vectors ({error}); "
                    "use a smaller index (fewer IVF lists) or the exact 'Flat' index"
                ) from error
        index.add(vectors)
        return cls(index, labels, factory=factory, **kwargs)

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int = 20, *, exclude: np.ndarray | None = None) -> Neighbours:
        """The ``k`` nearest gallery items of each query (queries are L2-normalised first).

        ``exclude`` (one gallery row per query, -1 = none) drops that row from the query's results:
        leave-one-out search for queries that are themselves in the gallery.
        """
        queries = l2_normalize(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise KennerError(f"queries have dimension {queries.shape[1]}, the gallery has {self.dim}")
        extra = 0 if exclude is None else 1
        similarities, indices = self.index.search(queries, int(k) + extra)
        if exclude is not None:
            # Stable sort moves the excluded row (if found) to the end, keeping the others in rank order.
            drop = indices == np.asarray(exclude, dtype=np.int64)[:, None]
            order = np.argsort(drop, axis=1, kind="stable")[:, :k]
            similarities = np.take_along_axis(similarities, order, axis=1)
            indices = np.take_along_axis(indices, order, axis=1)
        empty = indices < 0
        labels = np.where(empty, -1, self.labels[np.where(empty, 0, indices)])
        similarities = np.where(empty, -np.inf, similarities).astype(np.float32)
        return Neighbours(indices=indices.astype(np.int64), similarities=similarities, labels=labels)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index, labels and metadata (atomically, file by file) into ``directory``."""
        directory = Path(directory)
        atomic_write_bytes(directory / INDEX_FILE, faiss.serialize_index(self.index).tobytes())
        save_npy(directory / LABELS_FILE, self.labels)
        meta = {
            "factory": self.factory,
            "search_params": self.search_params,
            "dim": self.dim,
            "size": len(self),
            "metric": "inner_product on L2-normalised vectors; distance = 1 - cosine",
            "class_names": self.class_names,
            "ids": self.ids,
            "paths": self.paths,
        }
        atomic_write_json(directory / META_FILE, meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Gallery:
        """Load a gallery written by :meth:`save`."""
        directory = Path(directory)
        missing = [name for name in (INDEX_FILE, LABELS_FILE, META_FILE) if not (directory / name).is_file()]
        if missing:
            raise KennerError(f"{directory} holds no saved gallery (missing {', '.join(missing)})")
        index = faiss.deserialize_index(np.fromfile(directory / INDEX_FILE, dtype=np.uint8))
        labels = np.load(directory / LABELS_FILE)
        meta = read_json(directory / META_FILE)
        return cls(
            index,
            labels,
            class_names=meta["class_names"],
            ids=meta["ids"],
            paths=meta["paths"],
            factory=meta["factory"],
            search_params=meta["search_params"],
        )


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as a ``.npy`` file atomically."""
    buffer = BytesIO()
    np.save(buffer, array)
    return atomic_write_bytes(path, buffer.getvalue())
