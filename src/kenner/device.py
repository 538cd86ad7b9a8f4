"""Which torch device a ``--device`` value means."""

from __future__ import annotations

import torch

from kenner.errors import KennerError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an explicit cuda without a GPU is a KennerError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise KennerError(f"--device {device}: no CUDA device is available; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise KennerError(f"--device {device}: use auto, cpu, cuda or cuda:N") from None
