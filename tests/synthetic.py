"""Synthetic data shared by tests: embeddings with known class structure, and a small two-view image dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def blobs(
    sizes: list[int], dim: int = 8, sep: float = 3.0, seed: int = 0, draw: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: ``sizes[c]`` rows of class c around centre c (centres from ``seed``, scaled by
    ``sep``; unit noise from ``draw``, so another ``draw`` is a fresh sample of the same classes)."""
    centres = np.random.default_rng(seed).normal(size=(len(sizes), dim)) * sep
    y = np.repeat(np.arange(len(sizes)), sizes)
    noise = np.random.default_rng([seed, draw]).normal(size=(len(y), dim))
    return (centres[y] + noise).astype(np.float32), y


CLASS_COLOURS = {"aureus": (200, 160, 40), "denarius": (150, 150, 160), "sestertius": (120, 70, 30)}


def write_two_view_dataset(root: Path, groups_per_class: int = 6, photos_per_group: int = 2) -> Path:
    """Coins as obverse/reverse photo pairs; classes differ in colour, obverse and reverse in shape."""
    rng = np.random.default_rng(0)
    rows = []
    for label, colour in CLASS_COLOURS.items():
        for g in range(groups_per_class):
            group = f"{label[:3]}{g:02d}"
            for p in range(photos_per_group):
                sample_id = f"{group}_{p}"
                for view, inset in (("obverse", 8), ("reverse", 20)):
                    pixels = np.full((64, 64, 3), 255, np.uint8)
                    pixels[inset:-inset, inset:-inset] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
                    path = root / view / f"{sample_id}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels).save(path)
                rows.append(
                    {
                        "id": sample_id,
                        "label": label,
                        "group": group,
                        "obverse_path": f"obverse/{sample_id}.png",
                        "reverse_path": f"reverse/{sample_id}.png",
                        "obverse_condition": 2,
                        "reverse_condition": 1.5,
                    }
                )
    manifest = root / "coins.tsv"
    pd.DataFrame(rows).to_csv(manifest, sep="\t", index=False)
    return manifest
