"""How a folder dataset's file names become groups (one group = one physical object).

``prefix`` (the default): the part of the file name before the last ``_`` (``plant001_2.jpg`` -> ``plant001``; a
name without ``_`` is its own group). ``file``: every file is its own group. A regular expression (``--group-regex``)
searched in the file name without its extension: its first capture group (or, without one, the whole match).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kenner.errors import KennerError

GROUP_BY = ("prefix", "file")
# A class is reported when one group holds more than this share of its images (and it has at least MIN_IMAGES).
DOMINANT_SHARE = 0.5
DOMINANT_MIN_IMAGES = 3
_OPTIONS = "--group-by file (every photo its own object) or --group-regex REGEX"


@dataclass(frozen=True)
class Grouping:
    """The grouping rule of a folder dataset."""

    by: str = "prefix"
    regex: str | None = None

    def __post_init__(self) -> None:
        if self.by not in GROUP_BY:
            raise KennerError(f"--group-by must be one of {', '.join(GROUP_BY)}, not {self.by!r}")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as error:
                raise KennerError(f"--group-regex '{self.regex}' is not a regular expression ({error})") from None

    @property
    def is_default(self) -> bool:
        return self.by == "prefix" and self.regex is None

    def group(self, sample_id: str, file: Path) -> str | None:
        """The group of ``file`` (sample id ``sample_id``); None when the regex does not match its name."""
        if self.regex is not None:
            match = re.search(self.regex, file.stem)
            if match is None:
                return None
            found = match.group(1) if match.re.groups else match.group(0)
            return found or None
        if self.by == "file":
            return sample_id
        head, _, _ = file.stem.rpartition("_")
        return head or file.stem

    def rule(self) -> str:
        """The rule in words, for messages."""
        if self.regex is not None:
            return f"the group is what --group-regex '{self.regex}' finds in the file name"
        if self.by == "file":
            return "every file is its own group (--group-by file)"
        return "the group is the part of the file name before the last '_' (IMG_0001.jpg -> IMG)"

    def two_labels_hint(self) -> str:
        """What to do when files of two classes fall into one group."""
        return (
            f"in a folder dataset {self.rule()}, so same-named photos in two classes look like one object; "
            f"rename the files, or use {_OPTIONS}"
        )


def dominant_groups(samples: Iterable[tuple[str, str]], grouping: Grouping) -> list[str]:
    """Warnings for classes where one group holds most of the images (``samples``: (label, group) pairs)."""
    if grouping.by == "file" and grouping.regex is None:
        return []
    groups_of: dict[str, Counter] = defaultdict(Counter)
    for label, group in samples:
        groups_of[label][group] += 1
    messages = []
    for label in sorted(groups_of):
        counts = groups_of[label]
        total = sum(counts.values())
        group, largest = min(counts.items(), key=lambda item: (-item[1], item[0]))
        if total >= DOMINANT_MIN_IMAGES and largest > DOMINANT_SHARE * total:
            messages.append(
                f"class {label!r}: group {group!r} holds {largest} of its {total} images and a group "
                f"never crosses splits ({grouping.rule()}); if these are not photos of one object, "
                f"use {_OPTIONS}"
            )
    return messages
