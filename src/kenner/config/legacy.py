"""Run configuration: frozen dataclasses that map to CLI flags and to ``run_config.json``.

A run is fully described by one :class:`RunConfig`; ``kenner train --config run_config.json``
repeats it, and ``--set section.field=value`` overrides single fields (dotted overrides).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kenner.errors import KennerError
from kenner.fields import flag_name
from kenner.heads.config import HeadConfig
from kenner.retrieval.config import RetrievalConfig


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and which of them to use."""

    data: str = field(default="", metadata={"help": "image folder (root/<class>/<ID>_<seq>.jpg) or TSV/CSV manifest"})
    on_bad_image: str = field(default="fail", metadata={"help": "fail on a bad image, or skip it (reported)"})
    omit_classes: tuple[str, ...] = field(default=(), metadata={"help": "comma-separated classes to leave out"})
    min_condition: float | None = field(
        default=None, metadata={"help": "keep samples whose mean condition >= X (unrated ones are kept)"}
    )
    min_samples_per_class: int = field(default=0, metadata={"help": "drop classes with fewer samples"})
    min_size: int | None = field(
        default=None, metadata={"help": "drop a whole group if any image's short side is below PX"}
    )
    background_color: tuple[int, ...] = field(
        default=(255, 255, 255), metadata={"help": "R,G,B behind transparent images"}
    )
    background_class: str | None = field(
        default=None, metadata={"help": "class meaning 'none of these'; adds foreground-only metrics"}
    )
    background_dir: str | None = field(
        default=None, metadata={"help": "folder of images of none of the classes (with --bg N)"}
    )
    bg: int = field(
        default=0, metadata={"help": "background images per foreground class from --background-dir, in every "
                                     "split; they join --background-class, else a new class 'background'"}
    )

    def __post_init__(self) -> None:
        if self.on_bad_image not in ("fail", "skip"):
            raise KennerError(f"--on-bad-image must be 'fail' or 'skip', not {self.on_bad_image!r}")
        if self.bg < 0:
            raise KennerError(f"--bg must be >= 0, got {self.bg}")
        if self.bg > 0 and not self.background_dir:
            raise KennerError("--bg N adds background images; give them with --background-dir DIR")
        if self.background_dir and self.bg == 0:
            raise KennerError("--background-dir is used with --bg N (background images per foreground class)")


