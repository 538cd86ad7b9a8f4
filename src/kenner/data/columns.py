"""The extra columns of a manifest: misspelled view columns and undeclared image-path columns are errors, the rest
is metadata carried with each sample.

A column is taken for a misspelled ``<view>_path``/``<view>_condition`` (or ``path``) when its last word is close to
``path`` or ``condition`` (``obverse_pth``, ``reverse-paths``, ``obverse_conditon``) or it ends in ``path`` without a
separator (``obversepath``), and for a misspelled ``group`` when it is close to it (``gruop``, ``groups``). A column
whose every non-empty value names an image file (by extension, URLs aside) holds image paths: it must be a view.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

KNOWN = ("id", "label", "group")
_SEPARATORS = re.compile(r"[_\-\s.]+")


def misspelled_column(name: str) -> str | None:
    """The column ``name`` was probably meant to be (``obverse_pth`` -> ``obverse_path``, ``grp`` -> ``group``), or
    None."""
    if difflib.get_close_matches(name, ["group"], n=1, cutoff=0.8):
        return "group"
    words = [word for word in _SEPARATORS.split(name) if word]
    if not words:
        return None
    last, stem = words[-1], "_".join(words[:-1])
    for word, cutoff in (("path", 0.8), ("condition", 0.8)):
        if difflib.get_close_matches(last, [word], n=1, cutoff=cutoff):
            return f"{stem}_{word}" if stem else word
    if last.endswith("path") and len(last) > len("path"):
        return f"{last.removesuffix('path')}_path"
    return None


def holds_image_paths(values: Iterable[str], extensions: Iterable[str]) -> str | None:
    """The first value when every non-empty value ends in an image extension (URLs excepted), else None."""
    suffixes = tuple(extensions)
    first = None
    for value in values:
        if not value:
            continue
        if "://" in value or not value.lower().endswith(suffixes):
            return None
        first = first or value
    return first


def metadata_columns(header: Sequence[str], used: Iterable[str]) -> list[str]:
    """The columns that are neither required, group, view nor condition columns, in header order."""
    taken = {*KNOWN, *used}
    return [name for name in header if name not in taken]
