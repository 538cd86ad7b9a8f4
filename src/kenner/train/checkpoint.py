"""Training checkpoints: atomic files holding everything a run needs to continue exactly where it was.

A checkpoint is a dict saved with ``torch.save`` (read back with ``weights_only=True``): model and EMA
weights (fp32), optimizer, scheduler and grad-scaler states, the epoch count, the best metric and the RNG
states of torch (CPU and CUDA), NumPy and Python. A fine-tuning run folder keeps them in
``checkpoints/``: ``latest_model.pt`` (every epoch), ``best_model.pt`` and ``checkpoint_epoch_N.pt``.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kenner.errors import KennerError
from kenner.io import atomic_write_bytes

LATEST = "latest_model.pt"
BEST = "best_model.pt"


def epoch_name(epoch: int) -> str:
    """File name of the periodic checkpoint after 1-based ``epoch``."""
    return f"checkpoint_epoch_{epoch}.pt"


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and every CUDA device), NumPy's global RNG and Python's ``random``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    np.random.set_state(
        (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"], saved["cached"])
    )
    random.setstate(state["python"])


def fp32_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict on the CPU, floating-point tensors as float32."""
    return {
        key: (value.detach().float() if value.is_floating_point() else value.detach()).cpu().clone()
        for key, value in module.state_dict().items()
    }


def save_checkpoint(state: dict[str, Any], *paths: str | Path) -> None:
    """Serialise ``state`` once and write it to each of ``paths`` atomically (a reader or a resumed run
    never sees half a file)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors are loaded on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise KennerError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise KennerError(f"cannot read checkpoint {path} ({error}); pass --fresh to start again") from error


def resume_path(checkpoint_dir: Path, *, resume: str | None, fresh: bool) -> Path | None:
    """The checkpoint to continue from: ``--resume PATH``, else ``latest_model.pt`` if present
    (auto-resume), or None for a fresh start (``--fresh`` ignores existing checkpoints)."""
    if resume and fresh:
        raise KennerError("--resume and --fresh contradict each other; pass one of them")
    remove_stale_temporaries(checkpoint_dir)
    if resume:
        if not Path(resume).is_file():
            raise KennerError(f"--resume {resume}: no such checkpoint file")
        return Path(resume)
    latest = checkpoint_dir / LATEST
    if fresh or not latest.is_file():
        return None
    return latest


def remove_stale_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Delete half-written checkpoints (``.<name>.tmp-<pid>``) that a killed run left behind; the run folder's
    lock means no other process is writing here now. Returns what was removed."""
    stale = sorted(checkpoint_dir.glob(".*.tmp-*")) if checkpoint_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
