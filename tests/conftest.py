"""Shared test helpers: generated images and small datasets on disk (no real data, no network).

- ``write_image(path, ...)`` / fixture ``make_image``: write one image with PIL.
- fixture ``grouped_folder_dataset``: a class-folder tree ``root/<class>/<ID>_<seq>.<ext>``.
- fixture ``two_view_manifest``: a coin-style TSV manifest with obverse and reverse images.
- ``BAD_FILES``: writers of a missing, zero-byte, non-image, truncated and corrupt image file.
- autouse ``_kenner_cache``: ``KENNER_CACHE`` points into the session's temporary folder.

Every generated image has distinct bytes (a little seeded noise), so content hashes never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Class colours of the fixtures: distinct enough for a tiny model to separate the classes.
CLASS_COLORS = {"alpha": (220, 40, 40), "beta": (40, 200, 60), "gamma": (50, 70, 230)}

# grouped_folder_dataset: class -> file names. A3.png has no "_" (its own group "A3").
FOLDER_LAYOUT = {
    "alpha": ["A1_1.jpg", "A1_2.jpg", "A2_1.jpg", "A3.png"],
    "beta": ["B1_1.jpg", "B1_2.jpg", "B2_1.jpg", "B3_1.jpg"],
    "gamma": ["G1_1.jpg", "G2_1.jpg", "G2_2.jpg", "G3_1.png"],
}
FOLDER_IMAGE_SIZE = (40, 32)  # (width, height)

MANIFEST_COLUMNS = ["id", "label", "group", "obverse_path", "reverse_path", "obverse_condition", "reverse_condition"]
# two_view_manifest rows: (id, label, group, obverse_condition, reverse_condition); "" = not rated.
MANIFEST_ROWS = [
    ("c1", "aureus", "g1", "2", "1.5"),
    ("c2", "aureus", "g1", "1", ""),
    ("c3", "aureus", "g2", "", ""),
    ("c4", "denarius", "g3", "0.5", "0"),
    ("c5", "denarius", "g4", "2", "2"),
    ("c6", "denarius", "g4", "1", "1"),
]
MANIFEST_IMAGE_SIZE = (36, 36)


def write_image(
    path: str | Path,
    size: tuple[int, int] = (32, 32),
    mode: str = "RGB",
    color: int | tuple[int, ...] = (200, 30, 30),
    *,
    noise: int = 0,
    seed: int = 0,
    **save_kwargs,
) -> Path:
    """Write a solid ``color`` image of ``size`` (width, height) in PIL ``mode`` to ``path``.

    The format follows the extension; parent folders are created. ``noise`` > 0 adds seeded uniform
    noise of that amplitude (modes RGB and L only). ``save_kwargs`` go to ``Image.save`` (e.g. ``exif``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size, color)
    if noise:
        if mode not in ("RGB", "L"):
            raise ValueError(f"noise is only supported for RGB and L images, not {mode}")
        values = np.asarray(img, dtype=np.int16)
        jitter = np.random.default_rng(seed).integers(-noise, noise + 1, size=values.shape)
        img = Image.fromarray(np.clip(values + jitter, 0, 255).astype(np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        save_kwargs.setdefault("quality", 95)
    img.save(path, **save_kwargs)
    return path


@pytest.fixture(autouse=True)
def _kenner_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands run without --cache-dir (kenner split hashes images too) use a cache of the test session,
    never the user's ~/.cache/kenner."""
    monkeypatch.setenv("KENNER_CACHE", str(tmp_path_factory.getbasetemp() / "kenner_cache"))


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """The ``write_image(path, size=(32, 32), mode="RGB", color=..., noise=0, seed=0)`` helper."""
    return write_image


@pytest.fixture
def grouped_folder_dataset(tmp_path: Path) -> Path:
    """``tmp_path/folder/<class>/<ID>_<seq>.<ext>`` per ``FOLDER_LAYOUT``; returns the root.

    3 classes (alpha, beta, gamma) x 4 images, 40x32 px, colour per class from ``CLASS_COLORS``;
    groups: alpha A1 (2 images), A2, A3 (no "_"); beta B1 (2), B2, B3; gamma G1, G2 (2), G3.
    """
    root = tmp_path / "folder"
    seed = 0
    for label, names in FOLDER_LAYOUT.items():
        for name in names:
            write_image(root / label / name, FOLDER_IMAGE_SIZE, color=CLASS_COLORS[label], noise=10, seed=seed)
            seed += 1
    return root


@pytest.fixture
def two_view_manifest(tmp_path: Path) -> Path:
    """``tmp_path/coins/manifest.tsv`` per ``MANIFEST_COLUMNS``/``MANIFEST_ROWS``; returns its path.

    Image paths are relative (``images/<id>_obv.jpg``, ``images/<id>_rev.jpg``, 36x36 px); labels
    aureus (c1-c3) and denarius (c4-c6); groups g1 {c1, c2}, g2 {c3}, g3 {c4}, g4 {c5, c6}.
    """
    folder = tmp_path / "coins"
    lines = ["\t".join(MANIFEST_COLUMNS)]
    for index, (sample_id, label, group, obverse_condition, reverse_condition) in enumerate(MANIFEST_ROWS):
        color = (200, 170, 40) if label == "aureus" else (160, 160, 170)
        obverse = f"images/{sample_id}_obv.jpg"
        reverse = f"images/{sample_id}_rev.jpg"
        write_image(folder / obverse, MANIFEST_IMAGE_SIZE, color=color, noise=10, seed=2 * index)
        write_image(folder / reverse, MANIFEST_IMAGE_SIZE, color=color, noise=10, seed=2 * index + 1)
        lines.append("\t".join([sample_id, label, group, obverse, reverse, obverse_condition, reverse_condition]))
    manifest = folder / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def _missing(path: Path) -> None:
    """Leave ``path`` absent."""


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _text_named_jpg(path: Path) -> None:
    path.write_text("not a picture")


def _truncated_jpeg(path: Path) -> None:
    write_image(path, size=(64, 64), noise=60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_png(path: Path) -> None:
    write_image(path, size=(64, 64), noise=60)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(40)  # compressed pixel data destroyed, CRC no longer matches
    path.write_bytes(bytes(data))


# Bad files: (file name, writer(path), words the error message must contain).
BAD_FILES = [
    ("missing.jpg", _missing, "file not found"),
    ("empty.jpg", _zero_bytes, "empty file"),
    ("notes.jpg", _text_named_jpg, "not an image"),
    ("cut.jpg", _truncated_jpeg, "truncated"),
    ("broken.png", _corrupt_png, "corrupt"),
]


@pytest.fixture(scope="session")
def _ray_session() -> Iterator[None]:
    """One local Ray instance for the whole test session (started by the first test that needs it)."""
    ray = pytest.importorskip("ray")
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session: None) -> None:
    """A local Ray instance with 2 CPUs (the session's; started again if a simulated cluster replaced it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
