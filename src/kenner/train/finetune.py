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
from kenner.heads.probe import linear_probe
from kenner.heads.training import class_weights
from kenner.train.augment import eval_preprocessing, train_transform
from kenner.train.checkpoint import BEST, LATEST, epoch_name, resume_path, save_checkpoint
from kenner.train.data import ImageSamples, make_loader, train_sampler, view_plan
from kenner.train.distributed import backend_for, barrier, process_group
from kenner.train.epoch import epoch_line, predict_logits, validation_metrics
from kenner.train.finetuned import FinetunedModel, absolute_encoder
from kenner.train.model import HEAD_FIELDS, FinetuneNet, build_model
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
    head_init: tuple[np.ndarray, np.ndarray] | None = None,
) -> FinetunedModel:
    """Fine-tune on the ``train`` rows, validate on the ``val`` rows (``test`` rows are not touched).

    ``paths[i]`` maps view name -> image of sample ``i``, ``y[i]`` is its class index into ``class_names``,
    ``split[i]`` one of ``train``/``val``/``test``. Checkpoints go to ``out_dir/checkpoints``; ``resume``
    names a checkpoint to continue from, ``fresh`` ignores existing ones. ``on_epoch`` gets each epoch's
    history record (:mod:`kenner.loop.history`). ``head_init``: the linear head's starting ``(weight, bias)``
    (LP-FT's probe, or zero-shot weights). With ``wise_ft`` the returned weights are the starting and the
    best fine-tuned ones interpolated with the alpha that scores best on val (WiSE-FT, Wortsman et al. 2022).
    With ``--nproc N`` (> 1) this process is rank 0 of N data-parallel processes
    (:mod:`kenner.train.distributed`): the global batch is still ``--batch-size``.
    """
    checkpoint_dir = Path(out_dir) / CHECKPOINT_DIR
    start_from = resume_path(checkpoint_dir, resume=resume, fresh=fresh)
    args = (paths, y, split, class_names, cfg, checkpoint_dir, start_from, head_init)
    world = cfg["nproc"]
    if world == 1:
        return _fit(*args, on_epoch=on_epoch)
    if cfg["sampler"] != "random":
        raise KennerError(f"--sampler {cfg['sampler']} draws whole batches in one process; use it with --nproc 1")
    if cfg["loss"] == "supcon":
        raise KennerError("--loss supcon trains in one process; use it with --nproc 1")
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
    head_init: tuple[np.ndarray, np.ndarray] | None,
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
    supcon = cfg["loss"] == "supcon"
    if supcon and (cfg["head_type"] != "linear" or cfg["mixup"] > 0 or cfg["wise_ft"]):
        raise KennerError(
            "--loss supcon fine-tunes for a linear probe: use --head-type linear, no --mixup, no --wise-ft"
        )
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
            encoder,
            head,
            n_views=len(views),
            combine=combine,
            n_classes=len(class_names),
            seed=cfg["seed"],
            supcon_dim=cfg["supcon_dim"] if supcon else 0,
        )
        if head_init is not None:
            start_head(model, *head_init)
        initial = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model = model.to(settings.device)

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
        if world > 1:  # averages gradients across the processes; frozen epochs leave the backbone without any,
            # and parts of the head may be unused by a loss (the projection, without --loss supcon)
            ids = [rank] if device.device.startswith("cuda:") else None
            net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
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
        probe = None
        if supcon:  # a linear probe on the new embeddings replaces the head; the projection is dropped
            eval_train = make_loader(images(train_idx, pre.transform()), micro, settings)
            probe = probe_head(model, eval_train, y[train_idx], val_loader, y[val_idx], settings, cfg)
        wise = None
        if cfg["wise_ft"] and val_loader is not None:
            wise = wise_ft(model, initial, val_loader, y[val_idx], trainer, settings, pos_index)
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
        "init": cfg["init"],
        "loss": cfg["loss"],
        **({"supcon_probe": probe} if probe is not None else {}),
        **({"wise_ft": wise} if wise is not None else {}),
    }
    return FinetunedModel(model, info, history)


