"""The device/precision auto-configuration table and its overrides."""

from __future__ import annotations

import pytest
import torch

from kenner.errors import KennerError
from kenner.train.precision import DeviceInfo, auto_settings, detect_device


def gpu(capability: tuple[int, int], memory_gb: float, cpus: int = 16) -> DeviceInfo:
    return DeviceInfo(device="cuda", name="card", capability=capability, memory_gb=memory_gb, cpu_count=cpus)


@pytest.mark.parametrize(
    ("info", "precision", "tf32", "workers", "accum"),
    [
        (gpu((9, 0), 80), "bf16", True, 8, 1),  # H100
        (gpu((8, 6), 24), "bf16", True, 6, 1),  # RTX 3090
        (gpu((8, 9), 12), "bf16", True, 4, 2),  # RTX 4070
        (gpu((7, 5), 16), "fp16", False, 6, 1),  # T4
        (gpu((6, 1), 6), "fp16", False, 4, 4),  # GTX 1060
        (gpu((8, 0), 40, cpus=3), "bf16", True, 3, 1),  # workers capped by the CPUs
        (DeviceInfo(device="cpu", cpu_count=8), "fp32", False, 4, 1),
        (DeviceInfo(device="cpu", cpu_count=2), "fp32", False, 1, 1),
    ],
)
def test_table(info: DeviceInfo, precision: str, tf32: bool, workers: int, accum: int) -> None:
    settings = auto_settings(info)
    assert (settings.precision, settings.tf32, settings.num_workers, settings.accum_steps) == (
        precision,
        tf32,
        workers,
        accum,
    )
    assert settings.use_grad_scaler == (precision == "fp16")
    assert settings.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def test_overrides_win_over_the_table() -> None:
    settings = auto_settings(gpu((8, 0), 40), precision="fp32", num_workers=0, accum_steps=3)
    assert (settings.precision, settings.num_workers, settings.accum_steps) == ("fp32", 0, 3)
    assert settings.tf32  # TF32 follows the card, not the autocast precision


def test_impossible_precisions_are_refused() -> None:
    with pytest.raises(KennerError, match="bf16 needs compute capability"):
        auto_settings(gpu((7, 0), 16), precision="bf16")
    with pytest.raises(KennerError, match="fp16 needs a CUDA GPU"):
        auto_settings(DeviceInfo(device="cpu"), precision="fp16")
    assert auto_settings(DeviceInfo(device="cpu"), precision="bf16").amp_dtype == torch.bfloat16


def test_detect_device() -> None:
    assert detect_device("cpu").device == "cpu"
    assert detect_device("auto").device == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(KennerError, match="--device tpu"):
        detect_device("tpu")