@dataclass(frozen=True)
class SplitConfig:
    """Group-aware stratified split: ratios, seed, or an existing split folder."""

    splits: str | None = field(default=None, metadata={"help": "reuse the split saved in this folder"})
    split_ratios: tuple[float, ...] = field(default=(0.7, 0.15, 0.15), metadata={"help": "train,val,test"})
    split_seed: int = field(default=42, metadata={"help": "seed of the split"})
    folds: int = field(default=0, metadata={"help": "K group-aware stratified folds (0 = one split)"})

    def __post_init__(self) -> None:
        if len(self.split_ratios) != 3 or abs(sum(self.split_ratios) - 1) > 1e-6:
            raise KennerError(f"--split-ratios needs three numbers summing to 1, got {self.split_ratios}")
        if self.folds == 1 or self.folds < 0:
            raise KennerError("--folds must be 0 (one split) or at least 2")


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder embeds the images and how extraction runs."""

    encoder: str = field(
        default="default", metadata={"help": "default | timm:NAME | hf:REPO_OR_DIR | open_clip:ARCH[@TAG]"}
    )
    weights: str | None = field(default=None, metadata={"help": "local weights file for timm encoders"})
    pooling: str = field(default="cls", metadata={"help": "hf ViT pooling: cls | mean | cls+mean"})
    views: str = field(default="concat", metadata={"help": "a view name, avg or concat (coin: obv|rev|both_*)"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "embedding cache (default: $KENNER_CACHE/embeddings)"}
    )
    embed_batch_size: int = field(default=64, metadata={"help": "images per encoder forward pass"})
    num_workers: int = field(default=2, metadata={"help": "background image decoding workers"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    backend: str = field(
        default="auto", metadata={"help": "auto (ONNX Runtime for the default encoder on CPU) | torch | onnx"}
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``kenner train`` run needs; written to ``run_config.json``."""

    out_dir: str = "runs/default"
    mode: str = "classifier"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    profile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        sections = {"data": DataConfig, "split": SplitConfig, "encoder": EncoderConfig, "head": HeadConfig,
                    "retrieval": RetrievalConfig}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in sections:
                kwargs[key] = build_dataclass(sections[key], value or {}, where=key)
            elif key in ("out_dir", "mode", "profile"):
                kwargs[key] = value
            else:
                raise KennerError(f"run config: unknown key {key!r}")
        return cls(**kwargs)


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_run_config(path: str | Path) -> RunConfig:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KennerError(f"{path}: run config not found") from None
    except json.JSONDecodeError as error:
        raise KennerError(f"{path}: not valid JSON ({error})") from None
    return RunConfig.from_dict(raw)


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_value(tp: Any, text: Any, *, name: str) -> Any:
    """Parse a flag/JSON value into the field's type (tuples accept comma-separated strings).

    An optional field reads ``""`` as None, and ``"none"`` too unless it holds text: a class or folder
    may well be called "none".
    """
    tp, optional = _unwrap_optional(tp)
    if text is None or (optional and isinstance(text, str)
                        and (text == "" or (tp is not str and text.lower() == "none"))):
        return None
    try:
        if typing.get_origin(tp) is tuple:
            (item_type, *_) = typing.get_args(tp)
            items = text.split(",") if isinstance(text, str) else list(text)
            return tuple(parse_value(item_type, item.strip() if isinstance(item, str) else item, name=name)
                         for item in items if not (isinstance(item, str) and item.strip() == ""))
        if tp is bool:
            if isinstance(text, bool):
                return text
            if str(text).lower() in ("1", "true", "yes", "on"):
                return True
            if str(text).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return tp(text)
    except (TypeError, ValueError):
        raise KennerError(f"{name}: cannot read {text!r} as {getattr(tp, '__name__', tp)}") from None


def build_dataclass(cls: type, values: dict[str, Any], *, where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KennerError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(names)}")
    parsed = {k: parse_value(_field_type(cls, names[k]), v, name=f"{where}.{k}") for k, v in values.items()}
    return cls(**parsed)


def add_dataclass_arguments(parser: argparse.ArgumentParser | Any, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field; defaults are None so explicit flags can be told apart."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, _ = _unwrap_optional(_field_type(cls, f))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if help_text else f"(default: {default})"
        if tp is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                                help=help_text)


def explicit_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line (non-None)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.field=value`` overrides (``--set head.lr=0.01``)."""
    raw = config.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise KennerError(f"--set {item!r}: expected section.field=value")
        section, _, name = key.partition(".")
        if name:
            if section not in raw or not isinstance(raw[section], dict):
                raise KennerError(f"--set {item!r}: unknown section {section!r}")
            raw[section][name] = value
        else:
            raw[section] = value
    return RunConfig.from_dict(raw)


def parsed_explicit(args: argparse.Namespace, cls: type, *, where: str,
                    skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` (but ``skip``) the user set on the command line, parsed into their types."""
    hints = typing.get_type_hints(cls)
    return {name: parse_value(hints[name], value, name=f"{where}.{name}")
            for name, value in explicit_values(args, cls).items() if name not in skip}


def merge_explicit(instance: Any, args: argparse.Namespace, *, where: str) -> Any:
    """``instance`` with every field the user set on the command line parsed and replaced."""
    return dataclasses.replace(instance, **parsed_explicit(args, type(instance), where=where))


def absolute_paths(spec: str, weights: str | None) -> tuple[str, str | None]:
    """The encoder spec (``hf:``/``local:`` folders) and weights file with local paths made absolute, so that
    ``kenner predict`` finds them from any working folder."""
    family, colon, target = spec.partition(":")
    if colon and family in ("hf", "local") and Path(target).exists():
        spec = f"{family}:{Path(target).resolve()}"
    return spec, str(Path(weights).resolve()) if weights else None