def start_head(model: FinetuneNet, weight: np.ndarray, bias: np.ndarray) -> None:
    """Set the linear head to ``(weight, bias)`` (on the raw backbone features)."""
    layer = model.head.classifier
    if not isinstance(layer, torch.nn.Linear) or tuple(layer.weight.shape) != weight.shape:
        raise KennerError(
            f"the starting head {weight.shape} does not fit the fine-tuned head "
            f"{tuple(getattr(layer, 'weight', torch.empty(0)).shape)}; are the views combined the same way?"
        )
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight))
        layer.bias.copy_(torch.as_tensor(bias))


def probe_head(
    model: FinetuneNet,
    train_loader: Any,
    y_train: np.ndarray,
    val_loader: Any,
    y_val: np.ndarray,
    settings: Any,
    cfg: RunConfig,
) -> dict[str, Any]:
    """Fit a linear probe on the fine-tuned embeddings of the train rows (un-augmented), make it the model's
    head, drop the SupCon projection; returns the probe's val accuracy beside the co-trained head's."""
    _, train_features = predict_logits(model, train_loader, settings, desc="embedding train rows")
    val_features, before = None, None
    if val_loader is not None:
        logits, val_features = predict_logits(model, val_loader, settings, desc="embedding val rows")
        before = float((logits.argmax(axis=1) == y_val).mean())
    n_classes = model.head.classifier.weight.shape[0]
    weight, bias = linear_probe(
        train_features, y_train, n_classes, X_val=val_features, y_val=y_val, seed=cfg["seed"], device=cfg["device"]
    )
    start_head(model, weight, bias)
    model.head.projection = None
    facts: dict[str, Any] = {"train_rows": len(y_train)}
    if val_features is not None:
        facts["val_accuracy"] = float(((val_features @ weight.T + bias).argmax(axis=1) == y_val).mean())
        facts["val_accuracy_co_trained_head"] = before
    return facts


def wise_ft(
    model: FinetuneNet,
    initial: dict[str, torch.Tensor],
    val_loader: Any,
    y_val: np.ndarray,
    trainer: Trainer,
    settings: Any,
    pos_index: int | None,
) -> dict[str, Any]:
    """Interpolate ``(1 - a) * initial + a * fine-tuned`` for a in 0, 0.1, ..., 1, keep the a that scores best on
    val by the run's monitor (ties: the lower val loss, then the larger a), load it into ``model``."""
    tuned = {key: value.detach().clone() for key, value in model.state_dict().items()}
    monitor, best, scores = trainer.stopper.monitor, None, {}
    for alpha in [round(i / 10, 1) for i in range(10, -1, -1)]:
        model.load_state_dict(
            {
                key: torch.lerp(initial[key].to(value.device, value.dtype), value, alpha)
                if value.is_floating_point()
                else value
                for key, value in tuned.items()
            }
        )
        logits, features = predict_logits(model, val_loader, settings, desc=f"WiSE-FT alpha {alpha}")
        values = validation_metrics(logits, features, y_val, pos_index=pos_index, recall=monitor == "recall_at_1")
        scores[alpha] = {"val_" + monitor: values[monitor], "val_loss": values["loss"]}
        if best is None or trainer.stopper.is_better(values[monitor], values["loss"], *best[1:])[()]:
            best = (alpha, values[monitor], values["loss"])
    alpha = best[0]
    log.info("WiSE-FT: alpha %.1f (val %s %.4f)", alpha, monitor, best[1])
    model.load_state_dict(
        {
            key: torch.lerp(initial[key].to(value.device, value.dtype), value, alpha)
            if value.is_floating_point()
            else value
            for key, value in tuned.items()
        }
    )
    return {"alpha": alpha, "monitor": monitor, "val": {str(a): s for a, s in sorted(scores.items())}}


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
