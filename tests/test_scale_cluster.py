"""A simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``, 3 nodes of 1 CPU): encoder actors on
different nodes fill one embedding store, each writing its own shards, and the store holds what a local
extraction computes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from kenner.encoders.embedder import build_encoder
from kenner.encoders.extract import extract_embeddings, hash_images
from kenner.encoders.ray_extract import RayFill
from kenner.encoders.store import EmbeddingStore
from test_scale_ray import embedder, real_images, shard_pids

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Three Ray nodes of one CPU each on this machine (any local instance of the session is stopped first)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False, configure_logging=False)
    yield nodes.address
    ray.shutdown()
    nodes.shutdown()


def test_actors_on_several_nodes_fill_one_store(tmp_path: Path, cluster: str) -> None:
    paths = real_images(tmp_path / "images", 8)
    reference = embedder(tmp_path / "local").embed(paths)
    local = embedder(tmp_path / "cache")
    encoder = local.encoder
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    fill = RayFill(
        cluster,
        partial(build_encoder, local.encoder_settings),
        encoder.preprocessing,
        store,
        workers=2,
        progress=False,
        rows_per_task=2,
    )
    assert len(ray.nodes()) == 3
    extract_embeddings(encoder, paths[:4], store, fill=fill, progress=False)  # a first job fills part of it
    got = extract_embeddings(encoder, paths, store, fill=fill, progress=False)  # a second one the rest
    writers = shard_pids(store)
    # actors of 1 CPU on nodes of 1 CPU: several worker processes wrote into the one store, never this one (how
    # the blocks of one job spread over its actors depends on the machine's load, so two jobs make it certain)
    assert len(set(writers.values())) >= 2 and os.getpid() not in writers.values()
    written = []
    for name in writers:
        with np.load(store.shard_dir / name) as shard:
            written += [key.decode() for key in shard["keys"]]
    assert sorted(written) == sorted(set(hash_images(paths, progress=False)))  # each image once
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-3)
