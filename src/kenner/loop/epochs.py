"""The training loop on embeddings: short and linear, no framework (after nanoGPT), and its batch orders.

Seeding contract (a batched fit of many heads, :mod:`kenner.heads.multihead`, reproduces a head's fit with
it):

1. ``generator = make_generator(seed)``, a CPU ``torch.Generator``; every random draw of a fit comes from
   it, in this order:
2. initial weights (``kenner.heads.modules.build_head_net``): hidden layers (PyTorch's default init), then
   the classifier (weight ~ N(0, 0.01^2), bias 0), then the SupCon projection;
3. every epoch: :func:`minibatch_order` = one ``torch.randperm(n)`` split into batches of ``batch_size``
   (the last one smaller); in hard-mining and cRT epochs a ``torch.multinomial`` draw; P x K epochs one
   seed for pytorch-metric-learning's ``MPerClassSampler``;
4. within a step, only for knobs that are on: feature augmentation, then mixup.

Dropout uses torch's global RNG, which the estimators seed with ``seed`` inside ``torch.random.fork_rng``.

One epoch of :func:`run_epochs`: a batch order, steps (loss -> backward -> optimizer step), validation,
scheduler step, early stopping, a history record. At the end the best epoch's weights are restored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from torch import nn

from kenner.loop.early_stopping import EarlyStopping
from kenner.loop.history import epoch_record
from kenner.loop.schedulers import Scheduler, step_scheduler
from kenner.progress import progress_bar

INFERENCE_CHUNK = 8192


def make_generator(seed: int) -> torch.Generator:
    """The CPU generator every random draw of a fit comes from."""
    return torch.Generator(device="cpu").manual_seed(seed)


def minibatch_order(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's minibatches: ``torch.randperm(n, generator=generator)`` split into ``batch_size`` chunks."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


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


def pk_order(labels: np.ndarray, p: int, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of P x K batches (P classes, K rows of each) from pytorch-metric-learning's
    ``MPerClassSampler``: about ``len(labels)`` rows, every batch full. The sampler draws from pml's
    module-level NumPy RNG, seeded here (for this call only) from ``generator``."""
    batch = p * k
    sampler = MPerClassSampler(
        np.asarray(labels), m=k, batch_size=batch, length_before_new_iter=max(len(labels), batch)
    )
    saved = pml_common.NUMPY_RANDOM
    pml_common.NUMPY_RANDOM = np.random.RandomState(int(torch.randint(2**31 - 1, (1,), generator=generator)))
    try:
        order = torch.as_tensor(list(sampler), dtype=torch.long)
    finally:
        pml_common.NUMPY_RANDOM = saved
    return list(order.split(batch))


def make_optimizer(params: Iterable[Any], *, optimizer: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (decoupled decay), Adam or SGD with momentum 0.9 (L2 decay); Adam(W) use the fused kernel on
    CPU and CUDA. ``params`` may be parameter groups with their own ``lr``/``weight_decay``."""
    groups = list(params)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    first = groups[0]["params"][0] if isinstance(groups[0], dict) else groups[0]
    fused = first.device.type in ("cpu", "cuda")
    kind = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=lr, weight_decay=weight_decay, fused=fused)


def batched(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """``fn`` over ``X`` in chunks, without gradients."""
    with torch.no_grad():
        return torch.cat([fn(chunk) for chunk in X.split(INFERENCE_CHUNK)])


def run_epochs(
    phase: str,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    order: Callable[[int], list[torch.Tensor]],
    *,
    epochs: int,
    stopper: EarlyStopping,
    scheduler: Scheduler | None = None,
    evaluate: Callable[[], dict[str, float]] | None = None,
    before_epoch: Callable[[int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train ``module`` for up to ``epochs`` epochs; returns the phase's history (see
    :mod:`kenner.loop.history`) with ``module`` holding its best epoch's weights (``stopper.best_epoch``).

    ``order(epoch)`` gives the epoch's batches (row indices), ``step_loss(rows)`` the loss of one step,
    ``evaluate()`` the validation metrics (``loss``, ``macro_f1``, ...; they feed ``stopper`` and a plateau
    schedule), ``before_epoch(epoch - 1)`` extra record keys (and sets per-epoch knobs such as a margin).
    """
    device = next(module.parameters()).device
    history: list[dict[str, Any]] = []
    best_state = None
    bar = progress_bar(range(1, epochs + 1), desc=phase, unit="epoch", leave=False)
    for epoch in bar:
        start = time.perf_counter()
        extra = before_epoch(epoch - 1) if before_epoch is not None else {}
        batches = order(epoch)
        module.train()
        total, seen = torch.zeros((), device=device), 0
        for rows in batches:
            loss = step_loss(rows.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(rows)
            seen += len(rows)
        lr = optimizer.param_groups[0]["lr"]
        val = None
        if evaluate is not None:
            module.eval()
            val = evaluate()
        monitored = None if val is None else val[stopper.monitor]
        step_scheduler(scheduler, monitored)
        if stopper.step(epoch, monitored, None if val is None else val.get("loss"))[0] and not stopper.keeps_last:
            best_state = {key: value.detach().clone() for key, value in module.state_dict().items()}
        history.append(
            epoch_record(
                phase,
                epoch,
                train_loss=total.item() / max(seen, 1),
                lr=lr,
                seconds=time.perf_counter() - start,
                val=val,
                **extra,
            )
        )
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}", val=monitored)
        if stopper.stopped[0]:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history
