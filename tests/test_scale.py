"""Scale pieces that need no Ray: the ``--ray`` flag, the ``auto`` Faiss index, float16 reads of the store."""

from __future__ import annotations

import numpy as np
import pytest

import kenner.retrieval.index as index_module
from kenner.config.compose import compose_config
from kenner.config.tree import to_nested
from kenner.encoders.store import EmbeddingStore
from kenner.methods import METHODS
from kenner.retrieval.index import Gallery, pick_index
from kenner.runs.claim import differences


def test_ray_flag_alone_means_a_local_instance_and_does_not_change_what_the_run_is() -> None:
    import argparse

    from kenner.config.flags import add_config_flags

    parser = argparse.ArgumentParser()
    add_config_flags(parser, ("compute",))
    assert parser.parse_args(["--ray"]).ray == "local"
    assert parser.parse_args(["--ray", "ray://head:10001"]).ray == "ray://head:10001"
    assert parser.parse_args([]).ray is None
    plain = compose_config(dict(METHODS.items()), method="linear", explicit={})
    on_ray = compose_config(
        dict(METHODS.items()), method="linear", explicit=to_nested({"ray": "auto", "ray_workers": 3})
    )
    assert on_ray.compute.ray == "auto" and on_ray.compute.ray_workers == 3
    assert (
        differences(plain.to_dict(METHODS.get("linear").sections), on_ray.to_dict(METHODS.get("linear").sections)) == []
    )


def test_auto_index_is_exact_for_small_galleries_and_an_inverted_file_above(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    labels = np.arange(300) % 5
    small = Gallery.build(vectors, labels, factory="auto")
    assert small.factory == "Flat" and small.search_params == ""
    monkeypatch.setattr(index_module, "EXACT_UP_TO", 100)
    assert pick_index(300) == ("IVF16,Flat", "nprobe=2")
    large = Gallery.build(vectors, labels, factory="auto")
    assert large.factory == "IVF16,Flat" and large.search_params == "nprobe=2"
    assert (large.search(vectors, k=1).indices[:, 0] == np.arange(300)).mean() > 0.9
    chosen = Gallery.build(vectors, labels, factory="auto", search_params="nprobe=16")
    assert chosen.search_params == "nprobe=16"  # given parameters win
    assert (chosen.search(vectors, k=1).indices[:, 0] == np.arange(300)).all()  # all 16 lists: exact


def test_store_reads_float16_without_a_float32_copy(tmp_path) -> None:
    store = EmbeddingStore(tmp_path, "fp", 4)
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    store.write(["a", "b", "c"], vectors)
    half = store.get(["c", "a"], dtype="float16")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, vectors[[2, 0]].astype(np.float16))
    np.testing.assert_array_equal(store.get(["c", "a"]), half.astype(np.float32))
