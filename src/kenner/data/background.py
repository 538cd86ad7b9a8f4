"""A background ("none of these") class from a folder of images of no class of interest.

``--background-dir DIR --bg N`` adds N background images per foreground class to every split. Each
split draws from its own disjoint share of the folder (shares proportional to the split sizes), so
no background image is in two splits and a saved split of the real data stays valid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kenner.data.manifest import IMAGE_EXTENSIONS
from kenner.errors import KennerError

BACKGROUND = "background"
SPLITS = ("train", "val", "test")


def background_images(directory: str | Path) -> list[Path]:
    """Every image file under ``directory`` (recursively, sorted); a clear error when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KennerError(f"--background-dir {directory}: not a folder")
    paths = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not paths:
        raise KennerError(f"--background-dir {directory}: no images found")
    return paths


def background_label(class_names: list[str], background_class: str | None) -> tuple[int, list[str]]:
    """The label background rows get, and the class names with it: ``background_class`` when it is a
    class of the data, else a new last class ``background``."""
    if background_class is not None and background_class in class_names:
        return class_names.index(background_class), list(class_names)
    if BACKGROUND in class_names:
        raise KennerError(f"the data already has a class {BACKGROUND!r}; use --background-class {BACKGROUND}")
    return len(class_names), [*class_names, BACKGROUND]


def draw_background(
    split: np.ndarray, y: np.ndarray, label: int, n_pool: int, n_per_class: int, seed: int
) -> dict[str, np.ndarray]:
    """Pool indices of the background rows of each split: ``n_per_class`` per foreground class of that
    split (every label but ``label``), without replacement while the split's share of the pool lasts."""
    if n_pool == 0:
        raise KennerError("no background images to draw from; give --background-dir images")
    present = [name for name in SPLITS if (split == name).any()]
    sizes = np.array([(split == name).sum() for name in present], dtype=float)
    order = np.random.default_rng(seed).permutation(n_pool)
    cuts = np.round(np.cumsum(sizes / sizes.sum()) * n_pool).astype(int)
    drawn = {}
    for name, share in zip(present, np.split(order, cuts[:-1]), strict=True):
        n = n_per_class * len(np.setdiff1d(np.unique(y[split == name]), [label]))
        if n and not len(share):
            raise KennerError(
                f"{n_pool} background image(s) are too few to give the {name} split its own; "
                "add images to --background-dir"
            )
        rows = np.random.default_rng(seed).choice(len(share), size=n, replace=n > len(share))
        drawn[name] = share[rows]
    return drawn
