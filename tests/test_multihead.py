"""Batched multi-head training: equivalence with separate EmbeddingClassifier fits, grouping, macro-F1; plus
the embedding-space augmentations it shares with a single head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import betaincinv
from sklearn.metrics import f1_score

from kenner.errors import KennerError
from kenner.evaluate.metrics import macro_f1_rows
from kenner.heads.classifier import EmbeddingClassifier
from kenner.heads.feature_aug import FeatureAugment, mixup
from kenner.heads.multihead import batch_key, fit_multihead
from kenner.loop.history import check_history

CLASSES = np.array(["a", "b", "c", "d"])


def _blobs(n=160, dim=12, n_classes=4, seed=0):
    """Gaussian class blobs with a long tail: class c has weight 2^-c; string labels."""
    rng = np.random.default_rng(seed)
    p = 0.5 ** np.arange(n_classes)
    y = rng.choice(n_classes, size=n, p=p / p.sum())
    y[:n_classes] = np.arange(n_classes)
    centres = rng.normal(0, 1.5, (n_classes, dim))
    return (centres[y] + rng.normal(0, 1.0, (n, dim)) + 3.0).astype(np.float32), CLASSES[y]


def test_macro_f1_rows_matches_sklearn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 6, 50)
    y_pred = np.stack([rng.integers(0, 6, 50), y_true, np.minimum(y_true, 2), np.zeros(50, int)])
    want = [f1_score(y_true, row, average="macro", zero_division=0) for row in y_pred]
    np.testing.assert_allclose(macro_f1_rows(y_true, y_pred, 7), want, rtol=1e-12)


LINEAR = dict(epochs=12, batch_size=32, patience=3, device="cpu", calibrate=False)
MLP = dict(
    LINEAR,
    head_type="mlp",
    hidden_sizes=(16, 8),
    gelu_ln=True,
    standardize="standardize",
    mixup=0.2,
    feature_noise=0.1,
    feature_scale=0.1,
    logit_adjust="both",
    scheduler="cosine",
)
# How far a batched head may be from its separate fit. Both run the same float32 arithmetic except the
# order of summation in a batched matmul: linear heads agree to ~1e-7, while the mlp heads here (mixup,
# feature noise, lr 2e-2) amplify rounding: a separate fit on inputs moved by one ulp differs by ~3e-5.
TOLERANCE = {"linear": 2e-6, "mlp": 1e-4}


@pytest.mark.parametrize("base", [LINEAR, MLP], ids=["linear", "mlp"])
def test_batched_heads_equal_separate_fits(base, request):
    torch.set_num_threads(1)
    X, y = _blobs()
    X_val, y_val = _blobs(n=60, seed=1)
    heads = [
        dict(base, lr=3e-3),
        dict(base, lr=2e-2, weight_decay=0.05, label_smoothing=0.1),
        dict(base, lr=1e-2, class_weight="effective", effective_beta=0.99, calibrate=True),
        dict(base, lr=3e-3, label_smoothing=0.1),  # shares an optimiser group with head 0
    ]
    fit = fit_multihead(X, y, heads, classes=CLASSES, X_val=X_val, y_val=y_val)
    proba = fit.predict_proba(X_val)
    assert proba.shape == (4, 60, 4)
    tolerance = TOLERANCE[request.node.callspec.id]
    for h, params in enumerate(heads):
        single = EmbeddingClassifier(**params).fit(X, y, X_val=X_val, y_val=y_val, classes=CLASSES)
        assert fit.best_epochs[h] == single.best_epoch_
        assert fit.temperatures[h] == pytest.approx(single.temperature_, rel=1e-3)
        np.testing.assert_allclose(proba[h], single.predict_proba(X_val), atol=tolerance)
        np.testing.assert_allclose(fit.logits(X_val)[h], single.logits(X_val), atol=100 * tolerance)
        check_history(fit.history[h])
        assert len(fit.history[h]) == len(single.history_)
        for batched, separate in zip(fit.history[h], single.history_, strict=True):
            assert batched["train_loss"] == pytest.approx(separate["train_loss"], abs=tolerance)
            assert batched["val_macro_f1"] == pytest.approx(separate["val_macro_f1"], abs=1e-9)
            assert batched["lr"] == pytest.approx(separate["lr"])
    assert np.abs(proba[0] - proba[1]).max() > 0.05  # the heads really differ
    assert len({len(h) for h in fit.history}) > 1  # early-stopped heads left the batch
    assert fit.fit_seconds > 0 and fit.calibration_seconds > 0  # head 2 calibrates


def test_without_validation_heads_run_every_epoch():
    X, y = _blobs(n=60)
    heads = [dict(LINEAR, epochs=3, lr=lr) for lr in (1e-3, 1e-2)]
    fit = fit_multihead(X, y, heads, classes=CLASSES)
    assert fit.best_epochs == [3, 3] and [len(h) for h in fit.history] == [3, 3]
    single = EmbeddingClassifier(**heads[1]).fit(X, y, classes=CLASSES)
    np.testing.assert_allclose(fit.predict_proba(X)[1], single.predict_proba(X), atol=2e-6)


def test_batch_key_groups_only_optimisation_differences():
    base = batch_key({})
    assert base == batch_key(
        dict(lr=0.1, weight_decay=0.0, calibrate=True, label_smoothing=0.2, class_weight="inverse")
    )
    assert base != batch_key(dict(seed=1)) and base != batch_key(dict(mixup=0.1))
    assert base == batch_key(dict(gelu_ln=True, hidden_sizes=[64]))  # unused by a linear head
    assert batch_key(dict(head_type="mlp", hidden_sizes=[64])) == batch_key(dict(head_type="mlp", hidden_sizes=(64,)))
    for knob in (
        {"hardmine_epochs": 2},
        {"dropout": 0.1},
        {"head_type": "arcface"},
        {"scheduler": "plateau"},
        {"head_type": "mlp", "center_loss_weight": 0.1},
    ):
        assert batch_key(knob) is None
    with pytest.raises(KennerError, match="--lr"):
        batch_key({"lr": -1})
    X, y = _blobs(n=40)
    with pytest.raises(KennerError, match="cannot be batched"):
        fit_multihead(X, y, [{}, {"seed": 1}], classes=CLASSES)


def test_sgd_and_cosine_restarts_batch_like_separate_fits():
    torch.set_num_threads(1)
    X, y = _blobs(n=80)
    heads = [dict(LINEAR, epochs=4, optimizer="sgd", scheduler="restarts", t0=2, lr=lr) for lr in (1e-2, 3e-2)]
    fit = fit_multihead(X, y, heads, classes=CLASSES)
    for h, params in enumerate(heads):
        single = EmbeddingClassifier(**params).fit(X, y, classes=CLASSES)
        np.testing.assert_allclose(fit.predict_proba(X)[h], single.predict_proba(X), atol=2e-6)
        assert [r["lr"] for r in fit.history[h]] == pytest.approx([r["lr"] for r in single.history_])


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
