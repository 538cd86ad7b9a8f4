"""Many same-shape heads trained as one batched model (after DINOv2's linear evaluation).

H heads that differ only in optimisation settings (learning rate, weight decay, label smoothing, class
weights) share everything else: the standardised input, the initial weights, the minibatch order, the
feature augmentation and mixup draws. So their parameters are stacked into tensors ``[H, in, out]``,
one batched matmul per layer gives all H logits ``[H, B, C]``, the H losses are summed (heads do not
interact, so each head's gradient is exactly its own loss's gradient) and one backward pass serves all.

The optimiser is AdamW written out over the stacked tensors: its update is elementwise, so a per-head
learning rate and weight decay are ``[H, 1, 1]`` tensors broadcast into the same arithmetic as
``torch.optim.AdamW`` (decay ``p *= 1 - lr * wd``, then the bias-corrected Adam step). Early stopping
keeps each head's best epoch by its own validation macro-F1; a head that stops is dropped from the
batch (its best weights are kept aside), so the remaining steps only pay for the heads still learning.

Seeded exactly like :class:`kenner.heads.classifier.EmbeddingClassifier` (see the contract in
``train/loop.py``), each head ends where a separate ``EmbeddingClassifier`` fit with its config would
(up to float rounding). Heads whose knobs make per-head randomness or per-head batches necessary
(hard mining, cRT, dropout, ArcFace, SupCon, center loss, manifold mixup) or another optimiser cannot be
batched: :func:`batch_key` returns None for them and they are fitted one by one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kenner.device import resolve_device
from kenner.errors import KennerError
from kenner.heads.classifier import fit_standardizer
from kenner.heads.config import HeadConfig
from kenner.heads.modules import build_head_net
from kenner.losses.class_weights import effective_number_weights, inverse_frequency_weights
from kenner.losses.logit_adjustment import log_prior
from kenner.train.calibrate import fit_temperature
from kenner.train.feature_aug import FeatureAugment, mixup
from kenner.train.loop import INFERENCE_CHUNK, inference_logits, make_generator, minibatch_order

# Fields that may differ between heads trained together.
PER_HEAD_FIELDS = ("lr", "weight_decay", "label_smoothing", "class_weight", "effective_beta", "calibrate")
BETAS = (0.9, 0.999)
EPS = 1e-8


def batch_key(config: HeadConfig) -> tuple[Any, ...] | None:
    """Configs with equal keys can train as one batched model; None when ``config`` cannot be batched."""
    unsupported = (
        config.head_type not in ("linear", "mlp") or config.optimizer != "adamw" or config.dropout > 0
        or config.hardmine_epochs > 0 or config.crt_epochs > 0 or config.supcon_weight > 0
        or config.center_loss_weight > 0 or config.manifold_mixup > 0
    )
    if unsupported:
        return None
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in PER_HEAD_FIELDS}
    if config.head_type == "linear":
        shared.update(hidden_sizes=(), gelu_ln=False)  # unused by a linear head
    return tuple(sorted(shared.items()))


class StackedHeads(torch.nn.Module):
    """H heads as stacked layers: ``weights[i]`` is ``[H, in, out]``, ``biases[i]`` ``[H, 1, out]``;
    with ``gelu_ln`` every hidden layer is followed by a per-head LayerNorm and GELU, else ReLU."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor],
                 norms: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(weights)
        self.biases = torch.nn.ParameterList(biases)
        self.norm_weights = torch.nn.ParameterList([w for w, _ in norms or []])
        self.norm_biases = torch.nn.ParameterList([b for _, b in norms or []])
        self.gelu_ln = norms is not None

    @property
    def n_heads(self) -> int:
        return self.weights[0].shape[0]

    def replace_(self, tensors: list[torch.Tensor]) -> list[torch.nn.Parameter]:
        """Swap in new parameters (``tensors`` in :meth:`parameters` order; the head count may change)."""
        new = iter(tensors)
        for plist in (self.weights, self.biases, self.norm_weights, self.norm_biases):
            for i in range(len(plist)):
                plist[i] = torch.nn.Parameter(next(new).detach().clone())
        return list(self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, D] (shared by all heads) -> logits [H, B, C]."""
        h = torch.einsum("bd,hdo->hbo", x, self.weights[0]) + self.biases[0]  # one GEMM, not H
        for i in range(1, len(self.weights)):
            if self.gelu_ln:
                j = i - 1
                h = F.layer_norm(h, h.shape[-1:])
                h = h * self.norm_weights[j][:, None] + self.norm_biases[j][:, None]
                h = F.gelu(h)
            else:
                h = F.relu(h)
            h = torch.baddbmm(self.biases[i], h, self.weights[i])
        return h


def _stack_initial_net(config: HeadConfig, dim: int, n_classes: int, n_heads: int,
                       generator: torch.Generator) -> StackedHeads:
    """The single-head initial weights (``build_head_net`` drawing from ``generator``), repeated H times."""
    net = build_head_net(config, dim, n_classes, generator)
    linears = [block[0] for block in net.blocks] + [net.classifier]
    norms = None
    if config.gelu_ln and net.blocks:
        norms = [(block[1].weight, block[1].bias) for block in net.blocks]

    def repeat(t: torch.Tensor) -> torch.nn.Parameter:
        return torch.nn.Parameter(t.detach().unsqueeze(0).repeat(n_heads, *([1] * t.dim())))

    weights = [repeat(layer.weight.T) for layer in linears]
    biases = [repeat(layer.bias[None]) for layer in linears]
    return StackedHeads(weights, biases, [(repeat(w), repeat(b)) for w, b in norms] if norms else None)


class StackedAdamW:
    """``torch.optim.AdamW`` over stacked parameters with a learning rate and weight decay per head."""

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, weight_decay: torch.Tensor) -> None:
        self.params = params
        self.base_lr = lr
        self.lr = lr.clone()
        self.weight_decay = weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = BETAS
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr = self.lr.view(shape)
            p.mul_(1 - lr * self.weight_decay.view(shape))
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(EPS)
            p.sub_(m / denom * (lr / bias_correction1))

    def set_cosine(self, epoch: int, epochs: int) -> None:
        """``CosineAnnealingLR(T_max=epochs)`` after ``epoch`` epochs (closed form)."""
        self.lr = self.base_lr * (1 + math.cos(math.pi * epoch / epochs)) / 2

    def keep(self, rows: torch.Tensor, params: list[torch.Tensor]) -> None:
        """Continue with only the heads ``rows`` (a mask or indices); ``params`` are their parameters."""
        self.params = params
        self.exp_avg = [m[rows] for m in self.exp_avg]
        self.exp_avg_sq = [v[rows] for v in self.exp_avg_sq]
        self.base_lr, self.lr, self.weight_decay = self.base_lr[rows], self.lr[rows], self.weight_decay[rows]


def stacked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: torch.Tensor,
                          weight: torch.Tensor) -> torch.Tensor:
    """Per-head ``F.cross_entropy(logits[h], target, weight=weight[h], label_smoothing=ls[h])`` -> [H].

    ``logits`` [H, B, C]; ``target`` class indices [B] or probabilities [B, C]; ``weight`` [H, C].
    """
    n_classes = logits.shape[-1]
    logp = torch.log_softmax(logits, dim=-1)
    ls = label_smoothing[:, None]
    if target.dim() == 2:
        smoothed = target[None] * (1 - ls[..., None]) + ls[..., None] / n_classes
        return -(smoothed * logp * weight[:, None]).sum(-1).mean(-1)
    w_target = weight[:, target]
    nll = -logp.gather(-1, target.expand(logits.shape[0], -1)[..., None]).squeeze(-1)
    smooth = -(logp * weight[:, None]).sum(-1)
    total = (1 - ls) * (w_target * nll) + ls / n_classes * smooth
    return total.sum(-1) / w_target.sum(-1)


def stacked_macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Macro-F1 per head of ``y_pred`` [H, N] against ``y_true`` [N], averaged like scikit-learn over
    the classes present in truth or prediction (zero_division=0)."""
    n_heads = y_pred.shape[0]
    index = (torch.arange(n_heads, device=y_pred.device)[:, None] * n_classes + y_true) * n_classes + y_pred
    confusion = torch.bincount(index.flatten(), minlength=n_heads * n_classes * n_classes)
    confusion = confusion.view(n_heads, n_classes, n_classes).double()
    tp = confusion.diagonal(dim1=1, dim2=2)
    support, predicted = confusion.sum(2), confusion.sum(1)
    denominator = support + predicted
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))
    present = (denominator > 0).double()
    return (f1 * present).sum(1) / present.sum(1)


