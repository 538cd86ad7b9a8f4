"""Many same-shape heads trained as one batched model (after DINOv2's linear evaluation).

H heads that differ only in optimisation settings (learning rate, weight decay, label smoothing, class
weights) share everything else: the standardised input, the initial weights, the minibatch order, the
feature augmentation and mixup draws. Their layers are stacked (``[h, in, out]``), a batched matmul gives
all logits ``[H, B, C]``, and the H losses are summed (heads do not interact, so each head's gradient is
its own loss's) so that one backward pass serves all.

Torch does the optimisation: heads sharing a learning rate and weight decay are one parameter group of
``torch.optim`` (AdamW by default), each loss is ``F.cross_entropy`` over the heads sharing label
smoothing and class weights, and the schedule is :mod:`kenner.loop.schedulers`'. Early stopping is
:class:`~kenner.loop.early_stopping.EarlyStopping` over H heads; a head that stops leaves the batch (its
rows of the stacked tensors and of the optimiser state are dropped; a group left without heads gets no
gradient), and its best weights are kept aside. Validation macro-F1 is ``kenner.evaluate``'s.

Seeded like :class:`~kenner.heads.classifier.EmbeddingClassifier` (the contract of
:mod:`kenner.loop.epochs`), each head ends where a separate fit with its parameters does, up to float32
rounding (a batched matmul sums in another order than ``nn.Linear``). Heads whose knobs need per-head
randomness or per-head batches (dropout, hard mining, cRT, SupCon, center loss, manifold mixup), an ArcFace
head or a plateau schedule (one monitored value per step) cannot be batched: :func:`batch_key` is None.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kenner.device import resolve_device
from kenner.errors import KennerError
from kenner.evaluate.metrics import macro_f1_rows
from kenner.heads.calibration import fit_temperature
from kenner.heads.classifier import EmbeddingClassifier, as_embeddings, encode_labels, fit_standardizer
from kenner.heads.feature_aug import FeatureAugment, mixup
from kenner.heads.modules import build_head_net
from kenner.heads.training import class_weights, inference_logits, resolve_monitor, schedule_of, training_shift
from kenner.loop.early_stopping import EarlyStopping
from kenner.loop.epochs import INFERENCE_CHUNK, make_generator, make_optimizer, minibatch_order
from kenner.loop.history import epoch_record
from kenner.loop.schedulers import build_scheduler, step_scheduler
from kenner.losses.logit_adjustment import log_prior
from kenner.progress import progress_bar

# Parameters that may differ between heads trained together.
PER_HEAD = ("lr", "weight_decay", "label_smoothing", "class_weight", "effective_beta", "calibrate")
OPTIMISER_GROUP = ("lr", "weight_decay")
LOSS_GROUP = ("label_smoothing", "class_weight", "effective_beta")


def batch_key(params: dict[str, Any]) -> tuple | None:
    """Heads whose parameters (EmbeddingClassifier keyword arguments, defaults filled in) have equal keys
    can train as one batched model; None when these parameters cannot be batched."""
    p = EmbeddingClassifier(**params).settings()
    if (
        p["head_type"] not in ("linear", "mlp")
        or p["dropout"] > 0
        or p["hardmine_epochs"] > 0
        or p["crt_epochs"] > 0
        or p["supcon_weight"] > 0
        or p["center_loss_weight"] > 0
        or p["manifold_mixup"] > 0
        or p["scheduler"] == "plateau"
    ):
        return None
    ignored = ("arcface_scale", "arcface_margin", "margin_warmup_epochs", "margin_ramp_epochs")
    if p["head_type"] == "linear":
        ignored += ("hidden_sizes", "gelu_ln")
    return tuple(sorted((k, v) for k, v in p.items() if k not in PER_HEAD and k not in ignored))


def head_axis(slot: int) -> int:
    """The axis of the heads in tensor ``slot`` of a stack: 1 for the first layer's weight [D, h, out] (so
    one GEMM serves all heads), 0 for every other tensor."""
    return 1 if slot == 0 else 0


def stacked_logits(x: torch.Tensor, slots: list[torch.Tensor], n_layers: int) -> torch.Tensor:
    """Logits [h, B, C] of h stacked heads for ``x`` [B, D] (shared by all heads).

    ``slots``: the weights of the ``n_layers`` linear layers (the first [D, h, out], then [h, in, out]), their
    biases [h, 1, out], and with ``gelu_ln`` the LayerNorm weights and biases [h, out] of each hidden layer
    (followed by GELU; without them ReLU)."""
    weights, biases, norms = slots[:n_layers], slots[n_layers : 2 * n_layers], slots[2 * n_layers :]
    dim, n_heads, width = weights[0].shape
    h = (x @ weights[0].reshape(dim, n_heads * width)).view(len(x), n_heads, width).transpose(0, 1) + biases[0]
    for i in range(1, n_layers):
        if norms:
            norm_weight, norm_bias = norms[i - 1], norms[n_layers - 1 + i - 1]
            h = F.gelu(F.layer_norm(h, h.shape[-1:]) * norm_weight[:, None] + norm_bias[:, None])
        else:
            h = F.relu(h)
        h = torch.baddbmm(biases[i], h, weights[i])
    return h


class HeadStack(nn.Module):
    """h same-shape heads as stacked tensors (see :func:`stacked_logits`)."""

    def __init__(self, slots: list[torch.Tensor], n_layers: int) -> None:
        super().__init__()
        self.slots = nn.ParameterList([nn.Parameter(t) for t in slots])
        self.n_layers = n_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stacked_logits(x, list(self.slots), self.n_layers)


def _initial_tensors(
    params: dict[str, Any], dim: int, n_classes: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One head's initial weights (``build_head_net`` drawing from ``generator``) as the slots of a stack of
    one head."""
    net = build_head_net(params, dim, n_classes, generator)
    linears = [block[0] for block in net.blocks] + [net.classifier]
    norms = [block[1] for block in net.blocks] if params["gelu_ln"] and net.blocks else []
    tensors = (
        [linears[0].weight.T[:, None]]
        + [layer.weight.T[None] for layer in linears[1:]]
        + [layer.bias[None, None] for layer in linears]
        + [norm.weight[None] for norm in norms]
        + [norm.bias[None] for norm in norms]
    )
    return [t.detach().clone() for t in tensors]


