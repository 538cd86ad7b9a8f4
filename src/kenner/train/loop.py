"""The training loop of a head on cached embeddings: short and linear, no framework (after nanoGPT).

Seeding contract (``train/multihead.py`` reproduces a linear head's fit with it):

1. ``generator = make_generator(seed)``, a CPU ``torch.Generator``; every random draw of a fit comes
   from it, in this order:
2. initial weights (``heads.modules.build_head_net``): hidden layers (PyTorch's default init), then the
   classifier via :func:`linear_init` (weight ~ N(0, 0.01^2), bias 0), then the SupCon projection;
3. every epoch: :func:`minibatch_order` = one ``torch.randperm(n)`` split into batches of
   ``batch_size`` (the last one smaller); in hard-mining and cRT epochs a ``torch.multinomial`` draw;
4. within a step, only for knobs that are on: feature augmentation, then mixup.

Dropout uses torch's global RNG, which the estimator seeds with ``seed`` inside ``torch.random.fork_rng``.

Plain path (no knobs): ``AdamW(lr, weight_decay)`` over all parameters, cross-entropy with label
smoothing and class weights, one optimizer step per minibatch, constant learning rate, ``epochs``
epochs, or fewer with early stopping on validation macro-F1 (best weights restored).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss
from sklearn.metrics import f1_score
from torch import nn
from tqdm.auto import tqdm

from kenner.losses.center import CenterLoss
from kenner.losses.class_weights import effective_number_weights, inverse_frequency_weights
from kenner.losses.logit_adjustment import adjust_logits, log_prior
from kenner.train.feature_aug import FeatureAugment, mixup

if TYPE_CHECKING:
    from kenner.heads.config import HeadConfig
    from kenner.heads.modules import HeadNet

INFERENCE_CHUNK = 8192


def make_generator(seed: int) -> torch.Generator:
    """The CPU generator every random draw of a fit comes from."""
    return torch.Generator(device="cpu").manual_seed(seed)


def minibatch_order(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's minibatches: ``torch.randperm(n, generator=generator)`` split into ``batch_size`` chunks."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def linear_init(in_dim: int, n_classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial last layer: ``weight = 0.01 * randn(n_classes, in_dim)`` from ``generator``, ``bias = 0``."""
    return 0.01 * torch.randn(n_classes, in_dim, generator=generator), torch.zeros(n_classes)


def reset_classifier_(classifier: nn.Module, generator: torch.Generator) -> None:
    """Overwrite a last layer (``weight`` [C, D], optional ``bias``) in place with :func:`linear_init`."""
    n_classes, in_dim = classifier.weight.shape
    weight, bias = linear_init(in_dim, n_classes, generator)
    with torch.no_grad():
        classifier.weight.copy_(weight)
        if getattr(classifier, "bias", None) is not None:
            classifier.bias.copy_(bias)


def make_optimizer(params: Iterable[Any], config: HeadConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled decay), Adam or SGD with momentum 0.9 (L2 decay)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def inference_logits(logits: torch.Tensor, prior: torch.Tensor, config: HeadConfig) -> torch.Tensor:
    """The logits predictions come from: minus ``tau * log_prior`` when ``logit_adjust`` is infer/both."""
    if config.logit_adjust in ("infer", "both"):
        return adjust_logits(logits, prior, config.logit_tau)
    return logits


