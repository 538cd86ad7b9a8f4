"""How a head trains on embeddings: the loss of a step (cross-entropy with the long-tail knobs, ArcFace,
SupCon, center loss, mixup), the batch order of each phase, validation, and classifier re-training (cRT).

Plain path (no knobs): ``AdamW(lr, weight_decay)`` over all parameters, cross-entropy with label smoothing
and class weights, one optimizer step per minibatch, a constant learning rate, ``epochs`` epochs, or fewer
with early stopping on validation macro-F1 (best weights restored). The seeding contract is
:mod:`kenner.loop.epochs`'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss

from kenner.config.fields import flag_name
from kenner.config.sections import ScheduleConfig
from kenner.errors import KennerError
from kenner.evaluate.metrics import macro_f1_rows
from kenner.heads.arcface import ArcFace, margin_at
from kenner.heads.feature_aug import FeatureAugment, mixup
from kenner.heads.modules import HeadNet, reset_classifier_
from kenner.loop.early_stopping import EarlyStopping
from kenner.loop.epochs import (
    batched,
    class_balanced_order,
    hard_example_order,
    make_optimizer,
    minibatch_order,
    run_epochs,
)
from kenner.loop.schedulers import build_scheduler
from kenner.losses.center import CenterLoss
from kenner.losses.class_weights import effective_number_weights, inverse_frequency_weights
from kenner.losses.logit_adjustment import adjust_logits, log_prior

HEAD_MONITORS = ("macro_f1", "accuracy", "loss")
SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(ScheduleConfig))

Params = Mapping[str, Any]


def resolve_monitor(monitor: str) -> str:
    """The validation metric a head's early stopping watches (``auto``: macro-F1)."""
    if monitor == "auto":
        return "macro_f1"
    if monitor not in HEAD_MONITORS:
        raise KennerError(
            f"{flag_name('monitor')} {monitor} is not measured for a head on embeddings; use "
            f"{', '.join(HEAD_MONITORS)} or auto"
        )
    return monitor


def inference_logits(logits: torch.Tensor, prior: torch.Tensor, params: Params) -> torch.Tensor:
    """The logits predictions come from: minus ``tau * log_prior`` when ``logit_adjust`` is infer/both."""
    if params["logit_adjust"] in ("infer", "both"):
        return adjust_logits(logits, prior, params["logit_tau"])
    return logits


def training_shift(prior: torch.Tensor, params: Params) -> torch.Tensor | None:
    """What the training loss adds to the logits: the prior for balanced softmax, ``tau * prior`` for
    logit adjustment train/both, else nothing."""
    if params["balanced_softmax"]:
        return prior
    if params["logit_adjust"] in ("train", "both"):
        return prior * params["logit_tau"]
    return None


def class_weights(counts: np.ndarray, params: Params) -> np.ndarray | None:
    """Per-class loss weights of ``class_weight`` (None for ``none``)."""
    if params["class_weight"] == "inverse":
        return inverse_frequency_weights(counts)
    if params["class_weight"] == "effective":
        return effective_number_weights(counts, params["effective_beta"])
    return None


def schedule_of(params: Params) -> dict[str, Any]:
    """The ScheduleConfig fields of ``params`` (keyword arguments of ``build_scheduler``)."""
    return {name: params[name] for name in SCHEDULE_FIELDS}