def _repeat(tensor: torch.Tensor, slot: int, n_heads: int) -> torch.Tensor:
    """``tensor`` (one head) repeated for ``n_heads`` heads along the slot's head axis."""
    return tensor.repeat_interleave(n_heads, dim=head_axis(slot)).contiguous()


@dataclass
class MultiHeadFit:
    """H fitted heads (in the order of their parameters): the stacked net, the shared standardisation and
    prior, a temperature, best epoch and history (:mod:`kenner.loop.history`) per head."""

    params: list[dict[str, Any]]
    classes: np.ndarray
    net: HeadStack
    mean: np.ndarray
    scale: np.ndarray
    log_prior: torch.Tensor
    temperatures: np.ndarray
    best_epochs: list[int]
    history: list[list[dict[str, Any]]]
    fit_seconds: float
    calibration_seconds: float = 0.0

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Inference logits [H, N, C] float32: raw logits minus ``tau * log_prior`` when ``logit_adjust``
        is infer/both; no temperature."""
        device = self.net.slots[0].device
        X = as_embeddings(X, "embeddings", dim=len(self.mean))
        X = torch.as_tensor((X - self.mean) / self.scale, device=device)
        with torch.no_grad():
            raw = torch.cat([self.net(chunk) for chunk in X.split(INFERENCE_CHUNK)], dim=1)
        return inference_logits(raw, self.log_prior, self.params[0]).cpu().numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``softmax(logits / temperature)`` per head: [H, N, C] float64."""
        logits = torch.as_tensor(self.logits(X)).double() / torch.as_tensor(self.temperatures)[:, None, None]
        return torch.softmax(logits, dim=-1).numpy()

    def calibrate(self, X_val: np.ndarray, y_val: np.ndarray) -> None:
        """Fit a temperature on validation rows for every head whose ``calibrate`` is on (others: 1)."""
        start = time.perf_counter()
        logits = self.logits(X_val)
        y_index = encode_labels(y_val, self.classes, "validation labels", rows=len(logits[0]))
        for h, params in enumerate(self.params):
            self.temperatures[h] = fit_temperature(logits[h], y_index) if params["calibrate"] else 1.0
        self.calibration_seconds = time.perf_counter() - start


