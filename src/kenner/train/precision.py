"""Device and precision auto-configuration: one table from the card to precision, workers and accumulation.

- CUDA, compute capability >= 8.0 (Ampere and later): bf16 autocast, TF32 on;
- CUDA, compute capability < 8.0: fp16 autocast with a GradScaler, TF32 off;
- CPU: fp32, min(4, CPUs / 2) workers, 1 accumulation step.

GPU memory rows: >= 40 GB: 8 workers, 1 step; >= 16 GB: 6 workers, 1 step; >= 8 GB: 4 workers, 2 steps;
less: 4 workers, 4 steps (workers never above the CPU count). ``--precision``, ``--num-workers`` and
``--accum-steps`` override the table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from kenner.device import resolve_device
from kenner.errors import KennerError

# (minimum GPU memory in GB, workers, accumulation steps), first match wins.
GPU_MEMORY_TABLE = ((40.0, 8, 1), (16.0, 6, 1), (8.0, 4, 2), (0.0, 4, 4))
BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DeviceInfo:
    """What the table needs to know about a device."""

    device: str  # "cpu", "cuda", "cuda:1"
    name: str = "cpu"
    capability: tuple[int, int] = (0, 0)
    memory_gb: float = 0.0
    cpu_count: int = 1

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass(frozen=True)
class TrainSettings:
    """The resolved device, autocast precision, TF32 switch, loader workers and accumulation steps."""

    device: str
    precision: str
    tf32: bool
    num_workers: int
    accum_steps: int

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def use_grad_scaler(self) -> bool:
        return self.precision == "fp16"

    def describe(self) -> str:
        return (
            f"device {self.device}, precision {self.precision}{' + TF32' if self.tf32 else ''}, "
            f"{self.num_workers} worker(s), {self.accum_steps} accumulation step(s)"
        )


def detect_device(device: str = "auto") -> DeviceInfo:
    """Properties of ``device`` (``auto``: CUDA if present, else CPU)."""
    cpus = os.cpu_count() or 1
    resolved = resolve_device(device)
    device = str(resolved)
    if resolved.type == "cuda":
        props = torch.cuda.get_device_properties(resolved)
        return DeviceInfo(
            device=device,
            name=props.name,
            capability=(props.major, props.minor),
            memory_gb=props.total_memory / 1024**3,
            cpu_count=cpus,
        )
    if device != "cpu":
        raise KennerError(f"--device {device}: use auto, cpu, cuda or cuda:N")
    return DeviceInfo(device="cpu", cpu_count=cpus)


def auto_settings(
    info: DeviceInfo, *, precision: str = "auto", num_workers: int | None = None, accum_steps: int | None = None
) -> TrainSettings:
    """Apply the table to ``info``; explicit arguments win over it."""
    ampere = info.is_cuda and info.capability >= BF16_CAPABILITY
    if info.is_cuda:
        _, workers, accum = next(row for row in GPU_MEMORY_TABLE if info.memory_gb >= row[0])
        workers = min(workers, info.cpu_count)
        default_precision = "bf16" if ampere else "fp16"
    else:
        workers, accum, default_precision = min(4, info.cpu_count // 2), 1, "fp32"
    chosen = default_precision if precision == "auto" else precision
    if chosen == "fp16" and not info.is_cuda:
        raise KennerError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if chosen == "bf16" and info.is_cuda and not ampere:
        raise KennerError(
            f"--precision bf16 needs compute capability >= 8.0; {info.name} has "
            f"{info.capability[0]}.{info.capability[1]}: use fp16 or fp32"
        )
    return TrainSettings(
        device=info.device,
        precision=chosen,
        tf32=ampere,
        num_workers=workers if num_workers is None else num_workers,
        accum_steps=accum if accum_steps is None else accum_steps,
    )


def apply_backend_flags(settings: TrainSettings, *, deterministic: bool) -> None:
    """TF32 matmuls/convolutions on Ampere+; deterministic cuDNN when asked (no autotuning then)."""
    if settings.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cudnn.benchmark = not deterministic
