"""The ONNX Runtime backend: an exported copy of a torch encoder that runs on CPU.

The ``.onnx`` file is cached next to the encoder's embeddings (``<cache>/<fingerprint>/encoder.onnx``),
so it is exported once per fingerprint. ``OnnxEncoder`` has the torch encoder's fingerprint: both
compute the same embeddings (checked at export, to 1e-4) and so share one embedding store.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from kenner.encoders.base import Encoder
from kenner.errors import KennerError
from kenner.io import atomic_write_bytes
from kenner.paths import default_cache_dir

logger = logging.getLogger(__name__)

ONNX_FILE_NAME = "encoder.onnx"
OPSET = 17
TOLERANCE = 1e-4


class _Embedder(nn.Module):
    """Exposes an encoder's ``forward`` (pixels -> embeddings) as a plain module for export."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels).float()


def onnx_bytes(module: nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str], outputs: list[str]) -> bytes:
    """``module`` exported to ONNX (the TorchScript exporter), every input and output with a dynamic batch axis."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            example,
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def export_onnx(encoder: Encoder, path: str | os.PathLike) -> Path:
    """Export ``encoder`` (on CPU) with a dynamic batch axis to ``path``, atomically."""
    size = encoder.preprocessing.size
    module = _Embedder(encoder).to("cpu").eval()
    try:
        data = onnx_bytes(module, (torch.randn(2, 3, size, size),), ["pixels"], ["embedding"])
    except Exception as error:
        message = f"cannot export encoder {encoder.name!r} to ONNX ({error}); use backend 'torch'"
        raise KennerError(message) from error
    return atomic_write_bytes(path, data)


class OnnxEncoder(Encoder):
    """Runs an exported encoder with onnxruntime on CPU; same interface and fingerprint as the source."""

    def __init__(self, source: Encoder, path: str | os.PathLike, *, threads: int | None = None) -> None:
        super().__init__(
            name=source.name,
            dim=source.dim,
            preprocessing=source.preprocessing,
            pooling=source.pooling,
            weights_hash=source.weights_hash,
        )
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            message = f"cannot load ONNX model {self.path} ({error}); delete the file to re-export it"
            raise KennerError(message) from error

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(["embedding"], {"pixels": array})[0])


def check_same_output(encoder: Encoder, onnx_encoder: OnnxEncoder, *, tolerance: float = TOLERANCE) -> float:
    """Largest difference between both encoders on a random batch, relative to the embeddings' scale
    (at least 1); error above ``tolerance``."""
    size = encoder.preprocessing.size
    batch = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = encoder.embed(batch).cpu()
    scale = max(1.0, float(expected.abs().max()))
    difference = float((expected - onnx_encoder.embed(batch)).abs().max()) / scale
    if not difference <= tolerance:
        raise KennerError(
            f"the ONNX export of {encoder.name!r} ({onnx_encoder.path}) differs from torch by "
            f"{difference:.2g} (relative); use backend 'torch'"
        )
    return difference


def to_onnx(encoder: Encoder, *, cache_dir: str | os.PathLike | None = None) -> OnnxEncoder:
    """The ONNX Runtime twin of ``encoder``, exporting (and checking) it on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / encoder.fingerprint / ONNX_FILE_NAME
    if path.is_file():
        return OnnxEncoder(encoder, path)
    logger.info("exporting %s to %s", encoder.name, path)
    export_onnx(encoder.to("cpu"), path)
    onnx_encoder = OnnxEncoder(encoder, path)
    try:
        check_same_output(encoder, onnx_encoder)
    except KennerError:
        path.unlink(missing_ok=True)
        raise
    return onnx_encoder
