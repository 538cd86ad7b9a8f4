"""Named head profiles: resolution, precedence of explicit flags, the README table."""

from __future__ import annotations

import dataclasses

import pytest

from kenner.errors import KennerError
from kenner.heads.config import HeadConfig
from kenner.train.profiles import PROFILES, PROFILES_MARKDOWN, resolve_config


def test_every_profile_builds_a_valid_config():
    for name in PROFILES:
        config = resolve_config(name, {})
        for key, value in PROFILES[name].items():
            assert getattr(config, key) == value


def test_full_is_the_union_of_the_first_generation_knobs():
    full = PROFILES["full"]
    for part in ("effective", "center_std", "hardmine", "gelu_ln", "calib"):
        assert PROFILES[part].items() <= full.items()
    config = resolve_config("full", {})
    assert (config.class_weight, config.standardize, config.gelu_ln, config.calibrate) == (
        "effective", "standardize", True, True)
    assert config.hardmine_epochs > 0


def test_baseline_minimal_has_none_of_the_knobs():
    config = resolve_config("baseline_minimal", {})
    assert config.class_weight == "none" and config.standardize == "none"
    assert config.hardmine_epochs == 0 and not config.gelu_ln and not config.calibrate
    assert config.logit_adjust == "none" and config.label_smoothing == 0


def test_no_profile_is_defaults_and_explicit_flags_win():
    assert resolve_config(None, {}) == HeadConfig()
    config = resolve_config("full", {"class_weight": "inverse", "lr": 0.01, "head_type": "mlp"})
    assert config.class_weight == "inverse" and config.lr == 0.01 and config.head_type == "mlp"
    assert config.calibrate  # the rest of the profile stays
    assert resolve_config("logit_both", {"logit_adjust": "none"}).logit_adjust == "none"


def test_profile_hardmine_is_capped_by_short_runs_but_explicit_is_not():
    assert resolve_config("hardmine", {"epochs": 4}).hardmine_epochs == 4
    with pytest.raises(KennerError, match="hardmine-epochs"):
        resolve_config("hardmine", {"epochs": 4, "hardmine_epochs": 6})


def test_unknown_profile_lists_profiles():
    with pytest.raises(KennerError) as info:
        resolve_config("fulll", {})
    for name in PROFILES:
        assert name in str(info.value)
    with pytest.raises(KennerError, match="learning_rate"):
        resolve_config("base", {"learning_rate": 0.1})


def test_profiles_only_name_real_fields_and_markdown_lists_them():
    fields = {f.name for f in dataclasses.fields(HeadConfig)}
    for name, overrides in PROFILES.items():
        assert set(overrides) <= fields, name
        assert f"| `{name}` |" in PROFILES_MARKDOWN
    assert "class_weight=`effective`" in PROFILES_MARKDOWN


def test_every_head_knob_is_a_train_flag_and_flags_override_the_profile():
    import argparse

    from kenner.cli.pipeline import config_from_args, register

    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    register(subparsers)
    train = subparsers.choices["train"]
    flags = {option for action in train._actions for option in action.option_strings}
    for f in dataclasses.fields(HeadConfig):
        assert "--" + f.name.replace("_", "-") in flags, f.name
    args = parser.parse_args(["train", "--data", "d", "--profile", "full", "--class-weight", "inverse",
                              "--head-type", "mlp", "--label-smoothing", "0.1", "--no-calibrate", "--no-track"])
    head = config_from_args(args).head
    assert (head.class_weight, head.head_type, head.label_smoothing, head.calibrate) == ("inverse", "mlp", 0.1,
                                                                                        False)
    assert head.standardize == "standardize" and head.gelu_ln and head.hardmine_epochs > 0  # from the profile
    assert config_from_args(parser.parse_args(["train", "--data", "d", "--no-track"])).head == HeadConfig()
