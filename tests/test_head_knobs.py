"""Every head knob changes what it should.

Loss knobs are checked exactly: with one epoch and one minibatch, the first recorded training loss is
the loss at the initial weights, which the test rebuilds from the documented seeding contract
(``make_generator`` -> ``build_head_net`` -> ``minibatch_order`` -> augmentation/mixup draws).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss

from kenner.evaluate.calibration import expected_calibration_error
from kenner.heads import EmbeddingClassifier
from kenner.heads.feature_aug import FeatureAugment, mixup
from kenner.heads.modules import HeadNet, build_head_net
from kenner.loop.epochs import make_generator, minibatch_order
from kenner.losses.center import CenterLoss
from kenner.losses.class_weights import effective_number_weights, inverse_frequency_weights
from kenner.losses.logit_adjustment import balanced_softmax_loss, log_prior, logit_adjusted_loss
from synthetic import blobs

torch.set_num_threads(1)


X, Y = blobs([24, 12, 4])
COUNTS = np.bincount(Y)
MLP = dict(head_type="mlp", hidden_sizes=(16,))


RAW = {"standardize": "none"}  # the loss is recomputed here on the raw rows


def first_loss(**knobs) -> float:
    """The recorded loss of a one-step fit (one epoch, one minibatch holding every row)."""
    clf = EmbeddingClassifier(epochs=1, batch_size=len(X), device="cpu", **{**RAW, **knobs})
    return clf.fit(X, Y).history_[0]["train_loss"]


def initial_state(**knobs) -> tuple[HeadNet, torch.Generator, torch.Tensor, torch.Tensor]:
    """The network, generator and (permuted) batch exactly as the fit sees them before its first step."""
    params = EmbeddingClassifier(epochs=1, batch_size=len(X), device="cpu", **{**RAW, **knobs}).settings()
    generator = make_generator(params["seed"])
    net = build_head_net(params, X.shape[1], 3, generator).train()
    (order,) = minibatch_order(len(X), len(X), generator)
    return net, generator, torch.from_numpy(X)[order], torch.from_numpy(Y)[order]


def trained_proba(**knobs) -> np.ndarray:
    """Training-set probabilities after a short fit."""
    return EmbeddingClassifier(epochs=5, batch_size=8, lr=0.05, device="cpu", **knobs).fit(X, Y).predict_proba(X)


def test_plain_first_loss_is_cross_entropy_at_init() -> None:
    net, _, xb, yb = initial_state()
    assert first_loss() == pytest.approx(F.cross_entropy(net(xb), yb).item(), rel=1e-5)


@pytest.mark.parametrize(
    ("knobs", "weights"),
    [
        ({"class_weight": "inverse"}, inverse_frequency_weights(COUNTS)),
        ({"class_weight": "effective", "effective_beta": 0.9}, effective_number_weights(COUNTS, 0.9)),
    ],
)
def test_class_weights_go_into_the_loss(knobs: dict, weights: np.ndarray) -> None:
    net, _, xb, yb = initial_state()
    weight = torch.as_tensor(weights, dtype=torch.float32)
    expected = F.cross_entropy(net(xb), yb, weight=weight).item()
    assert first_loss(**knobs) == pytest.approx(expected, rel=1e-5)
    rare_weighted, rare_plain = np.log(trained_proba(**knobs)[:, 2]), np.log(trained_proba()[:, 2])
    assert rare_weighted.mean() > rare_plain.mean() + 0.1  # the rarest class gains probability


def test_label_smoothing_changes_the_loss() -> None:
    net, _, xb, yb = initial_state()
    expected = F.cross_entropy(net(xb), yb, label_smoothing=0.2).item()
    assert first_loss(label_smoothing=0.2) == pytest.approx(expected, rel=1e-5)
    assert trained_proba(label_smoothing=0.2).max(axis=1).mean() < trained_proba().max(axis=1).mean() - 0.02


def test_training_logit_adjustment_and_balanced_softmax_use_the_train_prior() -> None:
    net, _, xb, yb = initial_state()
    prior = log_prior(COUNTS)
    adjusted = logit_adjusted_loss(net(xb), yb, prior, tau=0.7).item()
    assert first_loss(logit_adjust="train", logit_tau=0.7) == pytest.approx(adjusted, rel=1e-5)
    balanced = balanced_softmax_loss(net(xb), yb, prior).item()
    assert first_loss(balanced_softmax=True) == pytest.approx(balanced, rel=1e-5)
    assert adjusted != pytest.approx(balanced, rel=1e-3)


def test_input_mixup_trains_on_soft_labels() -> None:
    net, generator, xb, yb = initial_state(**MLP)
    mixed, soft = mixup(xb, F.one_hot(yb, 3).float(), 0.4, generator)
    assert ((soft > 0) & (soft < 1)).any()  # genuinely soft targets
    expected = F.cross_entropy(net(mixed), soft).item()
    assert first_loss(mixup=0.4, **MLP) == pytest.approx(expected, rel=1e-5)


def test_manifold_mixup_mixes_the_first_hidden_layer() -> None:
    knobs = dict(head_type="mlp", hidden_sizes=(16, 8))
    net, generator, xb, yb = initial_state(**knobs)
    hidden, soft = mixup(net.blocks[0](xb), F.one_hot(yb, 3).float(), 0.4, generator)
    assert ((soft > 0) & (soft < 1)).any()
    expected = F.cross_entropy(net.classify(net.features(hidden, start=1)), soft).item()
    assert first_loss(manifold_mixup=0.4, **knobs) == pytest.approx(expected, rel=1e-5)
    assert not np.array_equal(trained_proba(manifold_mixup=0.4, **knobs), trained_proba(**knobs))


def test_feature_noise_and_scaling_augment_the_inputs() -> None:
    knobs = dict(feature_noise=0.5, feature_scale=0.3, feature_aug_p=0.8)
    net, generator, xb, yb = initial_state(**knobs)
    augmented = FeatureAugment(0.5, 0.3, 0.8)(xb, generator)
    expected = F.cross_entropy(net(augmented), yb).item()
    assert first_loss(**knobs) == pytest.approx(expected, rel=1e-5)
    assert not np.array_equal(trained_proba(**knobs), trained_proba())


def test_supcon_weight_adds_a_contrastive_term_on_a_projection() -> None:
    knobs = dict(supcon_weight=0.5, supcon_temperature=0.2, supcon_dim=4, **MLP)
    net, _, xb, yb = initial_state(**knobs)
    features = net.features(xb)
    assert net.projection(features).shape == (len(X), 4)
    expected = F.cross_entropy(net.classify(features), yb) + 0.5 * SupConLoss(0.2)(net.projection(features), yb)
    assert first_loss(**knobs) == pytest.approx(expected.item(), rel=1e-5)


def test_center_loss_weight_adds_the_center_term() -> None:
    knobs = dict(center_loss_weight=0.3, **MLP)
    net, _, xb, yb = initial_state(**knobs)
    features = net.features(xb)
    expected = F.cross_entropy(net.classify(features), yb) + 0.3 * CenterLoss(3, 16)(features, yb)
    assert first_loss(**knobs) == pytest.approx(expected.item(), rel=1e-5)
    plain = EmbeddingClassifier(epochs=3, batch_size=8, device="cpu", **MLP).fit(X, Y)
    center = EmbeddingClassifier(epochs=3, batch_size=8, device="cpu", **knobs).fit(X, Y)
    assert not torch.equal(plain.model_.blocks[0][0].weight, center.model_.blocks[0][0].weight)


def test_standardisation_is_fitted_on_training_rows_only() -> None:
    X_val, y_val = blobs([10, 10, 10], draw=1)
    a = EmbeddingClassifier(standardize="standardize", epochs=2, device="cpu").fit(X, Y, X_val=X_val, y_val=y_val)
    b = EmbeddingClassifier(standardize="standardize", epochs=2, device="cpu")
    b.fit(X, Y, X_val=X_val * 10 + 100, y_val=y_val)
    np.testing.assert_allclose(a.mean_, X.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(a.scale_, X.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(a.mean_, b.mean_)
    np.testing.assert_array_equal(a.scale_, b.scale_)
    np.testing.assert_allclose(a.embed(X_val), (X_val - X.mean(axis=0)) / X.std(axis=0), rtol=1e-4, atol=1e-5)
    centred = EmbeddingClassifier(standardize="center", epochs=1, device="cpu").fit(X, Y)
    np.testing.assert_array_equal(centred.scale_, np.ones(X.shape[1], dtype=np.float32))
    plain = EmbeddingClassifier(standardize="none", epochs=1, device="cpu").fit(X, Y)
    assert not plain.mean_.any() and (plain.scale_ == 1).all()


def test_temperature_scaling_lowers_nll_and_ece_and_keeps_argmax() -> None:
    train, val, test = (blobs([40, 40, 40], sep=0.7, draw=d) for d in range(3))
    knobs = dict(
        head_type="mlp",
        hidden_sizes=(64,),
        epochs=60,
        batch_size=16,
        lr=0.02,
        weight_decay=0.0,
        patience=0,
        device="cpu",
    )
    raw = EmbeddingClassifier(**knobs, calibrate=False).fit(*train, X_val=val[0], y_val=val[1])
    calibrated = EmbeddingClassifier(**knobs, calibrate=True).fit(*train, X_val=val[0], y_val=val[1])
    assert raw.temperature_ == 1.0 and calibrated.temperature_ > 1.5  # the overfitted head is over-confident
    np.testing.assert_array_equal(raw.decision_function(test[0]), calibrated.decision_function(test[0]))
    np.testing.assert_array_equal(raw.predict(test[0]), calibrated.predict(test[0]))
    p_raw, p_cal = raw.predict_proba(test[0]), calibrated.predict_proba(test[0])
    np.testing.assert_array_equal(p_raw.argmax(axis=1), p_cal.argmax(axis=1))

    def nll(p: np.ndarray) -> float:
        return float(-np.log(p[np.arange(len(test[1])), test[1]]).mean())

    assert nll(p_cal) < nll(p_raw)
    assert expected_calibration_error(p_cal, test[1]) < expected_calibration_error(p_raw, test[1])


def test_inference_logit_adjustment_favours_rare_classes() -> None:
    train = blobs([300, 30], sep=0.6)
    test_X, test_y = blobs([200, 200], sep=0.6, draw=1)
    knobs = dict(epochs=20, batch_size=64, lr=0.02, device="cpu")
    plain = EmbeddingClassifier(**knobs).fit(*train)
    adjusted = EmbeddingClassifier(**knobs, logit_adjust="infer").fit(*train)
    np.testing.assert_allclose(adjusted.logits(test_X), plain.logits(test_X) - adjusted.log_prior_, rtol=1e-6)
    rare_plain = (plain.predict(test_X) == 1).sum()
    rare_adjusted = (adjusted.predict(test_X) == 1).sum()
    assert rare_adjusted > rare_plain
    recall = [(clf.predict(test_X)[test_y == 1] == 1).mean() for clf in (plain, adjusted)]
    assert recall[1] > recall[0]
    shift = np.log(adjusted.predict_proba(test_X)) - np.log(plain.predict_proba(test_X))
    np.testing.assert_allclose(shift[:, 1] - shift[:, 0], -(adjusted.log_prior_[1] - adjusted.log_prior_[0]), rtol=1e-4)


def test_crt_retrains_only_the_last_layer_class_balanced() -> None:
    knobs = dict(epochs=4, batch_size=8, device="cpu", **MLP)
    before = EmbeddingClassifier(**knobs).fit(X, Y)
    after = EmbeddingClassifier(**knobs, crt_epochs=3).fit(X, Y)
    body_before, body_after = before.model_.blocks.state_dict(), after.model_.blocks.state_dict()
    assert all(torch.equal(body_before[k], body_after[k]) for k in body_before)
    assert not torch.equal(before.model_.classifier.weight, after.model_.classifier.weight)
    assert [r["phase"] for r in after.history_] == ["train"] * 4 + ["crt"] * 3


def test_hardmine_resamples_only_in_the_last_epochs() -> None:
    knobs = dict(epochs=5, batch_size=8, lr=0.05, device="cpu")
    plain = EmbeddingClassifier(**knobs).fit(X, Y)
    mined = EmbeddingClassifier(**knobs, hardmine_epochs=2).fit(X, Y)
    losses_plain = [r["train_loss"] for r in plain.history_]
    losses_mined = [r["train_loss"] for r in mined.history_]
    assert losses_mined[:3] == losses_plain[:3]
    assert losses_mined[3] != losses_plain[3]


def test_dropout_changes_training_but_not_inference_determinism() -> None:
    knobs = dict(epochs=3, batch_size=8, device="cpu", **MLP)
    plain = EmbeddingClassifier(**knobs).fit(X, Y)
    dropped = EmbeddingClassifier(**knobs, dropout=0.5).fit(X, Y)
    assert not np.array_equal(plain.decision_function(X), dropped.decision_function(X))
    np.testing.assert_array_equal(dropped.decision_function(X), dropped.decision_function(X))


def test_arcface_margin_logits_take_label_smoothing_and_class_weights() -> None:
    knobs = dict(head_type="arcface", hidden_sizes=(8,), arcface_scale=8.0, arcface_margin=0.3)
    net, _, xb, yb = initial_state(**knobs)
    weight = torch.as_tensor(inverse_frequency_weights(COUNTS), dtype=torch.float32)
    expected = F.cross_entropy(net(xb, yb), yb, weight=weight, label_smoothing=0.2).item()
    assert net.classifier.margin == 0.3 and net.classifier.scale == 8.0
    assert first_loss(label_smoothing=0.2, class_weight="inverse", **knobs) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(F.cross_entropy(net(xb), yb, weight=weight, label_smoothing=0.2).item())


def test_logit_adjustment_both_trains_like_train_and_predicts_like_infer() -> None:
    knobs = dict(logit_tau=0.7, epochs=3, batch_size=8, lr=0.05, device="cpu")
    trained = EmbeddingClassifier(logit_adjust="train", **knobs).fit(X, Y)
    both = EmbeddingClassifier(logit_adjust="both", **knobs).fit(X, Y)
    assert [r["train_loss"] for r in both.history_] == [r["train_loss"] for r in trained.history_]
    np.testing.assert_allclose(both.logits(X) + 0.7 * both.log_prior_, trained.logits(X), rtol=1e-5, atol=1e-6)
    shift = np.log(both.predict_proba(X)) - np.log(trained.predict_proba(X))
    expected = -0.7 * both.log_prior_
    np.testing.assert_allclose(
        shift - shift[:, :1], np.broadcast_to(expected - expected[0], shift.shape), rtol=1e-4, atol=1e-6
    )
