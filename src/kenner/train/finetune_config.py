"""FinetuneConfig: every knob of full fine-tuning, and FinetuneRun, the whole ``run_config.json`` of one.

Each field's ``metadata`` has a ``help`` text (``kenner finetune`` turns every field into a ``--flag`` with
``kenner.config.add_dataclass_arguments``) and, for string knobs, ``choices``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kenner.config.legacy import DataConfig, EncoderConfig, SplitConfig, build_dataclass, to_jsonable
from kenner.errors import KennerError
from kenner.fields import flag_name, knob
from kenner.io import read_json

FT_HEAD_TYPES = ("linear", "arcface")
SCHEDULERS = ("cosine", "restarts", "plateau", "constant")
SAMPLERS = ("random", "weighted", "pk")
AUG_PRESETS = ("none", "light", "strong")
AUG_BACKENDS = ("torchvision", "albumentations", "alb")
MONITORS = ("auto", "macro_f1", "accuracy", "loss", "recall_at_1", "auroc")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class FinetuneConfig:
    """Knobs of ``kenner finetune``; invalid values raise KennerError naming the flag."""

    # head and phases
    head_type: str = knob("linear", "classifier on the backbone features", FT_HEAD_TYPES)
    arcface_scale: float = knob(16.0, "logit scale s of the arcface head")
    arcface_margin: float = knob(0.3, "additive angular margin m of the arcface head (radians)")
    margin_ramp_epochs: int = knob(
        0, "after the frozen phase, raise the arcface margin from 0 to its target over N epochs"
    )
    dropout: float = knob(0.0, "dropout on the features before the classifier")
    freeze_epochs: int = knob(
        0, "train only the head on a frozen backbone for N epochs (arcface: margin 0), then unfreeze"
    )
    # optimisation
    epochs: int = knob(15, "maximum training epochs (frozen phase included)")
    batch_size: int = knob(16, "images per optimizer step (split into --accum-steps micro-batches)")
    lr: float = knob(5e-4, "learning rate of the head (and of the backbone unless --backbone-lr)")
    backbone_lr: float | None = knob(None, "learning rate of the backbone once unfrozen (default: --lr)")
    weight_decay: float = knob(0.05, "AdamW decoupled weight decay")
    scheduler: str = knob("cosine", "learning-rate schedule, stepped per epoch", SCHEDULERS)
    warmup_epochs: int = knob(1, "linear warm-up epochs of the cosine schedule")
    min_lr: float = knob(1e-6, "floor of the cosine schedules")
    t0: int = knob(5, "restarts: epochs of the first cosine cycle (T_0)")
    t_mult: int = knob(1, "restarts: cycle length factor (T_mult)")
    plateau_factor: float = knob(0.5, "plateau: learning-rate factor when the monitored metric stalls")
    plateau_patience: int = knob(2, "plateau: stalled epochs tolerated; the next one cuts the rate")
    label_smoothing: float = knob(0.0, "label smoothing of the cross-entropy")
    mixup: float = knob(0.0, "mixup alpha on images, soft labels (0 = off; linear head only)")
    sampler: str = knob("random", "training order: shuffle, inverse-frequency weighted, or P x K", SAMPLERS)
    pk_k: int = knob(4, "P x K sampler: images per class in a micro-batch")
    # images
    img_size: int | None = knob(None, "input size in pixels (default: the encoder's)")
    aug_preset: str = knob("light", "training augmentation", AUG_PRESETS)
    aug_backend: str = knob("torchvision", "augmentation library", AUG_BACKENDS)
    # evaluation, early stopping, checkpoints
    ema_decay: float = knob(0.0, "EMA of the weights, evaluated beside the model each epoch (0 = off)")
    monitor: str = knob("auto", "validation metric for best model and early stopping (auto: macro_f1, "
                         "recall_at_1 for arcface)", MONITORS)
    patience: int = knob(5, "stop after N unfrozen epochs without a better monitored metric (0 = off)")
    checkpoint_every: int = knob(0, "also keep checkpoint_epoch_N.pt every N epochs (0 = off)")
    pos_class: str | None = knob(None, "binary task: the positive class (AUROC, best-F1 threshold)")
    target_precision: float | None = knob(None, "reject option: tune on val for this precision (e.g. 0.95)")
    target_coverage: float | None = knob(None, "reject option: tune on val for this coverage (e.g. 0.8)")
    reject_by: str = knob("distance", "reject signal: distance (1 - max probability) | margin (top-1 minus "
                           "top-2 probability) | both (both limits tuned together)", ("distance", "margin", "both"))
    # hardware
    device: str = knob("auto", "auto (cuda if present) | cpu | cuda | cuda:N")
    precision: str = knob("auto", "autocast precision (auto: bf16 on compute capability >= 8, fp16 "
                           "before, fp32 on CPU)", PRECISIONS)
    num_workers: int | None = knob(None, "image decoding workers (default: from the device table)")
    accum_steps: int | None = knob(None, "micro-batches per optimizer step (default: from the device table)")
    seed: int = knob(0, "seed of initialisation, sampling, augmentation and dropout")
    deterministic: bool = knob(False, "deterministic algorithms (reproducible, slower)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                _fail(f.name, f"must be one of {', '.join(choices)}", getattr(self, f.name))
        for name in ("epochs", "batch_size", "pk_k", "t0", "t_mult"):
            if getattr(self, name) < 1:
                _fail(name, "must be at least 1", getattr(self, name))
        for name in ("freeze_epochs", "warmup_epochs", "margin_ramp_epochs", "patience", "checkpoint_every",
                     "plateau_patience", "mixup", "label_smoothing", "weight_decay", "min_lr"):
            if getattr(self, name) < 0:
                _fail(name, "must not be negative", getattr(self, name))
        for name in ("lr", "backbone_lr", "img_size", "num_workers", "accum_steps"):
            value = getattr(self, name)
            if value is not None and (value < 0 or (value == 0 and name != "num_workers")):
                _fail(name, "must be positive", value)
        if self.target_precision is not None and self.target_coverage is not None:
            _fail("target_coverage", "give --target-precision or --target-coverage, not both", self.target_coverage)
        for name in ("target_precision", "target_coverage"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                _fail(name, "must be in (0, 1]", value)
        if not 0 <= self.ema_decay < 1:
            _fail("ema_decay", "must be in [0, 1)", self.ema_decay)
        if not 0 <= self.dropout < 1:
            _fail("dropout", "must be in [0, 1)", self.dropout)
        if self.freeze_epochs >= self.epochs:
            _fail("freeze_epochs", f"must be below --epochs ({self.epochs})", self.freeze_epochs)
        if self.monitor == "auroc" and self.pos_class is None:
            _fail("monitor", "auroc needs --pos-class (binary tasks)", self.monitor)
        if self.mixup > 0 and self.head_type == "arcface":
            _fail("mixup", "does not combine with the arcface head (its margin needs hard labels)",
                  self.mixup)

    @property
    def monitor_metric(self) -> str:
        """The resolved validation metric (``auto``: macro-F1, Recall@1 for ArcFace)."""
        if self.monitor != "auto":
            return self.monitor
        return "recall_at_1" if self.head_type == "arcface" else "macro_f1"

    @property
    def augmentation_backend(self) -> str:
        return "albumentations" if self.aug_backend == "alb" else self.aug_backend


def _fail(name: str, requirement: str, value: Any) -> None:
    raise KennerError(f"{flag_name(name)} {requirement}, got {value!r}")


@dataclass(frozen=True)
class FinetuneRun:
    """Everything a ``kenner finetune`` run needs; written to ``run_config.json`` with ``mode: finetune``."""

    out_dir: str = "runs/finetune"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    mode = "finetune"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, **to_jsonable(dataclasses.asdict(self))}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FinetuneRun:
        sections = {"data": DataConfig, "split": SplitConfig, "encoder": EncoderConfig,
                    "finetune": FinetuneConfig}
        if raw.get("mode", cls.mode) != cls.mode:
            raise KennerError(f"run config of mode {raw['mode']!r}: repeat it with 'kenner train --config'")
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in sections:
                kwargs[key] = build_dataclass(sections[key], value or {}, where=key)
            elif key == "out_dir":
                kwargs[key] = value
            elif key != "mode":
                raise KennerError(f"finetune run config: unknown key {key!r}")
        return cls(**kwargs)


def load_finetune_run(path: str | Path) -> FinetuneRun:
    """Read a ``run_config.json`` written by ``kenner finetune``."""
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise KennerError(f"{path}: run config not found") from None
    except ValueError as error:
        raise KennerError(f"{path}: not valid JSON ({error})") from None
    return FinetuneRun.from_dict(raw)
