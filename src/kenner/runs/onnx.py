"""``kenner export RUN --format onnx``: a run as one ONNX model, and the runner ``kenner serve --backend onnx`` uses.

``model.onnx`` takes the preprocessed pixels of each input view (inputs ``pixels_0``, ``pixels_1``, ... in the
order of ``onnx.json``'s ``input_views``; dynamic batch) and returns ``embeddings`` [B, views, dim] (the encoder's
output per view) and, for head methods (linear, mlp, arcface), ``probabilities`` [B, classes]: the views combined as
the run combined them, standardised, the head, the inference logit adjustment, the temperature and the softmax. For
gallery methods (knn, metric) the model is the encoder only: the gallery search (and metric learning's projection)
stays in numpy/Faiss, fed with these embeddings. ``onnx.json`` holds the preprocessing, the classes and the
agreement check: the largest absolute difference to torch on images of the run's own data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kenner.config.tree import build_config, load_config_file
from kenner.encoders import create_encoder
from kenner.encoders.base import Encoder, Preprocessing
from kenner.encoders.embedder import Embedder
from kenner.encoders.extract import prepare_batch
from kenner.encoders.onnx import onnx_bytes
from kenner.encoders.views import resolve_mode
from kenner.errors import KennerError
from kenner.io import atomic_write_bytes, atomic_write_json, read_json
from kenner.methods.gallery import GalleryPredictor
from kenner.methods.head import HeadPredictor
from kenner.runs.data import load_data
from kenner.runs.load import RunModel, load_predictor

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
INFO_FILE = "onnx.json"
TOLERANCE = 1e-3  # largest accepted |onnx - torch| of probabilities (and of embeddings, relative to their scale)
SAMPLE_IMAGES = 8

# pixels [B, 3, H, W] per input view -> (embeddings per view, class probabilities or None for galleries)
Runner = Callable[[dict[str, torch.Tensor]], tuple[dict[str, np.ndarray], np.ndarray | None]]


class RunModule(nn.Module):
    """Pixels of every input view -> (embeddings per view, probabilities of the run's head, when it has one)."""

    def __init__(self, encoder: Encoder, views: list[str], mode: str, predictor: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.mode = resolve_mode(views, mode)
        self.index = views.index(self.mode) if self.mode in views else None
        self.head = None
        if isinstance(predictor, HeadPredictor):
            clf = predictor.head
            self.head = clf.model_.to("cpu").eval()
            self.register_buffer("mean", torch.as_tensor(clf.mean_, dtype=torch.float32))
            self.register_buffer("scale", torch.as_tensor(clf.scale_, dtype=torch.float32))
            shift = np.zeros(len(clf.classes_), dtype=np.float32)
            if clf.logit_adjust in ("infer", "both"):
                shift = clf.logit_tau * np.asarray(clf.log_prior_, dtype=np.float32)
            self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
            self.temperature = float(clf.temperature_)

    def forward(self, *pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeddings = torch.stack([self.encoder(view).float() for view in pixels], dim=1)
        if self.head is None:
            return (embeddings,)
        if self.index is not None:
            features = embeddings[:, self.index]
        elif self.mode == "concat":
            features = embeddings.flatten(1)
        else:
            features = embeddings.mean(dim=1)
        logits = self.head((features - self.mean) / self.scale) - self.shift
        return embeddings, torch.softmax(logits / self.temperature, dim=1)


def torch_encoder(model: RunModel) -> Encoder:
    """The run's encoder on torch (CPU), checked to be the one the run was trained with."""
    info = model.info
    if info.get("fingerprint") and not isinstance(model.embedder, Embedder):
        raise KennerError(f"{model.run_dir}: a run on an encoder ensemble cannot be exported to ONNX yet")
    if not info.get("fingerprint"):
        raise KennerError(
            f"{model.run_dir}: a {info['method']!r} run reads pixels with its own backbone; ONNX export covers runs "
            "on cached embeddings (linear, mlp, arcface: encoder + head; knn, metric: encoder + gallery)"
        )
    encoder = create_encoder(
        info["encoder"], weights=info["weights"], pooling=info["pooling"], device="cpu", backend="torch"
    )
    if encoder.fingerprint != info["fingerprint"]:
        raise KennerError(f"the encoder {info['encoder']!r} changed since the run was trained; cannot export it")
    return encoder.eval()


def run_module(model: RunModel) -> RunModule:
    if not isinstance(model.predictor, HeadPredictor | GalleryPredictor):
        raise KennerError(
            f"{model.run_dir}: ONNX export covers linear, mlp, arcface, knn and metric runs, "
            f"not {model.info['method']!r}"
        )
    return RunModule(torch_encoder(model), model.input_views, model.info["views"], model.predictor).eval()


def export_onnx_run(model: RunModel, out_dir: Path) -> list[Path]:
    """``model.onnx`` (encoder + head, or encoder for galleries; dynamic batch) and ``onnx.json``."""
    import onnxruntime

    module = run_module(model)
    views = model.input_views
    size = module.encoder.preprocessing.size
    example = tuple(torch.randn(2, 3, size, size) for _ in views)
    inputs = [f"pixels_{i}" for i in range(len(views))]
    outputs = ["embeddings"] + (["probabilities"] if module.head is not None else [])
    try:
        data = onnx_bytes(module, example, inputs, outputs)
    except Exception as error:
        raise KennerError(f"cannot export the run to ONNX ({error})") from error
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    pixels = sample_pixels(model, module.encoder.preprocessing)
    difference = _agreement(module, session, pixels)
    if difference > TOLERANCE:
        raise KennerError(f"the ONNX model differs from torch by {difference:.3g} on the run's images; not written")
    log.info("ONNX model agrees with torch on %d image(s): max |difference| %.3g", len(pixels[0]), difference)
    path = atomic_write_bytes(out_dir / MODEL_FILE, data)
    info = {
        "run": str(model.run_dir),
        "method": model.info["method"],
        "fingerprint": model.info["fingerprint"],
        "input_views": views,
        "inputs": inputs,
        "outputs": outputs,
        "class_names": model.class_names,
        "preprocessing": module.encoder.preprocessing.as_dict(),
        "background_color": list(model.info["background_color"]),
        "check": {"images": len(pixels[0]), "max_abs_diff": difference, "tolerance": TOLERANCE},
    }
    return [path, atomic_write_json(out_dir / INFO_FILE, info)]


def sample_pixels(model: RunModel, preprocessing: Preprocessing) -> list[torch.Tensor]:
    """Preprocessed images of up to ``SAMPLE_IMAGES`` items of the run's dataset, one tensor per input view
    (random pixels where the dataset is gone)."""
    transform = preprocessing.transform()
    background = tuple(model.info["background_color"])
    try:
        cfg = build_config([load_config_file(model.run_dir / "run_config.json")])
        dataset, _ = load_data(cfg.data, min_classes=1)
        items = dataset.samples[:: max(1, len(dataset.samples) // SAMPLE_IMAGES)][:SAMPLE_IMAGES]
        return [
            prepare_batch([s.paths[v] for s in items], transform, preprocessing.resize, background)
            for v in model.input_views
        ]
    except (KennerError, OSError) as error:
        log.warning("checking the ONNX export on random pixels: the run's data cannot be read (%s)", error)
        generator = torch.Generator().manual_seed(0)
        size = preprocessing.size
        return [torch.randn(SAMPLE_IMAGES, 3, size, size, generator=generator) for _ in model.input_views]


def _agreement(module: RunModule, session: Any, pixels: list[torch.Tensor]) -> float:
    """Largest |onnx - torch| over the outputs (embeddings relative to their scale, at least 1)."""
    with torch.inference_mode():
        expected = [tensor.numpy() for tensor in module(*pixels)]
    got = session.run(None, {f"pixels_{i}": tensor.numpy() for i, tensor in enumerate(pixels)})
    differences = []
    for want, have in zip(expected, got, strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        differences.append(float(np.abs(want - have).max()) / scale)
    return max(differences)


def onnx_engine_parts(
    run_dir: str | Path, *, cache_dir: str | None = None, threads: int | None = None
) -> tuple[
    RunModel, Callable[[dict[str, torch.Tensor]], tuple[dict[str, np.ndarray], np.ndarray | None]], Preprocessing
]:
    """What the server needs to answer with the run's ONNX export (written first when ``RUN/export_onnx`` has none):
    the run (predictor for galleries, decision rules), a runner of pixels per view, and the preprocessing."""
    import onnxruntime

    run_dir = Path(run_dir)
    folder = run_dir / "export_onnx"
    model = load_predictor(run_dir, cache_dir=cache_dir, device="cpu")
    if not (folder / MODEL_FILE).is_file() or not (folder / INFO_FILE).is_file():
        export_onnx_run(model, folder)
    info = read_json(folder / INFO_FILE)
    if info.get("fingerprint") != model.info.get("fingerprint") or info.get("class_names") != model.class_names:
        raise KennerError(f"{folder} is the export of another run; delete it to export this one again")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
    views, inputs = info["input_views"], info["inputs"]

    def run(pixels: dict[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        feeds = {name: np.ascontiguousarray(pixels[view].numpy()) for name, view in zip(inputs, views, strict=True)}
        outputs = dict(zip(info["outputs"], session.run(info["outputs"], feeds), strict=True))
        per_view = {view: outputs["embeddings"][:, i] for i, view in enumerate(views)}
        return per_view, outputs.get("probabilities")

    return model, run, Preprocessing(**info["preprocessing"])
