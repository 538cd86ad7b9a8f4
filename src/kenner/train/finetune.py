"""Fine-tuning an encoder's backbone with a head, from pixels: :func:`fit_finetune`.

One epoch: (frozen phase: head only, backbone in eval mode) -> augmented training batches with mixed
precision and gradient accumulation -> EMA update after every optimizer step -> validation of the model and
of its EMA -> console line, ``on_epoch(record)``, schedule and early stopping -> ``checkpoints/latest_model.pt``
(plus ``best_model.pt`` when the epoch is the best, ``checkpoint_epoch_N.pt`` every N epochs). A rerun
continues from ``latest_model.pt``; with the same seed the result equals an uninterrupted run. The run driver
evaluates the returned :class:`~kenner.train.finetuned.FinetunedModel` and writes the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, RandomSampler, Sampler

from kenner.config.tree import RunConfig
from kenner.encoders import create_encoder
from kenner.errors import KennerError
from kenner.heads.training import class_weights
from kenner.train.augment import eval_preprocessing, train_transform
from kenner.train.checkpoint import BEST, LATEST, epoch_name, resume_path, save_checkpoint
from kenner.train.data import ImageSamples, make_loader, train_sampler, view_plan
from kenner.train.distributed import backend_for, barrier, process_group
from kenner.train.epoch import epoch_line
from kenner.train.finetuned import FinetunedModel, absolute_encoder
from kenner.train.model import HEAD_FIELDS, build_model
from kenner.train.precision import apply_backend_flags, auto_settings, detect_device
from kenner.train.trainer import Trainer

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def fit_finetune(
    paths: list[dict[str, Path]],
    y: np.ndarray,
    split: np.ndarray,
    class_names: list[str],
    cfg: RunConfig,
    *,
    out_dir: Path,
    resume: str | None = None,
    fresh: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FinetunedModel:
    """Fine-tune on the ``train`` rows, validate on the ``val`` rows (``test`` rows are not touched).

    ``paths[i]`` maps view name -> image of sample ``i``, ``y[i]`` is its class index into ``class_names``,
    ``split[i]`` one of ``train``/``val``/``test``. Checkpoints go to ``out_dir/checkpoints``; ``resume``
    names a checkpoint to continue from, ``fresh`` ignores existing ones. ``on_epoch`` gets each epoch's
    history record (:mod:`kenner.loop.history`). With ``--nproc N`` (> 1) this process is rank 0 of N
    data-parallel processes (:mod:`kenner.train.distributed`): the global batch is still ``--batch-size``.
    """
    checkpoint_dir = Path(out_dir) / CHECKPOINT_DIR
    start_from = resume_path(checkpoint_dir, resume=resume, fresh=fresh)
    args = (paths, y, split, class_names, cfg, checkpoint_dir, start_from)
    world = cfg["nproc"]
    if world == 1:
        return _fit(*args, on_epoch=on_epoch)
    if cfg["sampler"] != "random":
        raise KennerError(f"--sampler {cfg['sampler']} draws whole batches in one process; use it with --nproc 1")
    backend = backend_for(detect_device(cfg["device"]).device, world)
    with process_group(world, backend, _fit, args):
        return _fit(*args, on_epoch=on_epoch, rank=0, world=world)


def _fit(
    paths: list[dict[str, Path]],
    y: np.ndarray,
    split: np.ndarray,
    class_names: list[str],
    cfg: RunConfig,
    checkpoint_dir: Path,
    start_from: Path | None,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    rank: int = 0,
    world: int = 1,
) -> FinetunedModel:
    """The training of :func:`fit_finetune` as rank ``rank`` of ``world`` processes (only rank 0 writes)."""
    y, split = np.asarray(y, dtype=np.int64), np.asarray(split)
    train_idx, val_idx = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if len(train_idx) == 0:
        raise KennerError("the split has no training samples; check --split-ratios and the dataset size")
    if cfg["freeze_epochs"] >= cfg["epochs"]:
        raise KennerError(f"--freeze-epochs must be below --epochs ({cfg['epochs']}), got {cfg['freeze_epochs']}")
    pos_index = _pos_index(cfg["pos_class"], class_names)
    device = detect_device(cfg["device"])
    if world > 1 and device.device.startswith("cuda") and torch.cuda.device_count() >= world:
        device = dataclasses.replace(device, device=f"cuda:{rank}")  # one GPU per process
        torch.cuda.set_device(rank)
    settings = auto_settings(
        device,
        precision=cfg["precision"],
        num_workers=cfg["num_workers"],
        accum_steps=cfg["accum_steps"],
    )
    apply_backend_flags(settings, deterministic=cfg["deterministic"])
    log.info("fine-tuning on %s", settings.describe())
    views, combine = view_plan(list(paths[0]), cfg["views"])
    with determinism(cfg["deterministic"]):
        seed_everything(cfg["seed"])
        encoder = create_encoder(
            cfg["encoder"], weights=cfg["weights"], pooling=cfg["pooling"], device="cpu", backend="torch"
        )
        pre = eval_preprocessing(encoder.preprocessing, cfg["img_size"])
        head = {name: cfg[name] for name in HEAD_FIELDS}
        model = build_model(
            encoder, head, n_views=len(views), combine=combine, n_classes=len(class_names), seed=cfg["seed"]
        ).to(settings.device)

        def images(indices: np.ndarray, transform: Any) -> ImageSamples:
            return ImageSamples(
                [paths[i] for i in indices],
                y[indices],
                views,
                transform,
                background=cfg["background_color"],
                max_side=pre.resize,
            )

        micro = math.ceil(cfg["batch_size"] / settings.accum_steps / world)  # per process: the same global batch
        train_set = images(train_idx, train_transform(pre, cfg["aug_preset"], cfg["aug_backend"]))
        if world > 1:
            sampler: Sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg["seed"])
        else:
            sampler = train_sampler(cfg["sampler"], y[train_idx], micro, cfg["pk_k"]) or RandomSampler(train_set)
        per_rank = math.ceil(len(train_idx) / world)
        train_loader = make_loader(train_set, micro, settings, sampler=sampler, drop_last=per_rank > micro)
        val_loader = make_loader(images(val_idx, pre.transform()), micro, settings) if len(val_idx) else None
        weights = class_weights(np.bincount(y[train_idx], minlength=len(class_names)), cfg.fields("loss"))
        weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=settings.device)
        trainer = Trainer.create(cfg, settings, model, validated=val_loader is not None, weight=weight)
        if start_from is not None:
            trainer.restore(start_from, checkpoint_dir)
        net = None
        if world > 1:  # averages gradients across the processes; frozen epochs leave the backbone without any
            ids = [rank] if device.device.startswith("cuda:") else None
            net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=cfg["freeze_epochs"] > 0)
        started = time.perf_counter()
        while not trainer.done:
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(trainer.state.epoch)
            record, improved = trainer.epoch(train_loader, val_loader, y[val_idx], pos_index, forward=net)
            if rank == 0:
                log.info(epoch_line(record, cfg["epochs"]))
                if on_epoch is not None:
                    on_epoch(record)
                targets = [checkpoint_dir / LATEST, *([checkpoint_dir / BEST] if improved else [])]
                if cfg["checkpoint_every"] and record["epoch"] % cfg["checkpoint_every"] == 0:
                    targets.append(checkpoint_dir / epoch_name(record["epoch"]))
                save_checkpoint(trainer.checkpoint(), *targets)
            barrier(world)
        fit_seconds = time.perf_counter() - started
        model.load_state_dict(trainer.best_weights(checkpoint_dir))
    spec, weights_file = absolute_encoder(cfg["encoder"], cfg["weights"])
    history = trainer.state.history
    info = {
        "encoder": spec,
        "weights": weights_file,
        "pooling": cfg["pooling"],
        "view_names": views,
        "combine": combine,
        "class_names": list(class_names),
        "background_color": list(cfg["background_color"]),
        "head": head,
        "preprocessing": pre.as_dict(),
        "hardware": settings.describe(),
        "best_epoch": int(trainer.stopper.best_epoch[0]),
        "best_source": trainer.state.best_source,
        "monitor": trainer.stopper.monitor,
        "best_value": _finite_or_none(trainer.stopper.best_value[0]),
        "fit_seconds": fit_seconds,
        "epochs_seconds": sum(record["seconds"] for record in history),
    }
    return FinetunedModel(model, info, history)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside the block when ``enabled``."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _pos_index(pos_class: str | None, class_names: list[str]) -> int | None:
    if pos_class is None:
        return None
    if pos_class not in class_names:
        raise KennerError(
            f"--pos-class {pos_class!r} is not a class of the dataset; classes: {', '.join(class_names[:20])}"
        )
    return class_names.index(pos_class)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