def train_head(
    net: HeadNet,
    X: torch.Tensor,
    y: torch.Tensor,
    params: Params,
    *,
    n_classes: int,
    generator: torch.Generator,
    X_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Train ``net`` in place on ``X`` [N, D] / ``y`` [N] (tensors on the training device); returns the
    history and the main phase's best (restored) epoch."""
    device = X.device
    counts = torch.bincount(y.cpu(), minlength=n_classes)
    prior = log_prior(counts).to(device)
    weights = class_weights(counts.numpy(), params)
    weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
    shift = training_shift(prior, params)
    augment = FeatureAugment(params["feature_noise"], params["feature_scale"], params["feature_aug_p"])
    supcon = SupConLoss(temperature=params["supcon_temperature"]) if params["supcon_weight"] > 0 else None
    center = CenterLoss(n_classes, net.feature_dim).to(device) if params["center_loss_weight"] > 0 else None
    epochs = params["epochs"]

    def train_logits(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = net.classify(features, labels)
        return logits if shift is None else logits + shift

    def step_loss(rows: torch.Tensor) -> torch.Tensor:
        xb, yb = augment(X[rows], generator), y[rows]
        target: torch.Tensor = yb
        if params["mixup"] > 0:
            xb, target = mixup(xb, F.one_hot(yb, n_classes).float(), params["mixup"], generator)
        if params["manifold_mixup"] > 0:
            hidden, target = mixup(
                net.blocks[0](xb), F.one_hot(yb, n_classes).float(), params["manifold_mixup"], generator
            )
            features = net.features(hidden, start=1)
        else:
            features = net.features(xb)
        loss = F.cross_entropy(
            train_logits(features, yb), target, weight=weight, label_smoothing=params["label_smoothing"]
        )
        if supcon is not None:
            loss = loss + params["supcon_weight"] * supcon(net.projection(features), yb)
        if center is not None:
            loss = loss + params["center_loss_weight"] * center(features, yb)
        return loss

    def order(epoch: int) -> list[torch.Tensor]:
        if epoch > epochs - params["hardmine_epochs"]:
            net.eval()
            logits = batched(
                lambda rows: train_logits(net.features(X[rows]), y[rows]), torch.arange(len(X), device=device)
            )
            losses = F.cross_entropy(logits, y, reduction="none")
            return hard_example_order(losses, params["batch_size"], generator)
        return minibatch_order(len(X), params["batch_size"], generator)

    groups = [{"params": list(net.parameters())}]
    if center is not None:
        groups.append({"params": list(center.parameters()), "weight_decay": 0.0})
    stopper, history = _phase(
        "train",
        net,
        groups,
        step_loss,
        order,
        epochs,
        params,
        evaluator(net, X_val, y_val, prior, params, n_classes),
        _margin_schedule(net, params),
    )
    if params["crt_epochs"] > 0:
        history += _classifier_retraining(net, X, y, params, generator, prior, X_val, y_val, n_classes)
    return history, int(stopper.best_epoch[0])


def _phase(
    phase: str,
    module: torch.nn.Module,
    groups: list[dict[str, Any]],
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    order: Callable[[int], list[torch.Tensor]],
    epochs: int,
    params: Params,
    evaluate: Callable[[], dict[str, float]] | None,
    before_epoch: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[EarlyStopping, list[dict[str, Any]]]:
    """One phase of :func:`kenner.loop.epochs.run_epochs` with the head's optimiser, schedule and stopping."""
    monitor = resolve_monitor(params["monitor"])
    optimizer = make_optimizer(
        groups, optimizer=params["optimizer"], lr=params["lr"], weight_decay=params["weight_decay"]
    )
    scheduler = build_scheduler(optimizer, epochs=epochs, monitor=monitor, **schedule_of(params))
    stopper = EarlyStopping(monitor, params["patience"] if evaluate is not None else 0, params["min_epochs"])
    history = run_epochs(
        phase,
        module,
        optimizer,
        step_loss,
        order,
        epochs=epochs,
        stopper=stopper,
        scheduler=scheduler,
        evaluate=evaluate,
        before_epoch=before_epoch,
    )
    return stopper, history


def _margin_schedule(net: HeadNet, params: Params) -> Callable[[int], dict[str, Any]] | None:
    """Per epoch, set an ArcFace head's margin by :func:`margin_at` and record it."""
    if not isinstance(net.classifier, ArcFace):
        return None
    classifier = net.classifier

    def before_epoch(epoch: int) -> dict[str, Any]:
        classifier.margin = margin_at(
            epoch,
            margin=params["arcface_margin"],
            warmup_epochs=params["margin_warmup_epochs"],
            ramp_epochs=params["margin_ramp_epochs"],
        )
        return {"margin": classifier.margin}

    return before_epoch


def _classifier_retraining(
    net: HeadNet,
    X: torch.Tensor,
    y: torch.Tensor,
    params: Params,
    generator: torch.Generator,
    prior: torch.Tensor,
    X_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    n_classes: int,
) -> list[dict[str, Any]]:
    """cRT (Kang et al. 2020): freeze the body, re-initialise the last layer and train only it with
    class-balanced sampling and plain cross-entropy (label smoothing kept) on the frozen features."""
    net.eval()
    features = batched(net.features, X)
    val_features = None if X_val is None else batched(net.features, X_val)
    reset_classifier_(net.classifier, generator)

    def step_loss(rows: torch.Tensor) -> torch.Tensor:
        logits = net.classify(features[rows], y[rows])
        return F.cross_entropy(logits, y[rows], label_smoothing=params["label_smoothing"])

    _, history = _phase(
        "crt",
        net.classifier,
        [{"params": list(net.classifier.parameters())}],
        step_loss,
        lambda _epoch: class_balanced_order(y, params["batch_size"], generator),
        params["crt_epochs"],
        params,
        evaluator(net.classify, val_features, y_val, prior, params, n_classes),
    )
    return history


def evaluator(
    forward: Callable[[torch.Tensor], torch.Tensor],
    X_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    prior: torch.Tensor,
    params: Params,
    n_classes: int,
) -> Callable[[], dict[str, float]] | None:
    """``() -> {loss, macro_f1, accuracy}`` of the validation logits predictions use; None without
    validation rows."""
    if X_val is None or y_val is None or len(X_val) == 0:
        return None
    y_true = y_val.cpu().numpy()

    def evaluate() -> dict[str, float]:
        logits = inference_logits(batched(forward, X_val), prior, params)
        y_pred = logits.argmax(dim=1).cpu().numpy()
        return {
            "loss": F.cross_entropy(logits, y_val).item(),
            "macro_f1": float(macro_f1_rows(y_true, y_pred[None], n_classes)[0]),
            "accuracy": float((y_pred == y_true).mean()),
        }

    return evaluate
