"""Where kenner keeps its caches: ``$KENNER_CACHE`` (default ``~/.cache/kenner``)."""

from __future__ import annotations

import os
from pathlib import Path


def kenner_cache_root() -> Path:
    """kenner's cache folder: ``$KENNER_CACHE`` or ``~/.cache/kenner``."""
    env = os.environ.get("KENNER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kenner"


def default_cache_dir() -> Path:
    """The embedding cache root: ``<kenner cache>/embeddings``."""
    return kenner_cache_root() / "embeddings"
