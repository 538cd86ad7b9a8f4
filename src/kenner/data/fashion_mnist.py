"""Fashion-MNIST: the real dataset behind ``kenner demo`` and several benchmarks.

Read from Debian's ``dataset-fashion-mnist`` package (IDX files) or, when online, from the public
mirror, and exported as a class-folder dataset of PNG files that kenner reads like any other.
"""

from __future__ import annotations

import gzip
import io
import logging
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from kenner.errors import KennerError
from kenner.io import atomic_write_bytes
from kenner.paths import kenner_cache_root
from kenner.progress import progress_bar

log = logging.getLogger(__name__)

CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
MIRROR_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into an array (big-endian header, unsigned bytes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise KennerError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise KennerError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(shape))} values)")
    return body.reshape(shape)


def locate(root: Path | None = None, *, download: bool = True) -> Path:
    """The folder holding the IDX files: ``root``, Debian's folder, or a download into the cache."""
    candidates = [root] if root else [DEBIAN_DIR, _download_dir()]
    for folder in candidates:
        if folder and all((folder / name).exists() for pair in FILES.values() for name in pair):
            return folder
    if root is None and download:
        return _download(_download_dir())
    raise KennerError(
        f"Fashion-MNIST not found in {candidates[0]}; install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or run online to download it"
    )


def _download_dir() -> Path:
    return kenner_cache_root() / "fashion-mnist"


def _download(folder: Path) -> Path:
    for name in (name for pair in FILES.values() for name in pair):
        target = folder / name
        if target.exists():
            continue
        log.info("downloading %s", MIRROR_URL + name)
        try:
            with urllib.request.urlopen(MIRROR_URL + name, timeout=60) as response:
                atomic_write_bytes(target, response.read())
        except OSError as error:
            raise KennerError(
                f"Fashion-MNIST is not installed and could not be downloaded ({error}); "
                "install Debian's dataset-fashion-mnist package"
            ) from None
    return folder


def load(split: str = "train", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of the ``train`` or ``test`` split."""
    folder = locate(root)
    images_name, labels_name = FILES[split]
    images, labels = read_idx(folder / images_name), read_idx(folder / labels_name)
    if len(images) != len(labels):
        raise KennerError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` random indices of every class, sorted."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def export_folder(
    out_dir: Path, *, per_class: int, seed: int = 0, split: str = "train", root: Path | None = None
) -> Path:
    """Write a stratified subset as ``out_dir/<class>/fmnist<index>.png`` (each image its own group)."""
    images, labels = load(split, root)
    indices = stratified_indices(labels, per_class, seed)
    for index in progress_bar(indices, desc="exporting Fashion-MNIST", unit="img"):
        path = out_dir / CLASSES[labels[index]] / f"fmnist{split}{index:05d}.png"
        if not path.exists():
            buffer = io.BytesIO()
            Image.fromarray(images[index]).save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
    return out_dir
