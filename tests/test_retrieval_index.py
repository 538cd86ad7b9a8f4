"""Faiss gallery: exact search matches brute force, approximate factories work, save/load round-trips."""

import numpy as np
import pytest

from kenner.errors import KennerError
from kenner.retrieval.index import Gallery, l2_normalize


def _data(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 5, size=n)


def test_exact_search_matches_numpy_brute_force():
    vectors, labels = _data()
    queries = np.random.default_rng(1).normal(size=(30, 16)).astype(np.float32)
    gallery = Gallery.build(vectors, labels)
    found = gallery.search(queries, k=7)
    cos = l2_normalize(queries) @ l2_normalize(vectors).T
    expected = np.argsort(-cos, axis=1)[:, :7]
    np.testing.assert_array_equal(found.indices, expected)
    np.testing.assert_allclose(found.similarities, np.take_along_axis(cos, expected, axis=1), atol=1e-5)
    np.testing.assert_allclose(found.distances, 1 - found.similarities)
    np.testing.assert_array_equal(found.labels, labels[expected])


def test_query_identical_to_a_gallery_item_has_distance_zero():
    vectors, labels = _data()
    found = Gallery.build(vectors, labels).search(vectors[3] * 5.0, k=1)
    assert found.indices[0, 0] == 3
    assert found.distances[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_more_neighbours_than_gallery_items_are_marked_empty():
    vectors, labels = _data(n=4)
    found = Gallery.build(vectors, labels).search(vectors[:2], k=6)
    assert (found.indices[:, 4:] == -1).all()
    assert (found.labels[:, 4:] == -1).all()
    assert np.isinf(found.distances[:, 4:]).all()


@pytest.mark.parametrize(("factory", "params"), [("IVF4,Flat", "nprobe=4"), ("HNSW16", "efSearch=64")])
def test_index_factory_strings_with_search_params(factory, params, tmp_path):
    vectors, labels = _data(n=400)
    gallery = Gallery.build(vectors, labels, factory=factory, search_params=params)
    exact = Gallery.build(vectors, labels).search(vectors[:20], k=1)
    approx = gallery.search(vectors[:20], k=1)
    # nprobe = nlist makes IVF exhaustive; HNSW with a wide beam finds each item itself.
    np.testing.assert_array_equal(approx.indices, exact.indices)
    gallery.save(tmp_path / "g")
    loaded = Gallery.load(tmp_path / "g")
    assert loaded.factory == factory and loaded.search_params == params
    np.testing.assert_array_equal(loaded.search(vectors[:20], k=1).indices, exact.indices)


def test_save_load_round_trip_keeps_labels_names_ids_paths(tmp_path):
    vectors, labels = _data(n=50)
    ids = [f"s{i}" for i in range(50)]
    paths = [f"/img/{i}.jpg" for i in range(50)]
    gallery = Gallery.build(vectors, labels, class_names=list("abcde"), ids=ids, paths=paths)
    gallery.save(tmp_path / "gallery")
    loaded = Gallery.load(tmp_path / "gallery")
    assert len(loaded) == 50 and loaded.dim == 16
    assert loaded.class_names == list("abcde") and loaded.ids == ids and loaded.paths == paths
    before, after = gallery.search(vectors[:5], k=3), loaded.search(vectors[:5], k=3)
    np.testing.assert_array_equal(before.indices, after.indices)
    np.testing.assert_array_equal(before.labels, after.labels)


def test_user_errors_are_kenner_errors(tmp_path):
    vectors, labels = _data(n=20)
    with pytest.raises(KennerError, match="factory"):
        Gallery.build(vectors, labels, factory="NotAnIndex")
    with pytest.raises(KennerError, match="train"):
        Gallery.build(vectors, labels, factory="IVF1024,Flat")
    with pytest.raises(KennerError, match="labels"):
        Gallery.build(vectors, labels[:5])
    with pytest.raises(KennerError, match="dimension"):
        Gallery.build(vectors, labels).search(np.ones((1, 3), np.float32))
    with pytest.raises(KennerError, match="no saved gallery"):
        Gallery.load(tmp_path)


def test_leave_one_out_search_drops_only_the_query_itself():
    vectors, labels = _data(n=30)
    gallery = Gallery.build(vectors, labels)
    plain = gallery.search(vectors, k=4)
    assert (plain.indices[:, 0] == np.arange(30)).all()
    exclude = np.arange(30)
    exclude[5] = -1  # query 5 keeps itself
    loo = gallery.search(vectors, k=3, exclude=exclude)
    assert loo.indices.shape == (30, 3)
    np.testing.assert_array_equal(loo.indices[5], plain.indices[5, :3])
    others = np.delete(np.arange(30), 5)
    np.testing.assert_array_equal(loo.indices[others], plain.indices[others, 1:])
    assert not (loo.indices[others] == others[:, None]).any()
