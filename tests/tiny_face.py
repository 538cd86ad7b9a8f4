"""A tiny random ONNX model shaped like insightface's ArcFace recognition model (input ``input.1``
N x 3 x 112 x 112, output N x 512), made with torch.onnx.export: ``export(path, normalise=False)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TinyArcFace(nn.Module):
    """A conv net with ArcFace's inputs and outputs; ``normalise``: the graph starts with Sub and Mul, as
    insightface models that take raw 0-255 pixels do."""

    def __init__(self, normalise: bool = False, dim: int = 512) -> None:
        super().__init__()
        self.normalise = normalise
        self.body = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(32, dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            pixels = (pixels - 127.5) * (1 / 127.5)
        return self.fc(self.body(pixels))


def export(path: Path, *, normalise: bool = False, size: int = 112, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        TinyArcFace(normalise).eval(),
        (torch.randn(1, 3, size, size),),
        str(path),
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "None"}, "embedding": {0: "None"}},
        dynamo=False,
    )
    return path
