"""Atomic writes and strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from kenner.io import atomic_write_json, read_json


def test_atomic_json_writes_strict_json_with_null_for_nan(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "sub" / "m.json", {"a": math.nan, "b": [1.0, math.inf], "c": (2, "x")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": [2, "x"]}
    assert read_json(path)["c"] == [2, "x"]
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temporary file left behind


def test_numpy_floats_are_checked_too(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "m.json", {"x": float(np.float64("nan")), "y": float(np.float32(0.5))})
    assert json.loads(path.read_text()) == {"x": None, "y": 0.5}
