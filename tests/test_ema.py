"""EMA of the weights: timm's ModelEmaV3 arithmetic through kenner's create_ema, and the gap measure."""

from __future__ import annotations

import torch
from torch import nn

from kenner.train.ema import create_ema, ema_gap


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_is_off_at_decay_zero() -> None:
    assert create_ema(_model(), 0.0) is None


def test_ema_update_is_decay_times_average_plus_rest_times_model() -> None:
    model = _model()
    ema = create_ema(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(8, 3))  # moves the BatchNorm running mean, a buffer the EMA also averages
    live = {k: v.clone() for k, v in model.state_dict().items()}
    ema.update(model)
    averaged = ema.module.state_dict()
    for key in ("0.weight", "0.bias", "1.running_mean"):
        torch.testing.assert_close(averaged[key], 0.9 * start[key] + 0.1 * live[key])
    ema.update(model)
    expected = 0.9 * (0.9 * start["0.weight"] + 0.1 * live["0.weight"]) + 0.1 * live["0.weight"]
    torch.testing.assert_close(ema.module.state_dict()["0.weight"], expected)


def test_ema_gap_is_mean_absolute_parameter_difference() -> None:
    model = _model()
    ema = create_ema(model, 0.5)
    assert ema_gap(model, ema) == 0.0
    with torch.no_grad():
        model[0].weight.add_(2.0)  # 12 of the 3*4 + 4 + 4 + 4 = 24 parameters move by 2
    assert abs(ema_gap(model, ema) - 2.0 * 12 / 24) < 1e-6
