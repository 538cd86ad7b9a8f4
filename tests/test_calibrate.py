"""Temperature scaling on a deliberately over-confident toy head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kenner.evaluate.calibration import expected_calibration_error
from kenner.train.calibrate import apply_temperature, fit_temperature


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
    scaled = apply_temperature(test_logits, T)
    assert float(F.cross_entropy(scaled, test_y)) < float(F.cross_entropy(test_logits, test_y))
    ece_before = expected_calibration_error(test_logits.softmax(1).numpy(), test_y.numpy(), n_bins=15)
    ece_after = expected_calibration_error(scaled.softmax(1).numpy(), test_y.numpy(), n_bins=15)
    assert ece_after < ece_before / 2
    assert torch.equal(scaled.argmax(1), test_logits.argmax(1))


def test_temperature_accepts_numpy_and_keeps_type():
    logits, y = _overconfident_logits(500, seed=2)
    T = fit_temperature(logits.numpy(), y.numpy())
    scaled = apply_temperature(logits.numpy(), T)
    assert isinstance(scaled, np.ndarray)
    np.testing.assert_array_equal(scaled.argmax(1), logits.numpy().argmax(1))


def test_underconfident_logits_get_temperature_below_one():
    logits, y = _overconfident_logits(1000, seed=3)
    assert fit_temperature(logits / 25.0, y) < 1.0  # 1/5 of the honest scale
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)
