"""Config fields: a default, a help text for ``--help``, and the checks the one validator applies.

``knob(0.1, "label smoothing", ge=0, lt=1)`` is a dataclass field whose metadata says how the CLI shows it
(``help``, ``choices``) and what values are valid (``ge``/``gt``/``le``/``lt`` bounds, ``choices``).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def knob(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    metavar: str | None = None,
    shown: str | None = None,
    const: str | None = None,
) -> Any:
    """A dataclass field whose ``help`` and ``choices`` become a ``--flag`` and whose bounds are validated;
    ``shown`` is what ``--help`` says the default is when the value itself says little (None); ``const`` is the
    value of the flag given without one (``--ray`` alone)."""
    metadata: dict[str, Any] = {"help": help}
    if const is not None:
        metadata["const"] = const
    if shown is not None:
        metadata["shown"] = shown
    if choices is not None:
        metadata["choices"] = tuple(choices)
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if value is not None}
    if bounds:
        metadata["bounds"] = bounds
    if metavar is not None:
        metadata["metavar"] = metavar
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults must be immutable (use a tuple)")
    return field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    """The CLI flag of a config field: ``label_smoothing`` -> ``--label-smoothing``."""
    return "--" + field_name.replace("_", "-")
