"""Loss primitives: class weights, logit adjustment, balanced softmax, center loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kenner.losses.center import CenterLoss
from kenner.losses.class_weights import effective_number_weights, inverse_frequency_weights
from kenner.losses.logit_adjustment import (
    adjust_logits,
    balanced_softmax_loss,
    log_prior,
    logit_adjusted_loss,
)


def test_inverse_frequency_weights_closed_form():
    counts = np.array([100, 10, 0, 1])
    w = inverse_frequency_weights(counts)
    raw = np.array([1 / 100, 1 / 10, 1 / 1])
    np.testing.assert_allclose(w[[0, 1, 3]], raw / raw.mean())
    assert w[2] == 0
    assert w[[0, 1, 3]].mean() == pytest.approx(1.0)


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_effective_number_weights_closed_form(beta):
    counts = np.array([500, 50, 5, 0, 1])
    w = effective_number_weights(counts, beta=beta)
    raw = np.array([(1 - beta) / (1 - beta**n) for n in (500, 50, 5, 1)])
    np.testing.assert_allclose(w[[0, 1, 2, 4]], raw / raw.mean(), rtol=1e-10)
    assert w[3] == 0
    assert np.all(np.diff(w[[0, 1, 2, 4]]) > 0)  # rarer classes weigh more


def test_effective_number_limits():
    counts = np.array([40, 4, 2])
    np.testing.assert_allclose(effective_number_weights(counts, beta=0.0), np.ones(3))
    np.testing.assert_allclose(
        effective_number_weights(counts, beta=1 - 1e-9), inverse_frequency_weights(counts), rtol=1e-6
    )
    with pytest.raises(ValueError):
        effective_number_weights(counts, beta=1.0)


def test_log_prior_finite_for_absent_class():
    lp = log_prior(np.array([6, 3, 0, 1]))
    assert torch.isfinite(lp).all()
    np.testing.assert_allclose(lp.exp().numpy(), np.array([6, 3, 1, 1]) / 11, rtol=1e-6)


def _naive_adjusted_loss(logits, y, lp, tau, smoothing=0.0):
    total = 0.0
    n_classes = logits.shape[1]
    for i in range(logits.shape[0]):
        z = [float(logits[i, c]) + tau * float(lp[c]) for c in range(n_classes)]
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_norm for v in z]
        target = [smoothing / n_classes + (1 - smoothing) * (c == int(y[i])) for c in range(n_classes)]
        total -= sum(t * lp_c for t, lp_c in zip(target, log_p, strict=True))
    return total / logits.shape[0]


@pytest.mark.parametrize(("tau", "smoothing"), [(0.0, 0.0), (1.0, 0.0), (1.5, 0.1)])
def test_logit_adjusted_loss_matches_naive_loop(tau, smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    lp = log_prior(np.array([10, 5, 2, 1])).double()
    got = logit_adjusted_loss(logits, y, lp, tau, label_smoothing=smoothing)
    assert float(got) == pytest.approx(_naive_adjusted_loss(logits, y, lp, tau, smoothing), rel=1e-9)


def test_balanced_softmax_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 0])
    lp = log_prior(np.array([30, 3, 1])).double()
    got = balanced_softmax_loss(logits, y, lp)
    assert float(got) == pytest.approx(_naive_adjusted_loss(logits, y, lp, 1.0), rel=1e-9)


def test_logit_adjusted_loss_accepts_soft_labels():
    logits = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1])
    lp = log_prior(np.array([5, 2, 1])).double()
    hard = logit_adjusted_loss(logits, y, lp, 1.0)
    soft = logit_adjusted_loss(logits, F.one_hot(y, 3).double(), lp, 1.0)
    assert float(hard) == pytest.approx(float(soft))


def _imbalanced_toy(n_major=400, n_minor=20, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-0.5, 1.0, n_major), rng.normal(0.5, 1.0, n_minor)])
    y = np.concatenate([np.zeros(n_major, int), np.ones(n_minor, int)])
    return torch.tensor(x, dtype=torch.float32)[:, None], torch.tensor(y)


def _fit_logistic(x, y, loss_fn, steps=300):
    torch.manual_seed(0)
    layer = torch.nn.Linear(1, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(layer(x), y).backward()
        opt.step()
    return layer


def test_adjustment_shifts_predictions_towards_rare_class():
    x, y = _imbalanced_toy()
    lp = log_prior(np.bincount(y.numpy()))
    plain = _fit_logistic(x, y, F.cross_entropy)
    with torch.no_grad():
        plain_logits = plain(x)
    n_rare_plain = int((plain_logits.argmax(1) == 1).sum())
    n_rare_post = int((adjust_logits(plain_logits, lp, 1.0).argmax(1) == 1).sum())
    adjusted = _fit_logistic(x, y, lambda z, t: logit_adjusted_loss(z, t, lp, 1.0))
    with torch.no_grad():
        n_rare_trained = int((adjusted(x).argmax(1) == 1).sum())
    assert n_rare_post > n_rare_plain
    assert n_rare_trained > n_rare_plain
    # the rare class recall rises from near zero
    rare = y == 1
    assert float((adjust_logits(plain_logits, lp, 1.0).argmax(1)[rare] == 1).float().mean()) > 0.5


def test_center_loss_matches_naive_loop_and_trains():
    torch.manual_seed(0)
    loss = CenterLoss(3, 4)
    with torch.no_grad():
        loss.centers.copy_(torch.randn(3, 4))
    x = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    naive = sum(0.5 * float(((x[i] - loss.centers.detach()[y[i]]) ** 2).sum()) for i in range(6)) / 6
    assert loss(x, y).item() == pytest.approx(naive, rel=1e-5)
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    for c in range(3):
        torch.testing.assert_close(loss.centers[c].detach(), x[y == c].mean(0), atol=1e-4, rtol=0)
