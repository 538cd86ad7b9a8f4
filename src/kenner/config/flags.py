"""CLI flags generated from the config tree: one ``--flag`` per field, one name and one meaning everywhere.

Flags default to None so that :func:`explicit_layer` can tell the values a user typed from the defaults;
``--help`` shows the real default (and a method's own where it differs) and the choices. Spellings of
earlier versions (:data:`kenner.config.tree.DEPRECATED`) still work and print a warning.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kenner.config.fields import flag_name
from kenner.config.sections import SECTIONS
from kenner.config.tree import DEPRECATED, FIELD_SECTION, section_fields, value_kind

METAVARS = {int: "N", float: "X", str: "TEXT"}


def format_default(value: Any) -> str:
    """A default as ``--help`` shows it: tuples comma-joined, None as ``none``, empty text as ``""``."""
    if value is None or value == ():
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return '""'
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(f: Any, method_defaults: Mapping[str, Mapping[str, Any]], methods: Mapping[str, Sequence[str]]) -> str:
    text = f.metadata.get("help", "")
    if f.name in ("data",):
        return f"{text} (required)"
    others = [
        f"{method}: {format_default(values[f.name])}"
        for method, values in method_defaults.items()
        if f.name in values and values[f.name] != f.default
    ]
    suffix = f"; {', '.join(others)}" if others else ""
    shown = f.metadata.get("shown") or format_default(f.default)
    return f"{text} (default: {shown}{suffix})".replace("%", "%%")


def section_title(section: str, methods: Sequence[str]) -> str:
    doc = (SECTIONS[section].__doc__ or "").strip().rstrip(".")
    doc = doc[:1].lower() + doc[1:]
    used = f" [methods: {', '.join(methods)}]" if methods else ""
    return f"{section}: {doc}{used}"


def add_config_flags(
    parser: argparse.ArgumentParser,
    sections: Iterable[str],
    *,
    method_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    section_methods: Mapping[str, Sequence[str]] | None = None,
    grid: bool = False,
    skip: Iterable[str] = (),
) -> None:
    """One argument group per section, one flag per field (``skip`` leaves fields out).

    ``method_defaults`` (method -> field -> value) shows methods' own defaults in ``--help``;
    ``section_methods`` (section -> methods reading it) titles the groups. With ``grid`` (``kenner sweep``)
    every flag takes several values: comma-separated, or space-separated for list fields like hidden sizes.
    """
    method_defaults = method_defaults or {}
    section_methods = section_methods or {}
    skipped = set(skip)
    for section in sections:
        group = parser.add_argument_group(section_title(section, section_methods.get(section, ())))
        for f in section_fields(section):
            if f.name in skipped:
                continue
            _add_flag(group, f, _help(f, method_defaults, section_methods), grid=grid)
    _add_deprecated(
        parser, {name for section in sections for name in FIELD_SECTION if FIELD_SECTION[name] == section} - skipped
    )


def _add_flag(group: Any, f: Any, help_text: str, *, grid: bool) -> None:
    tp, is_list = value_kind(f.name)
    choices = f.metadata.get("choices")
    if tp is bool and not grid:
        group.add_argument(
            flag_name(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text
        )
        return
    metavar = f.metadata.get("metavar") or ("{" + ",".join(choices) + "}" if choices else METAVARS.get(tp, "V"))
    if grid:
        if is_list:
            group.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                nargs="+",
                metavar=metavar,
                help=help_text + "; several values space-separated",
            )
        else:
            group.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                metavar=metavar,
                help=help_text + "; several values comma-separated",
            )
        return
    optional_value = {"nargs": "?", "const": f.metadata["const"]} if "const" in f.metadata else {}
    group.add_argument(
        flag_name(f.name),
        dest=f.name,
        default=None,
        metavar=metavar,
        choices=choices if choices and not is_list else None,
        help=help_text,
        **optional_value,
    )


class _Deprecated(argparse.Action):
    """An old spelling: warns once and stores the value under the current field."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"kenner: warning: {option_string} is deprecated; use {flag_name(self.dest)}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_deprecated(parser: argparse.ArgumentParser, fields: set[str]) -> None:
    existing = {option for action in parser._actions for option in action.option_strings}
    for old, new in DEPRECATED.items():
        if new in fields and flag_name(old) not in existing:
            parser.add_argument(flag_name(old), dest=new, action=_Deprecated, help=argparse.SUPPRESS)


def explicit_layer(args: argparse.Namespace, sections: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The fields of ``sections`` given on the command line (non-None), nested by section (raw values)."""
    layer: dict[str, dict[str, Any]] = {}
    for section in sections:
        for f in section_fields(section):
            value = getattr(args, f.name, None)
            if value is not None:
                layer.setdefault(section, {})[f.name] = value
    return layer
