"""Temperature scaling on a deliberately over-confident toy head, and the report's calibration summary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kenner.evaluate.calibration import calibration_markdown, calibration_summary, expected_calibration_error
from kenner.heads import EmbeddingClassifier
from kenner.heads.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, fit_temperature
from synthetic import blobs


def _overconfident_logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a well-specified 4-class model, then multiplied by 5 (over-confident)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    calibrated = torch.randn(n, 4, generator=g) + 1.5 * F.one_hot(y, 4)
    # sample labels from the calibrated model so its probabilities are honest
    y = torch.multinomial(calibrated.softmax(1), 1, generator=g).squeeze(1)
    return calibrated * 5.0, y


def test_temperature_reduces_nll_and_ece_without_changing_argmax():
    val_logits, val_y = _overconfident_logits(2000, seed=0)
    test_logits, test_y = _overconfident_logits(2000, seed=1)
    T = fit_temperature(val_logits, val_y)
    assert abs(T - 5.0) < 0.75
    scaled = test_logits / T
    assert float(F.cross_entropy(scaled, test_y)) < float(F.cross_entropy(test_logits, test_y))
    ece_before = expected_calibration_error(test_logits.softmax(1).numpy(), test_y.numpy(), n_bins=15)
    ece_after = expected_calibration_error(scaled.softmax(1).numpy(), test_y.numpy(), n_bins=15)
    assert ece_after < ece_before / 2
    assert torch.equal(scaled.argmax(1), test_logits.argmax(1))


def test_temperature_accepts_numpy_and_underconfidence_gives_t_below_one():
    logits, y = _overconfident_logits(1000, seed=3)
    assert fit_temperature(logits.numpy(), y.numpy()) == pytest.approx(fit_temperature(logits, y))
    assert fit_temperature(logits / 25.0, y) < 1.0  # 1/5 of the honest scale


def test_separable_validation_gets_laplaces_confidence_and_extremes_are_clamped():
    """Three of three right: no finite T minimises the NLL, so the mean top probability becomes 4/5."""
    logits = torch.tensor([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0]])
    T = fit_temperature(logits, torch.tensor([0, 1, 0]))
    assert torch.softmax(logits / T, dim=1).max(dim=1).values.mean().item() == pytest.approx(4 / 5, abs=1e-6)
    assert T > 1  # these logits say more than 4/5: softened
    # one error among confident rows: the optimum is a small but finite T, kept within the bounds
    T = fit_temperature(torch.tensor([[40.0, 0.0], [0.0, 30.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    assert MIN_TEMPERATURE <= T <= MAX_TEMPERATURE
    logits, y = _overconfident_logits(500, seed=4)  # the honest temperature is 5
    assert fit_temperature(logits * 1000, y) == MAX_TEMPERATURE  # would need T = 5000
    assert fit_temperature(logits / 1000, y) == MIN_TEMPERATURE  # near-uniform: would need T = 0.005


def test_calibration_summary_reports_ece_and_nll_before_and_after():
    logits, y = _overconfident_logits(1000, seed=5)
    T = fit_temperature(logits, y)
    summary = calibration_summary(logits.numpy(), y.numpy(), T)
    assert summary["temperature"] == T and summary["n"] == 1000
    assert summary["ece_before"] == pytest.approx(expected_calibration_error(logits.softmax(1).numpy(), y.numpy()))
    assert summary["ece_after"] < summary["ece_before"] and summary["nll_after"] < summary["nll_before"]
    assert summary["nll_before"] == pytest.approx(float(F.cross_entropy(logits.double(), y)))
    unchanged = calibration_summary(logits.numpy(), y.numpy(), 1.0)
    assert unchanged["ece_before"] == unchanged["ece_after"]
    table = calibration_markdown({"test": summary})
    assert f"T = {T:.4g}" in table and f"| test | 1000 | {summary['ece_before']:.4f} |" in table
    assert "No validation or test rows" in calibration_markdown({})


def test_calibration_summary_of_a_fitted_head():
    torch.set_num_threads(1)
    (X_tr, y_tr), (X_va, y_va), (X_te, y_te) = (blobs([40, 40, 40], sep=0.7, draw=d) for d in range(3))
    head = EmbeddingClassifier(
        "mlp",
        hidden_sizes=(64,),
        epochs=60,
        batch_size=16,
        lr=0.02,
        weight_decay=0.0,
        patience=0,
        calibrate=True,
        device="cpu",
    )
    head.fit(X_tr, y_tr, X_val=X_va, y_val=y_va)
    summary = calibration_summary(head.logits(X_te), y_te, head.temperature_)
    assert summary["ece_after"] == pytest.approx(expected_calibration_error(head.predict_proba(X_te), y_te))
    assert summary["ece_after"] < summary["ece_before"]
    assert (
        calibration_summary(head.logits(X_va), y_va, head.temperature_)["nll_after"]
        < calibration_summary(head.logits(X_va), y_va, 1.0)["nll_after"]
    )