def hard_example_order(losses: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Hard mining: draw ``n`` rows with replacement, ``p_i = 0.5 / n + 0.5 * loss_i / sum(loss)``.

    Half the mass follows the current per-sample loss, half stays uniform so easy rows are not forgotten.
    """
    losses = losses.detach().double().cpu()
    n = len(losses)
    p = 0.5 / n + 0.5 * losses / losses.sum().clamp_min(1e-12)
    return list(torch.multinomial(p, n, replacement=True, generator=generator).split(batch_size))


def class_balanced_order(y: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Class-balanced sampling (for cRT): ``n`` rows with replacement, every class equally likely."""
    y = y.cpu()
    p = 1.0 / torch.bincount(y).double()[y]
    return list(torch.multinomial(p, len(y), replacement=True, generator=generator).split(batch_size))


def batched(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """``fn`` over ``X`` in chunks, without gradients."""
    with torch.no_grad():
        return torch.cat([fn(chunk) for chunk in X.split(INFERENCE_CHUNK)])


@dataclass
class TrainResult:
    """Per-epoch records (``phase``, ``epoch``, ``train_loss``, ``val_loss``, ``val_macro_f1``, ``lr``,
    ``seconds``, ``samples_per_s``) and the main phase's best (restored) epoch."""

    history: list[dict[str, Any]]
    best_epoch: int


def train_head(
    net: HeadNet,
    X: torch.Tensor,
    y: torch.Tensor,
    config: HeadConfig,
    *,
    n_classes: int,
    generator: torch.Generator,
    X_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``net`` in place on ``X`` [N, D] / ``y`` [N] (tensors on the training device)."""
    device = X.device
    counts = torch.bincount(y.cpu(), minlength=n_classes)
    prior = log_prior(counts).to(device)
    weight = _class_weights(counts, config, device)
    train_shift = prior * config.logit_tau if config.logit_adjust in ("train", "both") else None
    if config.balanced_softmax:
        train_shift = prior
    augment = FeatureAugment(config.feature_noise, config.feature_scale, config.feature_aug_p)
    supcon = SupConLoss(temperature=config.supcon_temperature) if config.supcon_weight > 0 else None
    feature_dim = net.classifier.weight.shape[1]
    center = CenterLoss(n_classes, feature_dim).to(device) if config.center_loss_weight > 0 else None

    def train_logits(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = net.classify(features, labels)
        return logits if train_shift is None else logits + train_shift

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        xb, yb = augment(X[idx], generator), y[idx]
        target: torch.Tensor = yb
        if config.mixup > 0:
            xb, target = mixup(xb, F.one_hot(yb, n_classes).float(), config.mixup, generator)
        if config.manifold_mixup > 0:
            hidden, target = mixup(net.blocks[0](xb), F.one_hot(yb, n_classes).float(),
                                   config.manifold_mixup, generator)
            features = net.features(hidden, start=1)
        else:
            features = net.features(xb)
        loss = F.cross_entropy(train_logits(features, yb), target, weight=weight,
                               label_smoothing=config.label_smoothing)
        if supcon is not None:
            loss = loss + config.supcon_weight * supcon(net.projection(features), yb)
        if center is not None:
            loss = loss + config.center_loss_weight * center(features, yb)
        return loss

    def main_order(epoch: int) -> list[torch.Tensor]:
        if epoch > config.epochs - config.hardmine_epochs:
            net.eval()
            logits = batched(lambda idx: train_logits(net.features(X[idx]), y[idx]),
                             torch.arange(len(X), device=device))
            return hard_example_order(F.cross_entropy(logits, y, reduction="none"), config.batch_size, generator)
        return minibatch_order(len(X), config.batch_size, generator)

    history: list[dict[str, Any]] = []
    params = [{"params": net.parameters()}]
    if center is not None:
        params.append({"params": center.parameters(), "weight_decay": 0.0})
    best_epoch = _run_phase(
        "train", net, params, step_loss, main_order, config.epochs, config, history,
        _evaluator(net, X_val, y_val, prior, config),
    )
    if config.crt_epochs > 0:
        _classifier_retraining(net, X, y, config, generator, history, X_val, y_val, prior)
    return TrainResult(history, best_epoch)


def _classifier_retraining(
    net: HeadNet,
    X: torch.Tensor,
    y: torch.Tensor,
    config: HeadConfig,
    generator: torch.Generator,
    history: list[dict[str, Any]],
    X_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    prior: torch.Tensor,
) -> None:
    """cRT (Kang et al. 2020): freeze the body, re-initialise the last layer and train only it with
    class-balanced sampling and plain cross-entropy (label smoothing kept) on the frozen features."""
    net.eval()
    features = batched(net.features, X)
    val_features = None if X_val is None else batched(net.features, X_val)
    reset_classifier_(net.classifier, generator)

    def step_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = net.classify(features[idx], y[idx])
        return F.cross_entropy(logits, y[idx], label_smoothing=config.label_smoothing)

    _run_phase(
        "crt", net.classifier, [{"params": net.classifier.parameters()}], step_loss,
        lambda _epoch: class_balanced_order(y, config.batch_size, generator), config.crt_epochs, config,
        history, _evaluator(net.classify, val_features, y_val, prior, config),
    )


def _class_weights(counts: torch.Tensor, config: HeadConfig, device: torch.device) -> torch.Tensor | None:
    if config.class_weight == "inverse":
        weights = inverse_frequency_weights(counts.numpy())
    elif config.class_weight == "effective":
        weights = effective_number_weights(counts.numpy(), config.effective_beta)
    else:
        return None
    return torch.as_tensor(weights, dtype=torch.float32, device=device)


def _evaluator(
    forward: Callable[[torch.Tensor], torch.Tensor],
    X_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    prior: torch.Tensor,
    config: HeadConfig,
) -> Callable[[], tuple[float, float]] | None:
    """``() -> (val loss, val macro-F1)`` of the logits predictions use; None without validation rows."""
    if X_val is None or y_val is None or len(X_val) == 0:
        return None
    y_true = y_val.cpu().numpy()

    def evaluate() -> tuple[float, float]:
        logits = inference_logits(batched(forward, X_val), prior, config)
        loss = F.cross_entropy(logits, y_val).item()
        y_pred = logits.argmax(dim=1).cpu().numpy()
        return loss, float(f1_score(y_true, y_pred, average="macro", zero_division=0))

    return evaluate


def _run_phase(
    phase: str,
    module: nn.Module,
    params: list[dict[str, Any]],
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    order: Callable[[int], list[torch.Tensor]],
    epochs: int,
    config: HeadConfig,
    history: list[dict[str, Any]],
    evaluate: Callable[[], tuple[float, float]] | None,
) -> int:
    """Epochs of minibatch steps on ``module``; returns the best epoch (restored) or the last one."""
    device = next(module.parameters()).device
    optimizer = make_optimizer(params, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs) \
        if config.lr_schedule == "cosine" else None
    patience = config.early_stopping_patience if evaluate is not None else 0
    best_f1, best_epoch, best_state = -1.0, 0, None
    bar = tqdm(range(1, epochs + 1), desc=phase, unit="epoch", disable=None, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        batches = order(epoch)
        module.train()
        total, seen = torch.zeros((), device=device), 0
        for idx in batches:
            loss = step_loss(idx.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        record = {"phase": phase, "epoch": epoch, "train_loss": total.item() / seen,
                  "lr": optimizer.param_groups[0]["lr"], "val_loss": None, "val_macro_f1": None}
        record["samples_per_s"] = seen / (time.perf_counter() - start)
        if scheduler is not None:
            scheduler.step()
        if evaluate is not None:
            module.eval()
            record["val_loss"], record["val_macro_f1"] = evaluate()
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", val_f1=record["val_macro_f1"])
        if patience == 0:
            best_epoch = epoch
        elif record["val_macro_f1"] > best_f1:
            best_f1, best_epoch = record["val_macro_f1"], epoch
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return best_epoch
