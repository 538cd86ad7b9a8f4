"""Extraction on a Ray cluster: the images missing from the store are decoded and preprocessed in Ray tasks and
embedded in ``map_batches`` by a pool of encoder actors, each writing its results into the SAME store (same keys,
same fingerprint, shards written by :class:`kenner.encoders.extract.ShardWriter`), so a store filled on a cluster
serves local runs and back.

The actors write the shards themselves, so the cache folder (like the images) must be on storage every node
reads and writes (NFS, a shared disk). Every batch is a shard on disk when its actor finishes it: an interrupted
job resumes from what the store holds, as the local path does.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kenner.encoders.base import Encoder, Preprocessing
from kenner.encoders.extract import ShardWriter, prepare_batch
from kenner.encoders.store import EmbeddingStore
from kenner.errors import KennerError
from kenner.progress import progress_bar

_REMOTE_ERROR = re.compile(r"^kenner\.errors\.\w+: (.+)$", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOCAL = "local"  # --ray without an address: start (or join) a Ray instance on this machine
ROWS_PER_TASK = 128  # images per decode task and per actor call: one shard each
DECODE_CPUS = 0.25  # decoding waits on reads: several decode tasks per CPU (and unlike the actors' share, this keeps
# Ray from fusing decoding into the actors, so decoding runs in tasks on the CPUs the actors leave free)


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``local``: a Ray instance on this machine), unless already joined."""
    try:
        import ray
    except ImportError as error:  # pragma: no cover - ray is a dependency
        raise KennerError("--ray needs Ray: pip install 'ray[data]'") from error
    if ray.is_initialized():
        return
    try:
        ray.init(
            address=None if address == LOCAL else address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise KennerError(f"cannot join the Ray cluster at {address!r} ({error})") from error


def actor_pool(size: int) -> dict[str, Any]:
    """``map_batches`` arguments for a pool of ``size`` actors across Ray versions: ``compute=ActorPoolStrategy``
    before 2.9 and again from 2.51 (which deprecates ``concurrency=``), ``concurrency=`` in between."""
    import ray
    import ray.data

    version = tuple(int(part) for part in ray.__version__.split(".")[:2] if part.isdigit())
    takes_concurrency = "concurrency" in inspect.signature(ray.data.Dataset.map_batches).parameters
    if takes_concurrency and version < (2, 51):
        return {"concurrency": size}  # pragma: no cover - Ray 2.9 to 2.50
    return {"compute": ray.data.ActorPoolStrategy(size=size)}


class RayFill:
    """Computes missing embeddings on Ray (a ``fill`` of :func:`kenner.encoders.extract.extract_embeddings`).

    ``build_encoder`` (picklable, called with the device) builds the encoder in each actor; ``workers`` actors
    (default: one per GPU, else the cluster's CPUs less one, which the decode tasks use); ``rows_per_task`` images per
    decode task and per shard.
    """

    def __init__(
        self,
        address: str,
        build_encoder: Callable[[str], Encoder],
        preprocessing: Preprocessing,
        store: EmbeddingStore,
        *,
        workers: int | None = None,
        batch_size: int = 64,
        background: tuple[int, int, int] = (255, 255, 255),
        progress: bool = True,
        rows_per_task: int = ROWS_PER_TASK,
    ) -> None:
        self.address = address
        self.rows_per_task = rows_per_task
        self.build_encoder = build_encoder
        self.preprocessing = preprocessing
        self.store_args = (str(store.cache_root), store.fingerprint, store.dim, store.dtype)
        self.workers = workers
        self.batch_size = batch_size
        self.background = background
        self.progress = progress

    def __call__(self, paths: list[Path], keys: list[str]) -> None:
        connect(self.address)
        import ray
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.verbose_progress = False  # type: ignore[attr-defined]
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        workers = self.workers or (gpus if gpus else max(1, int(cpus) - 1))
        # Actors never take the CPUs two decode tasks need (else no image is ever read): 1 CPU each when they fit.
        share = round(min(1.0, max(DECODE_CPUS, (cpus - 2 * DECODE_CPUS) / workers)), 2)
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": share}
        items = [{"path": str(path), "key": key} for path, key in zip(paths, keys, strict=True)]
        dataset = (
            ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // self.rows_per_task)))
            .map_batches(
                _decode,
                fn_kwargs={"preprocessing": self.preprocessing, "background": self.background},
                batch_size=self.rows_per_task,
                batch_format="numpy",
                num_cpus=DECODE_CPUS,
            )
            .map_batches(
                _EmbedIntoStore,
                fn_constructor_args=(self.build_encoder, self.store_args, self.batch_size, bool(gpus)),
                batch_size=self.rows_per_task,
                batch_format="numpy",
                **per_actor,
                **actor_pool(workers),
            )
        )
        bar = progress_bar(
            total=len(items), desc=f"embedding on Ray ({workers} actors)", unit="img", show=self.progress
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(len(batch["key"]))
        except Exception as error:
            raise explain_ray_error(error) from error
        finally:
            bar.close()


def _decode(
    batch: dict[str, np.ndarray], preprocessing: Preprocessing, background: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """A Ray task: the images of ``batch['path']`` decoded and preprocessed as the local path does."""
    torch.set_num_threads(1)
    paths = [str(path) for path in batch["path"]]
    pixels = prepare_batch(paths, preprocessing.transform(), preprocessing.resize, background)
    return {"key": batch["key"], "pixels": pixels.numpy()}


class _EmbedIntoStore:
    """A Ray actor: embeds pixel batches with its own encoder and writes them into the store as shards."""

    def __init__(
        self, build_encoder: Callable[[str], Encoder], store_args: tuple[str, str, int, str], batch_size: int, gpu: bool
    ) -> None:
        if not gpu:
            torch.set_num_threads(1)  # one CPU per actor, as Ray schedules it
        self.encoder = build_encoder("cuda" if gpu else "cpu")
        root, fingerprint, dim, dtype = store_args
        if self.encoder.fingerprint != fingerprint:
            raise KennerError(
                f"the encoder on this Ray node has fingerprint {self.encoder.fingerprint}, not {fingerprint}: "
                "its weights or preprocessing differ from the driver's"
            )
        self.store = EmbeddingStore(root, fingerprint, dim, dtype, encoder_name=self.encoder.name)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys: Sequence[str] = [str(key) for key in batch["key"]]
        with ShardWriter(self.store, first=len(keys), shard_size=len(keys)) as writer, torch.inference_mode():
            for start in range(0, len(keys), self.batch_size):
                pixels = torch.from_numpy(np.array(batch["pixels"][start : start + self.batch_size]))  # a writable copy
                vectors = self.encoder.embed(pixels).cpu().numpy()
                writer.add(keys[start : start + len(vectors)], vectors)
        return {"key": np.asarray(keys)}


def explain_ray_error(error: BaseException) -> KennerError:
    """The KennerError a Ray task raised (a bad image, a wrong fingerprint) as one line, else one saying what failed.

    Ray hands the driver the remote traceback as text, so the error is found there by its class name.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KennerError):
            return KennerError(str(current))
        found = _REMOTE_ERROR.search(str(current))
        if found:
            return KennerError(found.group(1).strip())
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    text = _ANSI.sub("", str(error)).strip()
    return KennerError(f"the Ray extraction failed: {text.splitlines()[-1] if text else type(error).__name__}")