def _class_weight_matrix(configs: list[HeadConfig], counts: np.ndarray) -> np.ndarray:
    rows = []
    for config in configs:
        if config.class_weight == "inverse":
            rows.append(inverse_frequency_weights(counts))
        elif config.class_weight == "effective":
            rows.append(effective_number_weights(counts, config.effective_beta))
        else:
            rows.append(np.ones(len(counts)))
    return np.stack(rows)


@dataclass
class MultiHeadFit:
    """H fitted heads: the stacked net, the shared standardisation and prior, a temperature and best
    epoch per head, and per epoch the heads still training (``heads``) with their train loss and
    validation macro-F1 (``history``)."""

    configs: list[HeadConfig]
    net: StackedHeads
    mean: np.ndarray
    scale: np.ndarray
    log_prior: torch.Tensor
    temperatures: np.ndarray
    best_epochs: list[int]
    history: list[dict[str, Any]]
    fit_seconds: float
    calibration_seconds: float = 0.0

    def logits(self, X: np.ndarray) -> torch.Tensor:
        """Inference logits [H, N, C]: raw logits minus ``tau * log_prior`` when ``logit_adjust`` is
        infer/both; no temperature."""
        device = self.net.weights[0].device
        X = torch.as_tensor((np.asarray(X, np.float32) - self.mean) / self.scale, device=device)
        with torch.no_grad():
            raw = torch.cat([self.net(chunk) for chunk in X.split(INFERENCE_CHUNK)], dim=1)
        return inference_logits(raw, self.log_prior, self.configs[0])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``softmax(logits / temperature)`` per head: [H, N, C] float64."""
        temperatures = torch.as_tensor(self.temperatures, dtype=torch.float64)
        logits = self.logits(X).double().cpu() / temperatures[:, None, None]
        return torch.softmax(logits, dim=-1).numpy()

    def calibrate(self, X_val: np.ndarray, y_val: np.ndarray) -> None:
        """Fit a temperature on validation rows for every head whose config has ``calibrate`` on."""
        start = time.perf_counter()
        logits = self.logits(X_val)
        for h, config in enumerate(self.configs):
            self.temperatures[h] = fit_temperature(logits[h], y_val) if config.calibrate else 1.0
        self.calibration_seconds = time.perf_counter() - start


def fit_multihead(
    X: np.ndarray,
    y: np.ndarray,
    configs: list[HeadConfig],
    *,
    n_classes: int,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    calibrate: bool = True,
    device: str | torch.device | None = None,
) -> MultiHeadFit:
    """Train one head per config (all with the same :func:`batch_key`) as one batched model.

    ``calibrate`` fits the temperatures of heads with ``calibrate`` on right away (set it False to call
    :meth:`MultiHeadFit.calibrate` separately, e.g. to time it). ``device`` defaults to the configs'.
    """
    start = time.perf_counter()
    keys = {batch_key(config) for config in configs}
    if None in keys or len(keys) != 1:
        raise KennerError("fit_multihead: the configs differ in more than lr, weight decay, label smoothing, "
                          "class weights and calibration, or use a knob that cannot be batched")
    config = configs[0]
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    if any(c.calibrate for c in configs) and not has_val:
        raise KennerError("--calibrate fits the temperature on validation data; pass X_val and y_val")
    device = torch.device(device) if device is not None else resolve_device(config.device)
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    mean, scale = fit_standardizer(X, config.standardize)
    counts = np.bincount(y, minlength=n_classes)
    prior = log_prior(counts).to(device)
    n_heads = len(configs)

    def per_head(values: list[float] | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values), dtype=torch.float32, device=device)

    weight = per_head(_class_weight_matrix(configs, counts))
    smoothing = per_head([c.label_smoothing for c in configs])
    train_shift = prior * config.logit_tau if config.logit_adjust in ("train", "both") else None
    if config.balanced_softmax:
        train_shift = prior
    Xt = torch.as_tensor((X - mean) / scale, device=device)
    yt = torch.as_tensor(y, device=device)
    Xv = torch.as_tensor((np.asarray(X_val, np.float32) - mean) / scale, device=device) if has_val else None
    yv = torch.as_tensor(np.asarray(y_val, np.int64), device=device) if has_val else None

    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(config.seed)
        generator = make_generator(config.seed)
        net = _stack_initial_net(config, X.shape[1], n_classes, n_heads, generator).to(device)
        params = list(net.parameters())
        optimizer = StackedAdamW(params, per_head([c.lr for c in configs]),
                                 per_head([c.weight_decay for c in configs]))
        augment = FeatureAugment(config.feature_noise, config.feature_scale, config.feature_aug_p)
        patience = config.early_stopping_patience if has_val else 0
        active = torch.arange(n_heads, device=device)  # the heads still training, in batch order
        best_f1 = torch.full((n_heads,), -1.0, dtype=torch.float64, device=device)
        best_epoch = torch.zeros(n_heads, dtype=torch.long, device=device)
        best_state = [p.detach().clone() for p in params]
        history: list[dict[str, Any]] = []
        for epoch in tqdm(range(1, config.epochs + 1), desc=f"{n_heads} heads", unit="epoch",
                          disable=None, leave=False):
            total = torch.zeros(len(active), device=device)
            for idx in minibatch_order(len(Xt), config.batch_size, generator):
                idx = idx.to(device)
                xb, yb = augment(Xt[idx], generator), yt[idx]
                target: torch.Tensor = yb
                if config.mixup > 0:
                    xb, target = mixup(xb, F.one_hot(yb, n_classes).float(), config.mixup, generator)
                logits = net(xb)
                if train_shift is not None:
                    logits = logits + train_shift
                losses = stacked_cross_entropy(logits, target, smoothing, weight)
                optimizer.zero_grad()
                losses.sum().backward()
                optimizer.step()
                total += losses.detach() * len(idx)
            if config.lr_schedule == "cosine":
                optimizer.set_cosine(epoch, config.epochs)
            record: dict[str, Any] = {"epoch": epoch, "heads": active.tolist(),
                                      "train_loss": (total / len(Xt)).tolist()}
            if Xv is not None:
                with torch.no_grad():
                    val_logits = inference_logits(net(Xv), prior, config)
                f1 = stacked_macro_f1(yv, val_logits.argmax(-1), n_classes)
                record["val_macro_f1"] = f1.tolist()
                if patience > 0:
                    improved = f1 > best_f1[active]
                    best_f1[active[improved]] = f1[improved]
                    best_epoch[active[improved]] = epoch
                    for saved, p in zip(best_state, params, strict=True):
                        saved[active[improved]] = p.detach()[improved]
                    going = improved | (epoch - best_epoch[active] < patience)
                    if not bool(going.all()):
                        active = active[going]
                        params = net.replace_([p[going] for p in params])
                        optimizer.keep(going, params)
                        smoothing, weight = smoothing[going], weight[going]
            history.append(record)
            if len(active) == 0:
                break
        if patience > 0:
            net.replace_(best_state)
            best_epochs = best_epoch.tolist()
        else:
            best_epochs = [epoch] * n_heads
    fit = MultiHeadFit(
        configs=list(configs), net=net.eval(), mean=mean, scale=scale, log_prior=prior,
        temperatures=np.ones(n_heads), best_epochs=best_epochs, history=history,
        fit_seconds=time.perf_counter() - start,
    )
    if calibrate and any(c.calibrate for c in configs):
        fit.calibrate(X_val, y_val)
    return fit
