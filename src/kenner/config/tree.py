"""The config tree: every section composed into one :class:`RunConfig`, one coercer and one validator.

A run is described by one ``RunConfig`` (written to ``run_config.json``). It is built in layers, each
overriding the one before (:func:`build_config`): the sections' defaults, the method's defaults, an earlier
run's config file, a profile, flags given on the command line, and ``--set field=value`` overrides. Values
from any layer (JSON values or command-line strings) go through :func:`coerce`, and the finished tree through
:func:`validate`, so every source of a value gets the same one-line error naming the flag.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kenner.config.fields import BOUNDS, flag_name
from kenner.config.sections import (
    SECTIONS,
    ArcFaceConfig,
    AugmentConfig,
    ComputeConfig,
    DataConfig,
    DecisionConfig,
    EarlyStoppingConfig,
    EncoderConfig,
    FinetuneConfig,
    HeadConfig,
    LossConfig,
    MetricConfig,
    OptimConfig,
    RetrievalConfig,
    SamplerConfig,
    ScheduleConfig,
    SideConfig,
    SplitConfig,
    TrackingConfig,
    ZeroShotConfig,
)
from kenner.errors import KennerError

# Top-level keys of a RunConfig besides its sections.
TOP_LEVEL = ("method", "profile", "out_dir")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; ``to_dict()`` is its ``run_config.json``."""

    method: str = "linear"
    profile: str | None = None
    out_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    arcface: ArcFaceConfig = field(default_factory=ArcFaceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    side: SideConfig = field(default_factory=SideConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __getitem__(self, name: str) -> Any:
        """A field's value by its (unique) name: ``cfg["lr"]``."""
        return getattr(getattr(self, FIELD_SECTION[name]), name)

    def fields(self, *sections: str) -> dict[str, Any]:
        """The fields of ``sections`` as one flat dict (the keyword arguments of an estimator, say)."""
        return {name: value for section in sections for name, value in _as_dict(getattr(self, section)).items()}

    def replace(self, **values: Any) -> RunConfig:
        """A copy with fields (by name) or top-level keys replaced, coerced and validated."""
        return build_config([to_nested(values)], base=self)

    def to_dict(self, sections: Iterable[str] | None = None) -> dict[str, Any]:
        """JSON-friendly nested dict (tuples become lists); ``sections`` limits which sections appear."""
        chosen = SECTIONS if sections is None else sections
        return {
            **{key: getattr(self, key) for key in TOP_LEVEL},
            **{name: {k: _jsonable(v) for k, v in _as_dict(getattr(self, name)).items()} for name in chosen},
        }


def _as_dict(section: Any) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


FIELD_SECTION: dict[str, str] = {}
for _section, _cls in SECTIONS.items():
    for _field in dataclasses.fields(_cls):
        clashes = _field.name in FIELD_SECTION or _field.name in TOP_LEVEL
        if clashes or (_field.name in SECTIONS and _field.name != _section):
            raise RuntimeError(f"config field {_field.name!r} is not unique across sections")
        FIELD_SECTION[_field.name] = _section


def section_fields(section: str) -> list[dataclasses.Field]:
    return list(dataclasses.fields(SECTIONS[section]))


def field_of(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(SECTIONS[FIELD_SECTION[name]]) if f.name == name)


def field_type(name: str) -> Any:
    return typing.get_type_hints(SECTIONS[FIELD_SECTION[name]])[name]


def default_of(name: str) -> Any:
    return field_of(name).default


def value_kind(name: str) -> tuple[type, bool]:
    """(scalar type, is a list) of field ``name``: ``hidden_sizes`` -> ``(int, True)``, ``lr`` -> ``(float, False)``."""
    tp, _ = _unwrap_optional(field_type(name))
    if typing.get_origin(tp) is tuple:
        return typing.get_args(tp)[0], True
    return tp, False


# ------------------------------------------------------------------------------------------------- naming


def safe_name(text: str) -> str:
    """A run-name-friendly form of an encoder spec or dataset name."""
    keep = [c if c.isalnum() else "_" for c in text.rsplit("/", 1)[-1].lower()]
    return "".join(keep).strip("_") or "x"


def dataset_name(data: str) -> str:
    """``coins`` for ``data/coins.tsv`` or ``data/coins/``."""
    source = Path(data)
    return safe_name(source.stem if source.suffix else source.name)


def default_out_dir(cfg: RunConfig) -> str:
    """``runs/<dataset>_<encoder>_<method>``."""
    return str(Path("runs") / f"{dataset_name(cfg.data.data)}_{safe_name(cfg.encoder.encoder)}_{cfg.method}")


# ----------------------------------------------------------------------------------------------- coercion


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(name: str, value: Any) -> Any:
    """``value`` (a JSON value or a command-line string) as field ``name``'s type, or a KennerError.

    Tuples accept lists or comma-separated strings; booleans ``true/false/yes/no/on/off/1/0``. An optional
    field reads ``""`` as None, and ``"none"`` too unless it holds text (a class may be called "none").
    """
    tp, optional = _unwrap_optional(field_type(name))
    flag = flag_name(name)
    if value is None or (
        optional and isinstance(value, str) and (value == "" or (tp is not str and value.strip().lower() == "none"))
    ):
        if optional:
            return None
        raise KennerError(f"{flag} needs a value")
    if typing.get_origin(tp) is tuple:
        (item_type, *_) = typing.get_args(tp)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise KennerError(f"{flag}: expected a comma-separated list, got {value!r}")
        items = [item.strip() if isinstance(item, str) else item for item in items]
        return tuple(_scalar(flag, item_type, item) for item in items if item != "")
    return _scalar(flag, tp, value)


def _scalar(flag: str, tp: Any, value: Any) -> Any:
    what = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[tp]
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    elif tp is str:
        if isinstance(value, str):
            return value
    elif not isinstance(value, bool):
        try:
            number = float(value)
            if tp is float:
                return number
            if number == int(number):
                return int(number)
        except (TypeError, ValueError, OverflowError):
            pass
    raise KennerError(f"{flag}: expected {what}, got {value!r}")


# ---------------------------------------------------------------------------------------------- validation


def validate(cfg: RunConfig) -> RunConfig:
    """Check every field's choices and bounds, then the rules that join fields; returns ``cfg``."""
    for section in SECTIONS:
        for f in section_fields(section):
            _check_field(f, getattr(getattr(cfg, section), f.name))
    for rule in RULES:
        rule(cfg)
    return cfg


def _check_field(f: dataclasses.Field, value: Any) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise KennerError(f"{flag_name(f.name)} must be one of {', '.join(choices)}, not {value!r}")
    bounds = f.metadata.get("bounds", {})
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if item is None or isinstance(item, str | bool):
            continue
        for name, limit in bounds.items():
            ok = {"ge": item >= limit, "gt": item > limit, "le": item <= limit, "lt": item < limit}[name]
            if not ok:
                raise KennerError(f"{flag_name(f.name)} must be {BOUNDS[name]} {limit:g}, not {item!r}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise KennerError(message)


def _data_rules(c: RunConfig) -> None:
    d = c.data
    _require(
        not (d.bg > 0 and not d.background_dir), "--bg N adds background images; give them with --background-dir DIR"
    )
    _require(
        not (d.background_dir and d.bg == 0),
        "--background-dir is used with --bg N (background images per foreground class)",
    )
    _require(
        len(d.background_color) == 3 and all(0 <= v <= 255 for v in d.background_color),
        f"--background-color needs three values 0-255 (R,G,B), got {d.background_color}",
    )


def _split_rules(c: RunConfig) -> None:
    ratios = c.split.split_ratios
    _require(
        len(ratios) == 3 and all(r >= 0 for r in ratios) and abs(sum(ratios) - 1) <= 1e-6,
        f"--split-ratios needs three shares >= 0 summing to 1 (train,val,test), got {ratios}",
    )
    _require(c.split.folds != 1, "--folds must be 0 (one split) or at least 2")


def _device_rules(c: RunConfig) -> None:
    device = c.compute.device
    kind, _, index = device.partition(":")
    _require(
        device == "auto" or (kind in ("cpu", "cuda", "mps") and (not index or index.isdigit())),
        f"--device must be auto, cpu, cuda, cuda:N or mps, not {device!r}",
    )


def _head_rules(c: RunConfig) -> None:
    h, loss = c.head, c.loss
    has_body = h.head_type != "linear" and len(h.hidden_sizes) > 0
    _require(all(size >= 1 for size in h.hidden_sizes), f"--hidden-sizes must be positive, got {h.hidden_sizes}")
    _require(h.head_type != "mlp" or len(h.hidden_sizes) > 0, "--hidden-sizes must not be empty for an mlp head")
    _require(
        h.hardmine_epochs <= c.optim.epochs,
        f"--hardmine-epochs must not exceed --epochs ({c.optim.epochs}), got {h.hardmine_epochs}",
    )
    _require(
        not (h.balanced_softmax and h.logit_adjust in ("train", "both")),
        "--balanced-softmax already adjusts the training logits; do not combine it with --logit-adjust train/both",
    )
    for name in ("manifold_mixup", "supcon_weight", "center_loss_weight"):
        _require(
            getattr(h, name) == 0 or has_body,
            f"{flag_name(name)} needs a head with hidden layers (--head-type mlp or arcface, non-empty --hidden-sizes)",
        )
    _require(loss.mixup == 0 or h.manifold_mixup == 0, "--mixup and --manifold-mixup cannot both be on")
    mixing = loss.mixup > 0 or h.manifold_mixup > 0
    _require(
        not (mixing and h.head_type == "arcface"),
        "an arcface head needs hard labels for its margin; turn --mixup/--manifold-mixup off",
    )
    _require(
        not (mixing and (h.supcon_weight > 0 or h.center_loss_weight > 0)),
        "--supcon-weight and --center-loss-weight need hard labels; turn --mixup/--manifold-mixup off",
    )


def _decision_rules(c: RunConfig) -> None:
    d = c.decision
    _require(
        d.target_precision is None or d.target_coverage is None,
        "give --target-precision or --target-coverage, not both",
    )
    _require(
        c.early_stopping.monitor != "auroc" or d.pos_class is not None,
        "--monitor auroc needs --pos-class (binary tasks)",
    )


RULES: tuple[Callable[[RunConfig], None], ...] = (
    _data_rules,
    _split_rules,
    _device_rules,
    _head_rules,
    _decision_rules,
)


# ------------------------------------------------------------------------------------------------ building

# Spellings of earlier kenner versions, accepted in files and flags with a warning: old name -> field.
DEPRECATED = {
    "early_stopping_patience": "patience",
    "lr_schedule": "scheduler",
    "p": "pk_p",
    "k": "pk_k",
    "metric_scale": "arcface_scale",
    "metric_margin": "arcface_margin",
    "seeds": "seed",
}


def to_nested(
    values: Mapping[str, Any], *, where: str = "config", warn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Flat or nested values (``{"lr": 1}``, ``{"optim": {"lr": 1}}``, ``{"optim.lr": 1}``) -> nested by
    section, fields placed by their unique names (a field under the wrong section is moved to its own)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        _, dot, name = key.partition(".")
        if dot:
            items: Mapping[str, Any] = {name: value}
        elif key in SECTIONS and isinstance(value, Mapping):
            items = value
        elif key in TOP_LEVEL:
            nested[key] = value
            continue
        else:
            items = {key: value}
        for name, item in items.items():
            if name in DEPRECATED:
                if warn is not None:
                    warn(f"{where}: {name} is deprecated; use {DEPRECATED[name]}")
                name = DEPRECATED[name]
            if name not in FIELD_SECTION:
                raise KennerError(f"{where}: unknown setting {name!r}{_suggestion(name)}")
            nested.setdefault(FIELD_SECTION[name], {})[name] = item
    return nested


def _suggestion(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(FIELD_SECTION), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_config(layers: Iterable[Mapping[str, Any]], *, base: RunConfig | None = None) -> RunConfig:
    """``base`` (defaults) with ``layers`` (nested dicts from :func:`to_nested`) applied in order, every value
    coerced, then validated."""
    base = base or RunConfig()
    top = {key: getattr(base, key) for key in TOP_LEVEL}
    sections = {name: _as_dict(getattr(base, name)) for name in SECTIONS}
    for layer in layers:
        for key, value in layer.items():
            if key in TOP_LEVEL:
                top[key] = value
            else:
                for name, item in value.items():
                    sections[key][name] = coerce(name, item)
    return validate(RunConfig(**top, **{name: SECTIONS[name](**values) for name, values in sections.items()}))


def load_config_file(path: str | Path, *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """An earlier run's ``run_config.json`` as a nested layer (kenner 0.1's ``mode`` key read as a method)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KennerError(f"{path}: run config not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KennerError(f"{path}: not a valid run config ({error})") from None
    if not isinstance(raw, dict):
        raise KennerError(f"{path}: not a valid run config (expected a JSON object)")
    mode = raw.pop("mode", None)
    if mode is not None and "method" not in raw:
        head_type = (raw.get("head") or {}).get("head_type", "linear")
        raw["method"] = method_of_mode(mode, head_type)
    raw.pop("retrieval_side", None)
    return to_nested(raw, where=str(path), warn=warn)


MODES = ("classifier", "metric", "side-classifier", "finetune")


def method_of_mode(mode: str, head_type: str | None) -> str:
    """The method a seed-style ``--mode`` (and ``--head-type``) means."""
    if mode not in MODES:
        raise KennerError(f"--mode must be one of {', '.join(MODES)}, not {mode!r}")
    return {"classifier": head_type or "linear", "metric": "metric", "side-classifier": "side", "finetune": "finetune"}[
        mode
    ]
