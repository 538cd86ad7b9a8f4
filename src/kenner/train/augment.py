"""Image transforms of fine-tuning: augmentation presets for training, resize + centre crop for evaluation.

Presets (training only; evaluation always resizes the short side and centre-crops):

- ``none``: the evaluation transform.
- ``light``: RandomResizedCrop (scale 0.8-1.0), horizontal flip, rotation up to 15 degrees and a mild
  ColorJitter (brightness 0.2, contrast 0.2, saturation 0.1, hue 0.05).
- ``strong``: RandomResizedCrop (scale 0.6-1.0), flip, affine (rotation, shift, scale, shear),
  perspective, stronger colour jitter, local contrast (CLAHE), blur, Gaussian noise and grid dropout.
  torchvision has no CLAHE or grid dropout: its ``strong`` uses histogram equalisation and random
  erasing in their place.

Both backends draw their randomness from torch's global RNG (albumentations is reseeded from it for
every image), so data-loader seeding and checkpointed RNG states make augmentation reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from kenner.encoders.base import INTERPOLATIONS, Preprocessing
from kenner.errors import KennerError

Transform = Callable[[Image.Image], torch.Tensor]
LIGHT_JITTER = (0.2, 0.2, 0.1, 0.05)
STRONG_JITTER = (0.3, 0.3, 0.2, 0.05)


def eval_preprocessing(encoder_pre: Preprocessing, img_size: int | None) -> Preprocessing:
    """The encoder's preprocessing at ``img_size`` (same crop ratio, mean, std, interpolation)."""
    if img_size is None or img_size == encoder_pre.size:
        return encoder_pre
    resize = max(img_size, round(img_size * encoder_pre.resize / encoder_pre.size))
    return Preprocessing(
        size=img_size,
        resize=resize,
        mean=encoder_pre.mean,
        std=encoder_pre.std,
        interpolation=encoder_pre.interpolation,
        crop=encoder_pre.crop,
    )


def train_transform(pre: Preprocessing, preset: str, backend: str = "torchvision") -> Transform:
    """The training transform of ``preset`` (none | light | strong) in ``backend`` (torchvision |
    albumentations)."""
    if preset == "none":
        return pre.transform()
    if preset not in ("light", "strong"):
        raise KennerError(f"unknown augmentation preset {preset!r}; use none, light or strong")
    if backend == "torchvision":
        return _torchvision(pre, strong=preset == "strong")
    if backend in ("albumentations", "alb"):
        return AlbumentationsTransform(pre, strong=preset == "strong")
    raise KennerError(f"unknown augmentation backend {backend!r}; use torchvision or albumentations")


def _torchvision(pre: Preprocessing, *, strong: bool) -> Transform:
    interpolation = INTERPOLATIONS[pre.interpolation]
    steps: list[Callable] = [
        T.RandomResizedCrop(pre.size, scale=(0.6 if strong else 0.8, 1.0), interpolation=interpolation, antialias=True),
        T.RandomHorizontalFlip(),
    ]
    if strong:
        steps += [
            T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=5, interpolation=interpolation),
            T.RandomPerspective(distortion_scale=0.2, p=0.3),
            T.ColorJitter(*STRONG_JITTER),
            T.RandomEqualize(p=0.2),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        ]
    else:
        steps += [T.RandomRotation(15, interpolation=interpolation), T.ColorJitter(*LIGHT_JITTER)]
    steps += [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
    if strong:
        steps.append(T.RandomApply([T.GaussianNoise(sigma=0.03, clip=True)], p=0.2))
    steps.append(T.Normalize(pre.mean, pre.std))
    if strong:
        steps.append(T.RandomErasing(p=0.2, scale=(0.02, 0.15), value=0))
    return T.Compose(steps)


class AlbumentationsTransform:
    """An albumentations pipeline on a PIL image, returning a normalised float tensor [3, size, size]."""

    def __init__(self, pre: Preprocessing, *, strong: bool) -> None:
        import albumentations as A
        from albumentations.pytorch import ToTensorV2

        size = (pre.size, pre.size)
        steps: list = [A.RandomResizedCrop(size=size, scale=(0.6 if strong else 0.8, 1.0)), A.HorizontalFlip()]
        if strong:
            steps += [
                A.Affine(rotate=(-15, 15), translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), shear=(-5, 5), p=0.5),
                A.Perspective(scale=(0.02, 0.06), p=0.3),
                A.ColorJitter(*STRONG_JITTER, p=0.8),
                A.CLAHE(clip_limit=2.0, p=0.2),
                A.GaussianBlur(sigma_limit=(0.1, 1.5), p=0.2),
                A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
                A.GridDropout(ratio=0.3, p=0.2),
            ]
        else:
            steps += [A.Rotate(limit=15, p=0.5), A.ColorJitter(*LIGHT_JITTER, p=0.8)]
        steps += [A.Normalize(mean=pre.mean, std=pre.std), ToTensorV2()]
        self.pipeline = A.Compose(steps)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        self.pipeline.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        return self.pipeline(image=np.asarray(image))["image"]
