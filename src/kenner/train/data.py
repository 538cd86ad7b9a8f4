"""The images of fine-tuning: which views the network reads, the dataset of decoded and transformed
images, and the training order (shuffled, inverse-frequency weighted, or P x K)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler
from torch.utils.data import Dataset as TorchDataset

from kenner.data.images import load_image
from kenner.encoders.views import ALIASES, COMBINED_MODES, combine_views
from kenner.errors import KennerError
from kenner.train.augment import Transform
from kenner.train.precision import TrainSettings


class ImageSamples(TorchDataset):
    """Decoded, transformed images of samples: item ``i`` is ``(pixels [V, 3, H, W], label)``."""

    def __init__(
        self,
        paths: list[dict[str, Path]],
        labels: np.ndarray,
        views: list[str],
        transform: Transform,
        *,
        background: tuple[int, ...],
        max_side: int,
    ) -> None:
        self.paths, self.labels, self.views, self.transform = paths, labels, views, transform
        self.background, self.max_side = tuple(background), max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images = [
            load_image(self.paths[index][view], background=self.background, max_side=self.max_side)
            for view in self.views
        ]
        return torch.stack([self.transform(image) for image in images]), int(self.labels[index])


def view_plan(views: list[str], mode: str) -> tuple[list[str], str]:
    """The views the model reads and how their features combine (``avg`` or ``concat``) for a ``--views``
    mode (a view name, ``avg``, ``concat`` or a coin alias, as in ``combine_views``)."""
    resolved = ALIASES.get(mode, mode)
    if resolved in COMBINED_MODES:
        return list(views), resolved
    probe = {view: np.full((1, 1), index, dtype=np.float32) for index, view in enumerate(views)}
    return [views[int(combine_views(probe, mode)[0, 0])]], "avg"


def train_sampler(sampler: str, y_train: np.ndarray, micro_batch: int, pk_k: int) -> Sampler | None:
    """``weighted``: inverse-frequency ``WeightedRandomSampler``; ``pk``: P x K micro-batches
    (pytorch-metric-learning's ``MPerClassSampler``); ``random``: None (the loader shuffles)."""
    if sampler == "weighted":
        counts = np.bincount(y_train)
        return WeightedRandomSampler(
            torch.as_tensor(1.0 / counts[y_train], dtype=torch.double), num_samples=len(y_train), replacement=True
        )
    if sampler == "pk":
        present = len(np.unique(y_train))
        if micro_batch % pk_k or micro_batch > present * pk_k:
            raise KennerError(
                f"--sampler pk: a micro-batch of {micro_batch} images (--batch-size / --accum-steps) must be a "
                f"multiple of --pk-k {pk_k} and at most {present} classes x {pk_k}"
            )
        return MPerClassSampler(y_train, m=pk_k, batch_size=micro_batch, length_before_new_iter=len(y_train))
    return None


def make_loader(
    dataset: TorchDataset,
    batch_size: int,
    settings: TrainSettings,
    *,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=settings.num_workers,
        pin_memory=settings.device.startswith("cuda"),
        drop_last=drop_last,
    )
