"""Augmentation presets: shapes, train-only randomness, reproducibility from torch's RNG, eval sizes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from kenner.encoders.base import Preprocessing
from kenner.errors import KennerError
from kenner.train.augment import eval_preprocessing, train_transform

PRE = Preprocessing(size=32, resize=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def image() -> Image.Image:
    pixels = torch.arange(48 * 40 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(40, 48, 3)
    return Image.fromarray(pixels.numpy())


@pytest.mark.parametrize("backend", ["torchvision", "albumentations", "alb"])
@pytest.mark.parametrize("preset", ["light", "strong"])
def test_presets_are_random_but_reproducible(backend: str, preset: str) -> None:
    transform = train_transform(PRE, preset, backend)
    torch.manual_seed(1)
    first = [transform(image()) for _ in range(4)]
    torch.manual_seed(1)
    again = [transform(image()) for _ in range(4)]
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.float32 for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(first[0], x) for x in first[1:])


def test_none_preset_is_the_eval_transform() -> None:
    assert torch.equal(train_transform(PRE, "none")(image()), PRE.transform()(image()))


def test_eval_preprocessing_keeps_the_crop_ratio() -> None:
    assert eval_preprocessing(PRE, None) is PRE
    pre = eval_preprocessing(Preprocessing(size=224, resize=256, mean=(0, 0, 0), std=(1, 1, 1)), 480)
    assert (pre.size, pre.resize) == (480, 549)
    assert PRE.transform()(image()).shape == (3, 32, 32)


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(KennerError, match="preset"):
        train_transform(PRE, "medium")
    with pytest.raises(KennerError, match="backend"):
        train_transform(PRE, "light", "kornia")
