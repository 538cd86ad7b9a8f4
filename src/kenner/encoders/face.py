"""``face:DIR`` encoders: insightface's ArcFace recognition ONNX model (aligned 112x112 faces -> 512-d) run
with ONNX Runtime, from a local folder such as insightface's ``buffalo_l`` (``w600k_r50.onnx``).

The recognition model is the folder's ONNX file whose input is 112x112 (``face:DIR/FILE.onnx`` names one).
Its input normalisation follows insightface: a graph that starts with Sub/Mul nodes normalises itself (raw
0-255 pixels in), else pixels go in as ``(RGB - 127.5) / 127.5``.

Faces: when the folder also has a detector (``det_*.onnx``, e.g. ``det_10g.onnx``) and the ``insightface``
package is importable, each image's largest face is detected and aligned to ArcFace's 112x112 template by
its five landmarks (insightface's ``norm_crop``), as insightface's own pipeline does. Otherwise images are
taken to be face chips already: the short side is resized to 112 and the centre cropped (an image with no
detected face falls back to that too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from PIL import Image

from kenner.encoders.base import Encoder, Preprocessing, hash_file
from kenner.errors import KennerError

logger = logging.getLogger(__name__)

FACE_SIZE = 112
DETECTOR_SIDE = 640  # insightface's detection input size; images are decoded at least this large


def _session(path: Path) -> onnxruntime.InferenceSession:
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise KennerError(f"cannot load ONNX model {path}: {str(error).splitlines()[0]}") from error


def _is_recognition(session: onnxruntime.InferenceSession) -> bool:
    shape = session.get_inputs()[0].shape
    return len(shape) == 4 and list(shape[2:]) == [FACE_SIZE, FACE_SIZE] and len(session.get_outputs()) == 1


def find_models(target: str) -> tuple[Path, Path | None]:
    """The recognition model of ``face:target`` and the detector beside it (None without one)."""
    path = Path(target).expanduser()
    if path.is_file():
        folder, candidates = path.parent, [path]
    elif path.is_dir():
        folder = path
        candidates = [p for p in sorted(path.glob("*.onnx")) if not p.name.startswith("det_")]
    else:
        raise KennerError(f"face:{target}: no such folder or ONNX file")
    recognition = [p for p in candidates if _is_recognition(_session(p))]
    if len(recognition) != 1:
        found = ", ".join(p.name for p in recognition) or "none"
        raise KennerError(
            f"face:{target}: expected one ArcFace recognition ONNX model (input N x 3 x 112 x 112), found {found}; "
            "name one as face:DIR/FILE.onnx"
        )
    detectors = sorted(folder.glob("det_*.onnx"))
    return recognition[0], detectors[0] if detectors else None


def _normalises_itself(path: Path) -> bool:
    """insightface's test: the graph's first nodes include Sub and Mul (mean/std inside the model)."""
    nodes = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node[:8]]
    return "Sub" in nodes and "Mul" in nodes


def _aligner(detector_path: Path, fallback: Callable[[Image.Image], torch.Tensor], to_tensor: Callable) -> Callable:
    """A transform that detects the largest face and aligns it by its landmarks (insightface)."""
    from insightface.model_zoo import get_model
    from insightface.utils.face_align import norm_crop

    detector = get_model(str(detector_path), providers=["CPUExecutionProvider"])
    detector.prepare(ctx_id=-1, input_size=(DETECTOR_SIDE, DETECTOR_SIDE))

    def transform(image: Image.Image) -> torch.Tensor:
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        boxes, landmarks = detector.detect(bgr, max_num=1, metric="max")
        if landmarks is None or len(boxes) == 0:
            return fallback(image)
        chip = norm_crop(bgr, landmarks[0], image_size=FACE_SIZE)
        return to_tensor(Image.fromarray(np.ascontiguousarray(chip[:, :, ::-1])))

    return transform


class FaceEncoder(Encoder):
    """An ArcFace recognition ONNX model on CPU (ONNX Runtime); embeddings are its raw 512-d output."""

    def __init__(self, recognition: Path, detector: Path | None, *, name: str) -> None:
        session = _session(recognition)
        inputs = session.get_inputs()[0]
        dim = session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):
            raise KennerError(f"{recognition}: the embedding size of the output is not fixed ({dim})")
        mean, std = (0.0, 1 / 255) if _normalises_itself(recognition) else (0.5, 0.5)
        preprocessing = Preprocessing(
            size=FACE_SIZE, resize=FACE_SIZE, mean=(mean,) * 3, std=(std,) * 3, interpolation="bilinear"
        )
        aligned = detector if detector is not None and _insightface_available() else None
        if detector is not None and aligned is None:
            logger.warning("%s: the insightface package is not installed: images are used as face chips", detector)
        weights = hash_file(recognition) + (f"+align:{hash_file(aligned)}" if aligned else "")
        super().__init__(name=name, dim=int(dim), preprocessing=preprocessing, pooling="cls", weights_hash=weights)
        self.session, self.input_name, self.detector = session, inputs.name, aligned
        self.fixed_batch = inputs.shape[0] if isinstance(inputs.shape[0], int) else None

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        chip = self.preprocessing.transform()
        if self.detector is None:
            return chip
        return _aligner(self.detector, chip, chip)

    @property
    def decode_side(self) -> int:
        return DETECTOR_SIDE if self.detector is not None else self.preprocessing.resize

    @property
    def preprocessing_only(self) -> bool:
        return self.detector is None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        if self.fixed_batch == 1:
            out = np.concatenate([self.session.run(None, {self.input_name: row[None]})[0] for row in array])
        else:
            out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def _insightface_available() -> bool:
    try:
        import insightface  # noqa: F401
    except ImportError:
        return False
    return True


def create_face_encoder(target: str, *, weights: str | Path | None = None, pooling: str = "cls") -> FaceEncoder:
    """``face:DIR`` (or ``face:DIR/FILE.onnx``): insightface's recognition model from a local folder."""
    if weights is not None:
        raise KennerError("--weights is not used with face: encoders; pass the model folder as face:DIR")
    if pooling != "cls":
        raise KennerError("face encoders have one output (pooling 'cls'); --pooling is not used")
    recognition, detector = find_models(target)
    return FaceEncoder(recognition, detector, name=f"face:{recognition.resolve()}")
