"""Progress bars: on stderr, shown only on a terminal, and never with ``--quiet`` (``KENNER_QUIET=1``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
QUIET = "KENNER_QUIET"


def quiet() -> bool:
    """``--quiet`` was given (the flag sets ``KENNER_QUIET=1``, which worker processes inherit)."""
    return os.environ.get(QUIET, "").strip().lower() in ("1", "true", "yes", "on")


def progress_bar(iterable: Iterable[T] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on stderr; hidden when not on a terminal, with ``--quiet``, or ``show=False``."""
    return tqdm(iterable, disable=None if show and not quiet() else True, **kwargs)
