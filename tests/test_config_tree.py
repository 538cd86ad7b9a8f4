"""The config tree: one coercer and validator, layers, profiles, and the flags generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from kenner.cli import build_parser
from kenner.cli.options import compose_from_args
from kenner.config.compose import compose_config
from kenner.config.fields import flag_name
from kenner.config.profiles import PROFILES, PROFILES_MARKDOWN
from kenner.config.sections import SECTIONS
from kenner.config.tree import FIELD_SECTION, RunConfig, build_config, coerce, to_nested
from kenner.errors import KennerError
from kenner.methods import METHODS

SPECS = dict(METHODS.items())


def parse(*argv: str) -> RunConfig:
    args = build_parser().parse_args(["train", "--data", "d", *argv])
    return compose_from_args(args)


def test_every_field_has_one_flag_with_help_and_the_default_shown() -> None:
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    for name in FIELD_SECTION:
        assert flag_name(name) in text, name
    assert "learning rate (default: 0.001; finetune: 0.0005)" in text  # lr
    assert "finetune: 15" in text and "metric: 50" in text  # a method's own default beside the common one
    assert "(default: )" not in text and "(default: ())" not in text and "(default: None)" not in text
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train._actions:  # one default per flag, never two
        generated = action.option_strings and action.option_strings[0] == flag_name(action.dest)
        if generated and action.help != argparse.SUPPRESS and action.dest in set(FIELD_SECTION) - {"data"}:
            assert action.help.count("(default:") == 1, action.option_strings
    assert "{constant,cosine,restarts,plateau}" in text  # choices are shown


def test_names_are_unique_and_values_coerced_from_text_and_json() -> None:
    assert len(FIELD_SECTION) == sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())
    assert coerce("hidden_sizes", "1024,512") == (1024, 512)
    assert coerce("hidden_sizes", [64]) == (64,)
    assert coerce("calibrate", "yes") is True and coerce("epochs", 5.0) == 5
    assert coerce("min_size", "none") is None and coerce("background_class", "none") == "none"
    for name, value, words in (
        ("epochs", "2.5", "--epochs: expected an integer"),
        ("lr", "fast", "--lr: expected a number"),
        ("calibrate", "maybe", "true or false"),
    ):
        with pytest.raises(KennerError, match=words):
            coerce(name, value)


@pytest.mark.parametrize(
    "values, words",
    [
        ({"lr": -1}, "--lr must be > 0"),
        ({"scheduler": "linear"}, "--scheduler must be one of constant"),
        ({"split_ratios": "0.5,0.5,0.5"}, "--split-ratios needs three shares"),
        ({"bg": 3}, "--bg N adds background images"),
        ({"hidden_sizes": "", "head_type": "mlp"}, "must not be empty for an mlp head"),
        ({"target_precision": 0.9, "target_coverage": 0.5}, "not both"),
        ({"monitor": "auroc"}, "needs --pos-class"),
        ({"label_smoothing": 1.0}, "--label-smoothing must be < 1"),
        ({"lrr": 1}, "did you mean 'lr'"),
    ],
)
def test_the_one_validator_names_the_flag(values: dict, words: str) -> None:
    with pytest.raises(KennerError, match=words):
        build_config([to_nested(values)])


def test_layers_defaults_method_file_profile_flags_set(tmp_path: Path) -> None:
    cfg = parse("--method", "finetune")
    assert (cfg["epochs"], cfg["scheduler"], cfg["lr"]) == (15, "cosine", 5e-4)  # the method's defaults
    cfg = parse(
        "--mode",
        "classifier",
        "--head-type",
        "mlp",
        "--profile",
        "full",
        "--epochs",
        "5",
        "--set",
        "optim.lr=0.01",
        "--set",
        "dropout=0.1",
    )
    assert cfg.method == "mlp" and cfg["class_weight"] == "effective" and cfg["hardmine_epochs"] == 5
    assert (cfg["lr"], cfg["dropout"], cfg.out_dir) == (0.01, 0.1, "runs/d_default_mlp")
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = compose_from_args(build_parser().parse_args(["train", "--config", str(path), "--epochs", "7"]))
    assert again.method == "mlp" and again["epochs"] == 7 and again["lr"] == 0.01 and again["hardmine_epochs"] == 5
    assert dataclasses.replace(again, optim=cfg.optim) == cfg  # everything else repeats the file


def test_seed_spellings_and_deprecated_aliases(capsys: pytest.CaptureFixture) -> None:
    assert parse("--mode", "metric").method == "metric"
    assert parse("--mode", "side-classifier").method == "side"
    cfg = parse("--early-stopping-patience", "3", "--lr-schedule", "cosine", "--k", "5")
    assert (cfg["patience"], cfg["scheduler"], cfg["pk_k"]) == (3, "cosine", 5)
    assert "--early-stopping-patience is deprecated; use --patience" in capsys.readouterr().err


def test_a_method_fixes_its_head_and_says_so() -> None:
    assert parse("--method", "arcface").head.head_type == "arcface"
    with pytest.raises(KennerError, match="method 'mlp' fixes --head-type"):
        parse("--method", "mlp", "--head-type", "linear")
    with pytest.raises(KennerError, match="--profile arcface"):
        compose_config(SPECS, method="linear", profile="arcface")
    assert compose_config(SPECS, profile="arcface").method == "arcface"


def test_profiles_name_real_fields_and_the_table_lists_them() -> None:
    for name, values in PROFILES.items():
        assert set(values) <= set(FIELD_SECTION), name
        assert f"`{name}`" in PROFILES_MARKDOWN
        compose_config(SPECS, profile=name)  # every profile builds a valid config
    assert PROFILES["full"] == {
        **PROFILES["effective"],
        **PROFILES["center_std"],
        **PROFILES["hardmine"],
        **PROFILES["gelu_ln"],
        **PROFILES["calib"],
    }


def test_run_config_holds_the_sections_of_its_method() -> None:
    cfg = parse("--method", "knn")
    written = cfg.to_dict(METHODS.get("knn").all_sections)
    assert "retrieval" in written and "head" not in written and written["method"] == "knn"
    assert build_config([to_nested(written)]) == cfg


def test_help_of_every_subcommand_renders() -> None:
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    for name, sub in subcommands.items():
        assert isinstance(sub, argparse.ArgumentParser)
        assert sub.format_help(), name


def test_the_readme_shows_the_profiles_table_as_it_is() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert PROFILES_MARKDOWN.strip() in readme
