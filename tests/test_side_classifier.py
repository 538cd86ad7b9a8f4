"""Side classifier: pair/single datasets, mask-weighted token pooling, learning the order of two views."""

import numpy as np
import pytest
import torch

from kenner.errors import KennerError
from kenner.heads import create_head
from kenner.heads.side import mask_weighted_pool, side_class_names, side_dataset


def _two_views(n, d=16, seed=0):
    """Per-coin features; the obverse is shifted one way along a fixed direction, the reverse the other."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).normal(size=d).astype(np.float32)
    base = rng.normal(scale=1.0, size=(n, d)).astype(np.float32)
    obverse = base + 0.8 * direction + rng.normal(scale=0.3, size=(n, d)).astype(np.float32)
    reverse = base - 0.8 * direction + rng.normal(scale=0.3, size=(n, d)).astype(np.float32)
    return obverse, reverse


def test_pair_dataset_swaps_views_and_keeps_the_source_sample():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = -a
    X, y, source = side_dataset(a, b, "pair")
    assert X.shape == (6, 4) and y.tolist() == [0, 0, 0, 1, 1, 1] and source.tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(X[1], np.r_[a[1], b[1]])
    np.testing.assert_array_equal(X[4], np.r_[b[1], a[1]])
    X, y, source = side_dataset(a, b, "single")
    assert X.shape == (6, 2) and y.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(X[3], b[0])
    assert side_class_names(["obverse", "reverse"]) == ["obverse|reverse", "reverse|obverse"]
    assert side_class_names(["obverse", "reverse"], "single") == ["obverse", "reverse"]


@pytest.mark.parametrize("task", ["pair", "single"])
def test_side_classifier_learns_the_systematic_difference(task):
    torch.set_num_threads(1)
    X_train, y_train, _ = side_dataset(*_two_views(150, seed=0), task)
    X_test, y_test, _ = side_dataset(*_two_views(50, seed=1), task)
    head = create_head("linear", epochs=60, lr=1e-2, device="cpu").fit(X_train, y_train, n_classes=2)
    accuracy = (head.predict(X_test) == y_test).mean()
    assert accuracy > 0.95
    # The task is not solvable by chance: with shuffled labels the same head stays near 50 %.
    shuffled = np.random.default_rng(2).permutation(y_train)
    control = create_head("linear", epochs=60, lr=1e-2, device="cpu").fit(X_train, shuffled, n_classes=2)
    assert (control.predict(X_test) == y_test).mean() < 0.75


def test_mask_weighted_pool_follows_high_norm_tokens():
    torch.manual_seed(0)
    background = torch.randn(2, 12, 8) * 0.1
    foreground = torch.tensor([1.0] * 8) * 3
    tokens = background.clone()
    tokens[:, :4] += foreground  # 4 foreground tokens with large norms
    pooled = mask_weighted_pool(tokens, temperature=0.3)
    fg_mean = tokens[:, :4].mean(dim=1)
    plain_mean = tokens.mean(dim=1)
    assert pooled.shape == (2, 8)
    error = torch.linalg.norm(pooled - fg_mean, dim=1)
    assert error.max() < 0.1 * torch.linalg.norm(plain_mean - fg_mean, dim=1).min()
    # A very large temperature gives the plain mean; equal norms give the plain mean at any temperature.
    torch.testing.assert_close(mask_weighted_pool(tokens, temperature=1e6), plain_mean, atol=1e-4, rtol=0)
    equal = torch.nn.functional.normalize(torch.randn(1, 5, 8), dim=-1)
    torch.testing.assert_close(mask_weighted_pool(equal), equal.mean(dim=1), atol=1e-4, rtol=0)


def test_user_errors_name_the_problem():
    with pytest.raises(KennerError, match="two-view"):
        side_class_names(["image"])
    with pytest.raises(KennerError, match="same shape"):
        side_dataset(np.ones((3, 2)), np.ones((2, 2)))
    with pytest.raises(KennerError, match="task"):
        side_dataset(np.ones((3, 2)), np.ones((3, 2)), "triple")
    with pytest.raises(KennerError, match=r"\[B, T, D\]"):
        mask_weighted_pool(torch.ones(3, 4))
