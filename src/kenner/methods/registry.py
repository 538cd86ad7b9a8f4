"""The method registry: every way to classify is one :class:`MethodSpec`, registered by name.

A spec is light (no torch): its name, a summary for ``--help``, the config sections it reads besides the
common ones, the defaults it gives fields, and where its implementation lives (``module:Class``, imported
only when the method runs). The implementation is a :class:`kenner.methods.base.Method`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kenner.config.sections import COMMON_SECTIONS
from kenner.registry import Registry

if TYPE_CHECKING:
    from kenner.methods.base import Method


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: what it reads and where it lives. ``uses_embeddings``: it reads the cached
    embeddings (the driver computes them before timing the fit), rather than pixels."""

    name: str
    summary: str
    sections: tuple[str, ...]
    entry: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    uses_embeddings: bool = True

    @property
    def all_sections(self) -> tuple[str, ...]:
        """The common sections and the method's own, in the config tree's order."""
        return (*COMMON_SECTIONS, *self.sections)

    def load(self) -> type[Method]:
        """The implementation class (imports it now)."""
        module, _, name = self.entry.partition(":")
        return getattr(importlib.import_module(module), name)


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` under its name."""
    return METHODS.register(spec.name)(spec)
