"""The encoder contract: preprocessing, the ``Encoder`` base class and its cache fingerprint."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as transforms

from kenner.errors import KennerError

# Bump when a change in kenner (not in the weights) changes the embeddings an encoder computes.
EMBEDDING_FORMAT_VERSION = 1

POOLINGS = ("cls", "mean", "cls+mean")
CROP_MODES = ("center", "squash")
INTERPOLATIONS = {
    "nearest": transforms.InterpolationMode.NEAREST,
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "lanczos": transforms.InterpolationMode.LANCZOS,
    "box": transforms.InterpolationMode.BOX,
    "hamming": transforms.InterpolationMode.HAMMING,
}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the encoder's input tensor.

    ``crop="center"``: resize the short side to ``resize``, then centre-crop ``size`` x ``size``.
    ``crop="squash"``: resize the whole image to ``resize`` x ``resize`` (aspect ratio not kept),
    then centre-crop ``size`` (a no-op when ``resize == size``).
    """

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop: str = "center"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.interpolation not in INTERPOLATIONS:
            raise KennerError(f"unknown interpolation {self.interpolation!r}; use one of {list(INTERPOLATIONS)}")
        if self.crop not in CROP_MODES:
            raise KennerError(f"unknown crop mode {self.crop!r}; use one of {list(CROP_MODES)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise KennerError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if not 0 < self.size <= self.resize:
            raise KennerError(f"need 0 < size <= resize, got size={self.size}, resize={self.resize}")

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A callable turning a PIL RGB image into a float tensor [3, size, size] (resizing in PIL)."""
        resize = self.resize if self.crop == "center" else (self.resize, self.resize)
        return transforms.Compose(
            [
                transforms.Resize(resize, interpolation=INTERPOLATIONS[self.interpolation], antialias=True),
                transforms.CenterCrop(self.size),
                transforms.ToImage(),
                transforms.ToDtype(torch.float32, scale=True),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


def hash_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in the state dict's order."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def hash_file(path: str | os.PathLike) -> str:
    """sha256 of a weights file's bytes; computed once per process for an unchanged file."""
    path = Path(path).resolve()
    stat = path.stat()
    return _hash_file_cached(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _hash_file_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_fingerprint(name: str, weights_hash: str, preprocessing: Preprocessing, pooling: str) -> str:
    """Short sha256 over everything that decides an encoder's embeddings; keys the embedding cache."""
    payload = {
        "name": name,
        "weights": weights_hash,
        "preprocessing": preprocessing.as_dict(),
        "pooling": pooling,
        "format": EMBEDDING_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class Encoder(nn.Module):
    """A frozen image encoder: ``embed(batch [B,3,H,W]) -> [B, dim]`` float32 embeddings.

    Subclasses implement ``forward`` (pixels -> embeddings) and, where the model has patch tokens,
    ``forward_tokens`` (pixels -> [B, T, D]).
    """

    def __init__(self, *, name: str, dim: int, preprocessing: Preprocessing, pooling: str, weights_hash: str) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.preprocessing = preprocessing
        self.pooling = pooling
        self.weights_hash = weights_hash
        self.fingerprint = make_fingerprint(name, weights_hash, preprocessing, pooling)

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL RGB image -> the model's input tensor (the preprocessing; an encoder may detect and align first)."""
        return self.preprocessing.transform()

    @property
    def decode_side(self) -> int:
        """The smallest side an image may be decoded at (JPEG draft mode) before :meth:`transform`."""
        return self.preprocessing.resize

    @property
    def preprocessing_only(self) -> bool:
        """Whether :meth:`transform` is :attr:`preprocessing` alone (what Ray workers redo from it)."""
        return True

    @property
    def device(self) -> torch.device:
        parameter = next(self.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, dim], float32, on the encoder's device."""
        with torch.inference_mode():
            return self(batch.to(self.device)).float()

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        raise KennerError(f"encoder {self.name!r} has no patch tokens; use a ViT (hf:..., timm:vit_...)")

    def embed_tokens(self, batch: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, T, D] (no CLS or register tokens), float32."""
        with torch.inference_mode():
            return self.forward_tokens(batch.to(self.device)).float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, fingerprint={self.fingerprint})"


def download_error(source: str, error: Exception) -> KennerError:
    """The error for a hub download that failed, usually because this machine is offline."""
    return KennerError(
        f"could not download {source} (offline?): {str(error).splitlines()[0] if str(error) else error!r}; "
        "pass a local path: hf:/path/to/dir, local:/path/to/dir or --weights FILE"
    )
