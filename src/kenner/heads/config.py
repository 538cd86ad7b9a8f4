"""HeadConfig: every knob of a head trained on cached embeddings, one frozen dataclass.

Defaults give the plain behaviour (a linear head, AdamW, cross-entropy). Each field's ``metadata``
has a ``help`` text (the CLI turns every field into a ``--flag``) and, for string knobs, ``choices``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from kenner.errors import KennerError
from kenner.fields import flag_name, knob

HEAD_TYPES = ("linear", "mlp", "arcface")


@dataclass(frozen=True)
class HeadConfig:
    """All head/training knobs; see each field's help. Invalid values raise KennerError naming the flag."""

    # architecture
    head_type: str = knob("linear", "head on the embeddings", HEAD_TYPES)
    hidden_sizes: tuple[int, ...] = knob(
        (512,), "hidden layer sizes of mlp/arcface heads; for arcface the last one is the embedding"
    )
    gelu_ln: bool = knob(False, "hidden blocks use LayerNorm + GELU instead of ReLU")
    dropout: float = knob(0.0, "dropout after each hidden block (linear head: on its input)")
    # optimisation
    epochs: int = knob(100, "maximum training epochs")
    batch_size: int = knob(256, "samples per optimisation step")
    lr: float = knob(1e-3, "learning rate")
    weight_decay: float = knob(1e-4, "decoupled weight decay (AdamW) / L2 (adam, sgd)")
    optimizer: str = knob("adamw", "optimizer", ("adamw", "adam", "sgd"))
    lr_schedule: str = knob("constant", "learning-rate schedule over epochs", ("constant", "cosine"))
    early_stopping_patience: int = knob(
        10, "stop after N epochs without a better val macro-F1 and restore the best epoch (0 = off)"
    )
    seed: int = knob(0, "seed of initialisation, minibatch order, augmentation and dropout")
    device: str = knob("auto", "auto (cuda if available) | cpu | cuda | cuda:N")
    # loss and long-tail knobs
    label_smoothing: float = knob(0.0, "label smoothing of the cross-entropy")
    class_weight: str = knob("none", "per-class loss weights", ("none", "inverse", "effective"))
    effective_beta: float = knob(0.9999, "beta of effective-number class weights (Cui et al. 2019)")
    standardize: str = knob(
        "none", "feature normalisation fitted on the training rows only", ("none", "center", "standardize")
    )
    logit_adjust: str = knob(
        "none", "logit adjustment by the train class prior (Menon et al. 2021)",
        ("none", "train", "infer", "both"),
    )
    logit_tau: float = knob(1.0, "strength tau of the logit adjustment")
    balanced_softmax: bool = knob(False, "balanced softmax loss (Ren et al. 2020)")
    hardmine_epochs: int = knob(
        0, "in the last N epochs, resample training rows with probability rising with their loss (0 = off)"
    )
    crt_epochs: int = knob(
        0, "classifier re-training: freeze the body, re-train the last layer class-balanced for N epochs"
    )
    calibrate: bool = knob(False, "fit a softmax temperature on the validation set (argmax unchanged)")
    # augmentation in embedding space
    mixup: float = knob(0.0, "input mixup alpha, soft labels (0 = off)")
    manifold_mixup: float = knob(0.0, "manifold mixup alpha at the first hidden layer (0 = off)")
    feature_noise: float = knob(0.0, "std of Gaussian noise added to embeddings (0 = off)")
    feature_scale: float = knob(0.0, "std of channel-wise multiplicative scaling of embeddings (0 = off)")
    feature_aug_p: float = knob(0.5, "probability per sample of each feature augmentation")
    # metric-learning terms
    arcface_margin: float = knob(0.5, "additive angular margin m of the arcface head (radians)")
    arcface_scale: float = knob(16.0, "logit scale s of the arcface head (lower suits fewer classes)")
    supcon_weight: float = knob(0.0, "weight of a supervised contrastive loss on a projection (0 = off)")
    supcon_temperature: float = knob(0.1, "temperature of the supervised contrastive loss")
    supcon_dim: int = knob(128, "output size of the supervised contrastive projection")
    center_loss_weight: float = knob(0.0, "weight of the center loss on the penultimate features (0 = off)")

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def has_body(self) -> bool:
        """True when the head has hidden layers (features differ from the input embeddings)."""
        return self.head_type != "linear" and len(self.hidden_sizes) > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> HeadConfig:
        """Build from a JSON-style dict; unknown keys and mistyped values raise KennerError."""
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(raw) - set(hints))
        if unknown:
            raise KennerError(f"head config: unknown field(s) {', '.join(unknown)}")
        return cls(**{name: _coerce(name, hints[name], value) for name, value in raw.items()})


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(name: str, tp: Any, value: Any) -> Any:
    flag = flag_name(name)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise KennerError(f"{flag}: expected a list of integers, got {value!r}")
        return tuple(_coerce(name, int, item) for item in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise KennerError(f"{flag}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise KennerError(f"{flag}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KennerError(f"{flag}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise KennerError(f"{flag}: expected a string, got {value!r}")
    return value


def _check(ok: bool, name: str, requirement: str, value: Any) -> None:
    if not ok:
        raise KennerError(f"{flag_name(name)} {requirement}, got {value!r}")


def _validate(c: HeadConfig) -> None:
    for f in dataclasses.fields(c):
        choices = f.metadata.get("choices")
        value = getattr(c, f.name)
        if choices is not None:
            _check(value in choices, f.name, f"must be one of {', '.join(choices)}", value)
    _check(all(int(h) == h and h >= 1 for h in c.hidden_sizes), "hidden_sizes", "must be positive integers",
           c.hidden_sizes)
    _check(c.head_type != "mlp" or len(c.hidden_sizes) > 0, "hidden_sizes",
           "must not be empty for an mlp head", c.hidden_sizes)
    _check(c.device == "auto" or c.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
           "must be auto, cpu, cuda, cuda:N or mps", c.device)
    for name in ("epochs", "batch_size", "supcon_dim"):
        _check(getattr(c, name) >= 1, name, "must be at least 1", getattr(c, name))
    for name in ("early_stopping_patience", "hardmine_epochs", "crt_epochs", "weight_decay", "mixup",
                 "manifold_mixup", "logit_tau", "arcface_margin", "supcon_weight", "feature_noise",
                 "feature_scale", "center_loss_weight"):
        _check(getattr(c, name) >= 0, name, "must be >= 0", getattr(c, name))
    for name in ("lr", "arcface_scale", "supcon_temperature"):
        _check(getattr(c, name) > 0, name, "must be > 0", getattr(c, name))
    for name in ("label_smoothing", "dropout", "effective_beta"):
        _check(0 <= getattr(c, name) < 1, name, "must be in [0, 1)", getattr(c, name))
    _check(0 <= c.feature_aug_p <= 1, "feature_aug_p", "must be in [0, 1]", c.feature_aug_p)
    _check(c.hardmine_epochs <= c.epochs, "hardmine_epochs", f"must not exceed --epochs ({c.epochs})",
           c.hardmine_epochs)
    _check(not (c.balanced_softmax and c.logit_adjust in ("train", "both")), "balanced_softmax",
           "already adjusts the training logits; do not combine it with --logit-adjust train/both",
           c.balanced_softmax)
    for name in ("manifold_mixup", "supcon_weight", "center_loss_weight"):
        _check(getattr(c, name) == 0 or c.has_body, name,
               "needs a head with hidden layers (--head-type mlp or arcface, non-empty --hidden-sizes)",
               getattr(c, name))
    _check(c.mixup == 0 or c.manifold_mixup == 0, "mixup", "and --manifold-mixup cannot both be on", c.mixup)
    mixing = c.mixup > 0 or c.manifold_mixup > 0
    _check(not (mixing and c.head_type == "arcface"), "head_type",
           "arcface needs hard labels for its margin; turn --mixup/--manifold-mixup off", c.head_type)
    _check(not (mixing and (c.supcon_weight > 0 or c.center_loss_weight > 0)), "supcon_weight",
           "and --center-loss-weight need hard labels; turn --mixup/--manifold-mixup off",
           (c.supcon_weight, c.center_loss_weight))
