"""Combining per-view embeddings: modes, coin aliases, single-view identity, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from kenner.encoders.views import available_modes, combine_views, output_dim, resolve_mode
from kenner.errors import KennerError


@pytest.fixture
def coin() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"obverse": rng.normal(size=(4, 3)), "reverse": rng.normal(size=(4, 3))}


def test_view_name_and_coin_aliases(coin) -> None:
    np.testing.assert_allclose(combine_views(coin, "reverse"), coin["reverse"], rtol=1e-6)
    np.testing.assert_allclose(combine_views(coin, "obv"), coin["obverse"], rtol=1e-6)
    np.testing.assert_allclose(combine_views(coin, "rev"), coin["reverse"], rtol=1e-6)


@pytest.mark.parametrize("mode", ["avg", "both_avg"])
def test_avg_is_the_mean(coin, mode: str) -> None:
    out = combine_views(coin, mode)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out, (coin["obverse"] + coin["reverse"]) / 2, rtol=1e-5)


@pytest.mark.parametrize("mode", ["concat", "both_concat"])
def test_concat_keeps_dict_order(coin, mode: str) -> None:
    out = combine_views(coin, mode)
    assert out.shape == (4, output_dim(3, 2, mode)) == (4, 6)
    np.testing.assert_allclose(out[:, :3], coin["obverse"], rtol=1e-6)
    flipped = combine_views({"reverse": coin["reverse"], "obverse": coin["obverse"]}, mode)
    np.testing.assert_allclose(flipped[:, :3], coin["reverse"], rtol=1e-6)


@pytest.mark.parametrize("mode", ["avg", "concat", "both_concat", "image"])
def test_single_view_identity(mode: str) -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(combine_views({"image": matrix}, mode), matrix)
    assert output_dim(3, 1, mode) == 3


def test_unknown_mode_lists_views_and_modes(coin) -> None:
    with pytest.raises(KennerError, match=r"'side'; views: obverse, reverse; modes: .*avg, concat"):
        combine_views(coin, "side")
    with pytest.raises(KennerError, match="'obv'"):
        combine_views({"image": np.zeros((2, 3))}, "obv")
    assert "obv" in available_modes(["obverse", "reverse"])
    assert "obv" not in available_modes(["image"])


def test_shape_errors(coin) -> None:
    with pytest.raises(KennerError, match="same number of rows"):
        combine_views({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))}, "concat")
    with pytest.raises(KennerError, match="one dimension"):
        combine_views({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))}, "avg")
    with pytest.raises(KennerError, match="ambiguous"):
        combine_views({"obv1": np.zeros((2, 3)), "obv2": np.zeros((2, 3))}, "obv")
    with pytest.raises(KennerError, match="no views"):
        combine_views({}, "avg")


def test_resolve_mode_gives_the_canonical_mode() -> None:
    views = ["obverse", "reverse"]
    assert [resolve_mode(views, m) for m in ("obv", "rev", "both_avg", "both_concat", "reverse", "avg")] == [
        "obverse",
        "reverse",
        "avg",
        "concat",
        "reverse",
        "avg",
    ]
    with pytest.raises(KennerError, match="unknown view mode 'edge'"):
        resolve_mode(views, "edge")
