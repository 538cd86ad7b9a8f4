"""Run configuration: flag parsing, JSON round trip, overrides, validation."""

from __future__ import annotations

import pytest

from kenner.cli import build_parser
from kenner.cli.pipeline import config_from_args
from kenner.config.legacy import DataConfig, RunConfig, SplitConfig, apply_overrides, parse_value
from kenner.errors import KennerError


def _config(*flags: str) -> RunConfig:
    return config_from_args(build_parser().parse_args(["train", "--data", "d", "--no-track", *flags]))


def test_flags_reach_their_sections() -> None:
    cfg = _config("--omit-classes", "a,b", "--min-size", "64", "--split-ratios", "0.8,0.1,0.1", "--folds", "3",
                  "--views", "both_avg", "--head-type", "mlp", "--hidden-sizes", "64,32", "--lr", "0.01")
    assert cfg.data.omit_classes == ("a", "b") and cfg.data.min_size == 64
    assert cfg.split.split_ratios == (0.8, 0.1, 0.1) and cfg.split.folds == 3
    assert cfg.encoder.views == "both_avg"
    assert cfg.head.head_type == "mlp" and cfg.head.hidden_sizes == (64, 32) and cfg.head.lr == 0.01


def test_a_class_called_none_is_a_class_name() -> None:
    cfg = _config("--background-class", "none")
    assert cfg.data.background_class == "none"
    assert RunConfig.from_dict(cfg.to_dict()).data.background_class == "none"
    assert parse_value(float | None, "none", name="x") is None
    assert parse_value(str | None, "", name="x") is None


def test_json_round_trip_and_dotted_overrides() -> None:
    cfg = _config("--min-condition", "1.5", "--background-color", "0,0,0")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    changed = apply_overrides(cfg, ["head.lr=0.5", "data.min_condition=none", "split.split_seed=7"])
    assert changed.head.lr == 0.5 and changed.data.min_condition is None and changed.split.split_seed == 7
    with pytest.raises(KennerError, match="unknown section"):
        apply_overrides(cfg, ["nope.x=1"])
    with pytest.raises(KennerError, match="unknown field"):
        apply_overrides(cfg, ["head.nope=1"])


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: DataConfig(on_bad_image="ignore"), "--on-bad-image"),
        (lambda: SplitConfig(split_ratios=(0.5, 0.5)), "--split-ratios"),
        (lambda: SplitConfig(folds=1), "--folds"),
        (lambda: parse_value(int, "many", name="data.min_size"), "data.min_size"),
    ],
)
def test_bad_values_name_the_flag(make, words: str) -> None:
    with pytest.raises(KennerError, match=words):
        make()
