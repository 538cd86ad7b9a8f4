"""Named profiles: presets of config fields (mostly the head's long-tail knobs), ``--profile full``.

A profile is one layer of the config tree (:func:`kenner.config.compose.compose_config`): flags given on the
command line override it. ``PROFILES_MARKDOWN`` is the table the README shows.
"""

from __future__ import annotations

from typing import Any

from kenner.errors import KennerError

# The first generation of long-tail knobs, each also a profile of its own.
_CENTER_STD = {"standardize": "standardize"}
_EFFECTIVE = {"class_weight": "effective"}
_HARDMINE = {"hardmine_epochs": 10}
_GELU_LN = {"gelu_ln": True}
_CALIB = {"calibrate": True}

PROFILES: dict[str, dict[str, Any]] = {
    "base": {},
    "center_std": _CENTER_STD,
    "effective": _EFFECTIVE,
    "hardmine": _HARDMINE,
    "gelu_ln": _GELU_LN,
    "calib": _CALIB,
    "full": {**_EFFECTIVE, **_CENTER_STD, **_HARDMINE, **_GELU_LN, **_CALIB},
    "logit_train": {"logit_adjust": "train"},
    "logit_infer": {"logit_adjust": "infer"},
    "logit_both": {"logit_adjust": "both"},
    "arcface": {"head_type": "arcface"},
    "supcon": {"head_type": "mlp", "supcon_weight": 0.1},
    "baseline_minimal": {
        "standardize": "none",
        "class_weight": "none",
        "hardmine_epochs": 0,
        "gelu_ln": False,
        "calibrate": False,
        "logit_adjust": "none",
        "balanced_softmax": False,
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "feature_noise": 0.0,
        "feature_scale": 0.0,
    },
}

DESCRIPTIONS = {
    "base": "the defaults: linear head on standardised embeddings, AdamW, cross-entropy, early stopping on val "
    "macro-F1 (ties: lower val loss), temperature scaling",
    "center_std": "standardise embeddings (mean/std of the training rows; on by default)",
    "effective": "effective-number class weights (Cui et al. 2019)",
    "hardmine": "last epochs resample training rows by their loss (hard mining)",
    "gelu_ln": "hidden blocks use LayerNorm + GELU (MLP heads)",
    "calib": "temperature scaling fitted on the validation set (on by default)",
    "full": "effective + center_std + hardmine + gelu_ln + calib",
    "logit_train": "logit-adjusted loss in training (Menon et al. 2021)",
    "logit_infer": "post-hoc logit adjustment at inference",
    "logit_both": "logit adjustment in training and at inference",
    "arcface": "cosine-margin (ArcFace) head on an MLP body",
    "supcon": "MLP head plus a supervised contrastive loss term",
    "baseline_minimal": "every long-tail, calibration and augmentation knob pinned off",
}


def profile_layer(profile: str | None, epochs: int | None = None) -> dict[str, Any]:
    """A profile's field values (empty for None); ``hardmine_epochs`` is capped at ``epochs`` so a short run
    stays valid."""
    if profile is None:
        return {}
    if profile not in PROFILES:
        raise KennerError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    values = dict(PROFILES[profile])
    if epochs is not None and "hardmine_epochs" in values:
        values["hardmine_epochs"] = min(values["hardmine_epochs"], epochs)
    return values


def profiles_markdown() -> str:
    """A Markdown table of every profile: name, what it does, the fields it sets."""
    lines = ["| profile | what it does | settings |", "|---|---|---|"]
    for name, overrides in PROFILES.items():
        settings = ", ".join(f"{key}=`{value}`" for key, value in overrides.items()) or "(defaults)"
        lines.append(f"| `{name}` | {DESCRIPTIONS[name]} | {settings} |")
    return "\n".join(lines) + "\n"


PROFILES_MARKDOWN = profiles_markdown()
