"""Config-field helpers shared by every config dataclass: a field with CLI help, and its flag name."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def knob(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose ``help`` (and ``choices``) the CLI turns into a ``--flag``."""
    metadata: dict[str, Any] = {"help": help if choices is None else f"{help}: {' | '.join(choices)}"}
    if choices is not None:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    """The CLI flag of a config field: ``label_smoothing`` -> ``--label-smoothing``."""
    return "--" + field_name.replace("_", "-")