class _Groups:
    """The active heads of a batched fit: one :class:`HeadStack` and one optimiser parameter group per
    distinct (lr, weight decay); their logits come group by group."""

    def __init__(self, members: list[list[int]], stacks: list[HeadStack], optimizer: torch.optim.Optimizer):
        self.members, self.stacks, self.optimizer = members, stacks, optimizer

    @property
    def active(self) -> list[int]:
        """The heads still training, in the order their logits come."""
        return [head for members in self.members for head in members]

    def slots(self) -> list[torch.Tensor]:
        """The active heads' tensors, each slot concatenated over the groups."""
        stacks = [stack for stack, members in zip(self.stacks, self.members, strict=True) if members]
        if len(stacks) == 1:
            return list(stacks[0].slots)
        grouped = zip(*(stack.slots for stack in stacks), strict=True)
        return [torch.cat(parts, dim=head_axis(slot)) for slot, parts in enumerate(grouped)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stacked_logits(x, self.slots(), self.stacks[0].n_layers)

    def keep(self, going: set[int]) -> None:
        """Drop the heads not in ``going``: their rows of the stacked tensors and of the optimiser state. A
        group left without heads keeps its tensors but gets no more gradients."""
        for g, (stack, members) in enumerate(zip(self.stacks, self.members, strict=True)):
            rows = [i for i, head in enumerate(members) if head in going]
            if 0 < len(rows) < len(members):
                index = torch.as_tensor(rows, device=stack.slots[0].device)
                for slot, old in enumerate(stack.slots):
                    new = nn.Parameter(old.detach().index_select(head_axis(slot), index))
                    state = self.optimizer.state.pop(old, {})
                    self.optimizer.state[new] = {
                        k: v.index_select(head_axis(slot), index) if torch.is_tensor(v) and v.dim() > 0 else v
                        for k, v in state.items()
                    }
                    stack.slots[slot] = new
                self.optimizer.param_groups[g]["params"] = list(stack.slots)
            self.members[g] = [members[i] for i in rows]


def fit_multihead(
    X: np.ndarray,
    y: np.ndarray,
    params_list: list[dict[str, Any]],
    *,
    classes: Any,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> MultiHeadFit:
    """Train one head per parameter dict (EmbeddingClassifier keyword arguments, all with the same
    :func:`batch_key`) as one batched model; labels ``y``/``y_val`` are members of ``classes``.

    Heads with ``calibrate`` get their temperature on the validation rows right away (timed apart as
    ``calibration_seconds``). ``device`` defaults to the parameters'.
    """
    start = time.perf_counter()
    settings = [EmbeddingClassifier(**params).settings() for params in params_list]
    keys = {batch_key(p) for p in settings}
    if None in keys or len(keys) != 1:
        raise KennerError(
            "fit_multihead: the heads differ in more than lr, weight decay, label smoothing, "
            "class weights and calibration, or use a knob that cannot be batched"
        )
    p = settings[0]
    monitor = resolve_monitor(p["monitor"])
    classes = np.asarray(classes)
    X = as_embeddings(X, "training embeddings")
    y_index = encode_labels(y, classes, "training labels", rows=len(X))
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    device = torch.device(device) if device is not None else resolve_device(p["device"])
    n_heads, n_classes = len(settings), len(classes)
    mean, scale = fit_standardizer(X, p["standardize"])
    counts = np.bincount(y_index, minlength=n_classes)
    prior = log_prior(counts).to(device)
    shift = training_shift(prior, p)
    Xt = torch.as_tensor((X - mean) / scale, device=device)
    yt = torch.as_tensor(y_index, device=device)
    if has_val:
        Xv = torch.as_tensor((as_embeddings(X_val, "validation embeddings", X.shape[1]) - mean) / scale, device=device)
        yv_index = encode_labels(y_val, classes, "validation labels", rows=len(Xv))
    loss_groups = _loss_groups(settings, counts, device)
    stopper = EarlyStopping(monitor, p["patience"] if has_val else 0, p["min_epochs"], n_heads=n_heads)
    history: list[list[dict[str, Any]]] = [[] for _ in range(n_heads)]

    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(p["seed"])
        generator = make_generator(p["seed"])
        initial = _initial_tensors(p, X.shape[1], n_classes, generator)
        best = [_repeat(t, slot, n_heads).to(device) for slot, t in enumerate(initial)]
        groups = _optimiser_groups(settings, initial, device, p)
        scheduler = build_scheduler(groups.optimizer, epochs=p["epochs"], monitor=monitor, **schedule_of(p))
        augment = FeatureAugment(p["feature_noise"], p["feature_scale"], p["feature_aug_p"])
        for epoch in progress_bar(range(1, p["epochs"] + 1), desc=f"{n_heads} heads", unit="epoch", leave=False):
            epoch_start = time.perf_counter()
            active = groups.active
            rates = {
                head: group["lr"]
                for members, group in zip(groups.members, groups.optimizer.param_groups, strict=True)
                for head in members
            }
            plan = _LossPlan(loss_groups, active, device)
            total = torch.zeros(len(active), device=device)
            for rows in minibatch_order(len(Xt), p["batch_size"], generator):
                rows = rows.to(device)
                xb, yb = augment(Xt[rows], generator), yt[rows]
                target: torch.Tensor = yb
                if p["mixup"] > 0:
                    xb, target = mixup(xb, F.one_hot(yb, n_classes).float(), p["mixup"], generator)
                logits = groups.forward(xb)
                if shift is not None:
                    logits = logits + shift
                losses = plan.losses(logits, target, yb)
                groups.optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()
                groups.optimizer.step()
                total.index_add_(0, plan.order, losses.detach() * len(rows))
            step_scheduler(scheduler, None)
            val = _validate(groups, Xv, yv_index, prior, p, n_classes) if has_val else {}
            improved = stopper.step(epoch, val.get(monitor), val.get("loss"), heads=active)
            _keep_best(best, groups, [active[i] for i in np.flatnonzero(improved)])
            seconds = time.perf_counter() - epoch_start
            train_loss = (total / len(Xt)).tolist()
            for i, head in enumerate(active):
                history[head].append(
                    epoch_record(
                        "train",
                        epoch,
                        train_loss=train_loss[i],
                        lr=rates[head],
                        seconds=seconds,
                        val={k: v[i] for k, v in val.items()},
                    )
                )
            going = {head for head in active if not stopper.stopped[head]}
            if not going:
                break
            if len(going) < len(active):
                groups.keep(going)
    fit = MultiHeadFit(
        params=settings,
        classes=classes,
        net=HeadStack(best, _n_layers(p)).eval(),
        mean=mean,
        scale=scale,
        log_prior=prior,
        temperatures=np.ones(n_heads),
        best_epochs=stopper.best_epoch.tolist(),
        history=history,
        fit_seconds=0.0,
    )
    fit.fit_seconds = time.perf_counter() - start
    if has_val and any(s["calibrate"] for s in settings):  # without validation rows: temperature 1
        fit.calibrate(X_val, y_val)
    return fit


def _validate(
    groups: _Groups, Xv: torch.Tensor, y_index: np.ndarray, prior: torch.Tensor, p: dict[str, Any], n_classes: int
) -> dict[str, np.ndarray]:
    """Per active head: validation loss, macro-F1 (``kenner.evaluate``'s) and accuracy of the inference
    logits."""
    with torch.no_grad():
        raw = torch.cat([groups.forward(chunk) for chunk in Xv.split(INFERENCE_CHUNK)], dim=1)
        logits = inference_logits(raw, prior, p)
        target = torch.as_tensor(y_index, device=logits.device).repeat(len(logits))
        loss = F.cross_entropy(logits.flatten(0, 1), target, reduction="none").view(len(logits), -1).mean(1)
    predicted = logits.argmax(-1).cpu().numpy()
    return {
        "loss": loss.cpu().numpy(),
        "macro_f1": macro_f1_rows(y_index, predicted, n_classes),
        "accuracy": (predicted == y_index).mean(axis=1),
    }


@torch.no_grad()
def _keep_best(best: list[torch.Tensor], groups: _Groups, heads: list[int]) -> None:
    """Copy the current weights of ``heads`` (that just had their best epoch) into ``best`` (all H heads)."""
    position = {head: i for i, head in enumerate(groups.active)}
    for slot, (saved, live) in enumerate(zip(best, groups.slots(), strict=True)):
        axis = head_axis(slot)
        for head in heads:
            saved.select(axis, head).copy_(live.select(axis, position[head]))


def _optimiser_groups(
    settings: list[dict[str, Any]], initial: list[torch.Tensor], device: torch.device, p: dict[str, Any]
) -> _Groups:
    """One HeadStack (the initial weights repeated) and parameter group per distinct (lr, weight decay)."""
    by_rate: dict[tuple, list[int]] = defaultdict(list)
    for head, params in enumerate(settings):
        by_rate[tuple(params[k] for k in OPTIMISER_GROUP)].append(head)
    members, stacks, param_groups = [], [], []
    for (lr, weight_decay), heads in by_rate.items():
        stack = HeadStack([_repeat(t, slot, len(heads)).to(device) for slot, t in enumerate(initial)], _n_layers(p))
        members.append(heads)
        stacks.append(stack)
        param_groups.append({"params": list(stack.slots), "lr": lr, "weight_decay": weight_decay})
    optimizer = make_optimizer(param_groups, optimizer=p["optimizer"], lr=p["lr"], weight_decay=p["weight_decay"])
    return _Groups(members, stacks, optimizer)


def _n_layers(p: dict[str, Any]) -> int:
    """Linear layers of a head: one, or one per hidden size plus the classifier."""
    return 1 if p["head_type"] == "linear" else len(p["hidden_sizes"]) + 1


@dataclasses.dataclass
class _LossGroup:
    heads: list[int]
    label_smoothing: float
    weight: torch.Tensor | None


def _loss_groups(settings: list[dict[str, Any]], counts: np.ndarray, device: torch.device) -> list[_LossGroup]:
    """Heads sharing label smoothing and class weights (one ``F.cross_entropy`` call per step each)."""
    by_loss: dict[tuple, list[int]] = defaultdict(list)
    for head, params in enumerate(settings):
        key = tuple(params[k] for k in LOSS_GROUP)
        by_loss[key if params["class_weight"] == "effective" else key[:2]].append(head)
    groups = []
    for heads in by_loss.values():
        weights = class_weights(counts, settings[heads[0]])
        weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
        groups.append(_LossGroup(heads, settings[heads[0]]["label_smoothing"], weight))
    return groups


class _LossPlan:
    """The active heads ordered by loss group: one gather of the logits per step, then one
    ``F.cross_entropy`` per group of heads sharing label smoothing and class weights."""

    def __init__(self, loss_groups: list[_LossGroup], active: list[int], device: torch.device) -> None:
        position = {head: i for i, head in enumerate(active)}
        parts = [(group, [position[head] for head in group.heads if head in position]) for group in loss_groups]
        self.parts = [(group, rows) for group, rows in parts if rows]
        order = [i for _, rows in self.parts for i in rows]
        self.order = torch.as_tensor(order, device=device)  # loss order -> active position
        self.in_order = order == list(range(len(active)))
        self.sizes = [len(rows) for _, rows in self.parts]

    def losses(self, logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each active head's mean loss on one batch, in loss order (``reduction="none"``, then each head's
        rows reduced as ``"mean"`` would)."""
        ordered = logits if self.in_order else logits.index_select(0, self.order)
        n_rows = logits.shape[1]
        losses = []
        for (group, _), part in zip(self.parts, ordered.split(self.sizes), strict=True):
            repeated = target.repeat(len(part), *[1] * (target.dim() - 1))
            per_row = F.cross_entropy(
                part.flatten(0, 1),
                repeated,
                weight=group.weight,
                label_smoothing=group.label_smoothing,
                reduction="none",
            )
            hard_weighted = target.dim() == 1 and group.weight is not None
            denominator = group.weight[labels].sum() if hard_weighted else n_rows
            losses.append(per_row.view(len(part), n_rows).sum(1) / denominator)
        return torch.cat(losses)
