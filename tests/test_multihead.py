"""Batched multi-head training: its pieces against PyTorch/scikit-learn, and equivalence with separate
EmbeddingClassifier fits; plus the embedding-space augmentations it uses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import betaincinv
from sklearn.metrics import f1_score

from kenner.errors import KennerError
from kenner.heads.classifier import EmbeddingClassifier
from kenner.heads.config import HeadConfig
from kenner.train.feature_aug import FeatureAugment, mixup
from kenner.train.multihead import (
    StackedAdamW,
    batch_key,
    fit_multihead,
    stacked_cross_entropy,
    stacked_macro_f1,
)


def _blobs(n=160, dim=12, n_classes=4, seed=0):
    """Gaussian class blobs with a long tail: class c has weight 2^-c."""
    rng = np.random.default_rng(seed)
    p = 0.5 ** np.arange(n_classes)
    y = rng.choice(n_classes, size=n, p=p / p.sum())
    y[:n_classes] = np.arange(n_classes)
    centres = rng.normal(0, 1.5, (n_classes, dim))
    return (centres[y] + rng.normal(0, 1.0, (n, dim)) + 3.0).astype(np.float32), y.astype(np.int64)


@pytest.mark.parametrize("soft", [False, True])
def test_stacked_cross_entropy_matches_torch_per_head(soft):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 10, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (10,), generator=g)
    target = torch.softmax(torch.randn(10, 5, generator=g, dtype=torch.float64), 1) if soft else y
    smoothing = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    weight = torch.stack([torch.ones(5), torch.rand(5, generator=g) + 0.5, torch.rand(5, generator=g)])
    weight = weight.double()
    got = stacked_cross_entropy(logits, target, smoothing, weight)
    for h in range(3):
        want = F.cross_entropy(logits[h], target, weight=weight[h], label_smoothing=float(smoothing[h]))
        torch.testing.assert_close(got[h], want)


def test_stacked_macro_f1_matches_sklearn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 6, 50)
    y_pred = np.stack([rng.integers(0, 6, 50), y_true, np.minimum(y_true, 2), np.zeros(50, int)])
    got = stacked_macro_f1(torch.as_tensor(y_true), torch.as_tensor(y_pred), 7).numpy()
    want = [f1_score(y_true, row, average="macro", zero_division=0) for row in y_pred]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_stacked_adamw_matches_torch_adamw_per_head():
    g = torch.Generator().manual_seed(2)
    start = torch.randn(3, 4, 2, generator=g)
    lrs, wds = [1e-2, 3e-3, 1e-1], [0.0, 0.1, 0.01]
    stacked = torch.nn.Parameter(start.clone())
    optimizer = StackedAdamW([stacked], torch.tensor(lrs), torch.tensor(wds))
    singles = [torch.nn.Parameter(start[h].clone()) for h in range(3)]
    torch_opts = [torch.optim.AdamW([p], lr=lr, weight_decay=wd)
                  for p, lr, wd in zip(singles, lrs, wds, strict=True)]
    for _ in range(20):
        grad = torch.randn(3, 4, 2, generator=g)
        stacked.grad = grad.clone()
        optimizer.step()
        for h in range(3):
            singles[h].grad = grad[h].clone()
            torch_opts[h].step()
    for h in range(3):
        torch.testing.assert_close(stacked[h].detach(), singles[h].detach(), rtol=1e-5, atol=1e-6)


def _separate_fit(config, X, y, X_val, y_val, n_classes):
    return EmbeddingClassifier(config).fit(X, y, X_val=X_val, y_val=y_val, n_classes=n_classes)


LINEAR = HeadConfig(epochs=12, batch_size=32, early_stopping_patience=3, device="cpu")
MLP = dataclasses.replace(
    LINEAR, head_type="mlp", hidden_sizes=(16, 8), gelu_ln=True, standardize="standardize", mixup=0.2,
    feature_noise=0.1, feature_scale=0.1, logit_adjust="both", lr_schedule="cosine",
)


@pytest.mark.parametrize("base", [LINEAR, MLP], ids=["linear", "mlp"])
def test_batched_heads_equal_separate_fits(base):
    torch.set_num_threads(1)
    X, y = _blobs()
    X_val, y_val = _blobs(n=60, seed=1)
    configs = [
        dataclasses.replace(base, lr=3e-3),
        dataclasses.replace(base, lr=2e-2, weight_decay=0.05, label_smoothing=0.1),
        dataclasses.replace(base, lr=1e-2, class_weight="effective", effective_beta=0.99, calibrate=True),
    ]
    fit = fit_multihead(X, y, configs, n_classes=4, X_val=X_val, y_val=y_val)
    proba = fit.predict_proba(X_val)
    assert proba.shape == (3, 60, 4)
    for h, config in enumerate(configs):
        single = _separate_fit(config, X, y, X_val, y_val, n_classes=4)
        assert fit.best_epochs[h] == single.best_epoch_
        assert fit.temperatures[h] == pytest.approx(single.temperature_, rel=1e-4)
        np.testing.assert_allclose(proba[h], single.predict_proba(X_val), atol=2e-5)
        np.testing.assert_allclose(fit.net.weights[-1][h].detach().numpy(),
                                   single.model_.classifier.weight.detach().numpy().T, atol=2e-5)
    assert np.abs(proba[0] - proba[1]).max() > 0.05  # the heads really differ
    assert len(fit.history[-1]["heads"]) < len(configs)  # early-stopped heads left the batch


def test_without_validation_heads_run_every_epoch():
    X, y = _blobs(n=60)
    configs = [dataclasses.replace(LINEAR, epochs=3, lr=lr) for lr in (1e-3, 1e-2)]
    fit = fit_multihead(X, y, configs, n_classes=4)
    assert fit.best_epochs == [3, 3] and len(fit.history) == 3
    single = _separate_fit(configs[1], X, y, None, None, n_classes=4)
    np.testing.assert_allclose(fit.predict_proba(X)[1], single.predict_proba(X), atol=2e-5)


def test_batch_key_groups_only_optimisation_differences():
    base = HeadConfig()
    assert batch_key(base) == batch_key(dataclasses.replace(base, lr=0.1, weight_decay=0.0, calibrate=True,
                                                            label_smoothing=0.2, class_weight="inverse"))
    assert batch_key(base) != batch_key(dataclasses.replace(base, seed=1))
    assert batch_key(base) != batch_key(dataclasses.replace(base, mixup=0.1))
    assert batch_key(base) == batch_key(dataclasses.replace(base, gelu_ln=True))  # unused by linear
    for knob in ({"hardmine_epochs": 2}, {"dropout": 0.1}, {"head_type": "arcface"}, {"optimizer": "sgd"},
                 {"head_type": "mlp", "center_loss_weight": 0.1}):
        assert batch_key(dataclasses.replace(base, **knob)) is None
    X, y = _blobs(n=40)
    with pytest.raises(KennerError, match="cannot be batched"):
        fit_multihead(X, y, [base, dataclasses.replace(base, seed=1)], n_classes=4)


# --- feature augmentation -------------------------------------------------------------------------


def test_feature_augment_identity_when_off_or_eval():
    x = torch.randn(8, 5)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(FeatureAugment()(x, g), x)
    assert torch.equal(g.get_state(), state)  # no random numbers drawn
    aug = FeatureAugment(noise_std=1.0, scale_std=1.0, p=1.0).eval()
    assert torch.equal(aug(x, g), x)


def test_feature_augment_noise_and_scale_statistics():
    x = torch.ones(4000, 16)
    g = torch.Generator().manual_seed(0)
    noisy = FeatureAugment(noise_std=0.5, p=1.0)(x, g)
    assert float((noisy - x).std()) == pytest.approx(0.5, rel=0.05)
    scaled = FeatureAugment(scale_std=0.2, p=1.0)(2 * x, g)
    assert float((scaled / 2).std()) == pytest.approx(0.2, rel=0.05)  # factor 1 + 0.2 * eps
    assert float((scaled / 2).mean()) == pytest.approx(1.0, abs=0.01)
    half = FeatureAugment(noise_std=0.5, p=0.5)(x, g)
    changed = (half != x).any(dim=1).float().mean()
    assert float(changed) == pytest.approx(0.5, abs=0.05)
    assert torch.equal((half != x).any(dim=1), (half != x).all(dim=1))  # whole samples, not channels


def test_mixup_mixes_inputs_and_labels_consistently():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 4)
    y = torch.nn.functional.one_hot(torch.arange(32) % 4, 4).float()
    xm, ym = mixup(x, y, 0.4, g)
    torch.testing.assert_close(ym.sum(1), torch.ones(32))
    # every mixed row is lam * x_i + (1 - lam) * x_perm(i) with the same lam as its labels
    g = torch.Generator().manual_seed(3)
    lam = float(betaincinv(0.4, 0.4, torch.rand(1, generator=g).item()))
    perm = torch.randperm(32, generator=g)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(ym, lam * y + (1 - lam) * y[perm])
    assert mixup(x, y, 0.0, g) == (x, y)


def test_mixup_lambda_follows_beta_distribution():
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[1.0], [0.0]])
    y = torch.eye(2)
    lams = []
    for _ in range(6000):
        _, ym = mixup(x, y, 0.3, g)
        if ym[0, 0] < 1:  # rows swapped: row 0 is lam * e0 + (1 - lam) * e1
            lams.append(float(ym[0, 0]))
    lams = np.asarray(lams)
    assert len(lams) > 2000
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(0.25 / (2 * 0.3 + 1), rel=0.1)  # Beta(a, a) variance
