"""The ``face:DIR`` encoder with tiny random ONNX models shaped like insightface's ArcFace recognition model
(input ``input.1`` N x 3 x 112 x 112, output N x 512), made here with torch.onnx.export."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from conftest import write_image
from kenner.cli import main
from kenner.encoders import create_encoder
from kenner.errors import KennerError
from tiny_face import export


def _run(model: Path, pixels: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {"input.1": pixels.astype(np.float32)})[0]


@pytest.mark.parametrize("normalise", [False, True])
def test_face_chips_go_in_as_insightface_feeds_them(tmp_path: Path, normalise: bool) -> None:
    model = export(tmp_path / "buffalo" / "w600k_r50.onnx", normalise=normalise)
    encoder = create_encoder(f"face:{tmp_path / 'buffalo'}")
    assert encoder.dim == 512 and encoder.preprocessing.size == 112
    chip = write_image(tmp_path / "chip.png", (112, 112), color=(200, 120, 90), noise=30)
    rgb = np.asarray(Image.open(chip).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None]
    expected = _run(model, rgb if normalise else (rgb - 127.5) / 127.5)
    got = encoder.embed(encoder.transform()(Image.open(chip).convert("RGB"))[None]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    # a larger, non-square photo: short side to 112, centre crop
    photo = write_image(tmp_path / "photo.png", (224, 300), color=(90, 120, 200), noise=30, seed=1)
    image = Image.open(photo).convert("RGB")
    crop = image.resize((112, 150), Image.BILINEAR).crop((0, 19, 112, 131))
    rgb = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1)[None]
    expected = _run(model, rgb if normalise else (rgb - 127.5) / 127.5)
    np.testing.assert_allclose(encoder.embed(encoder.transform()(image)[None]).numpy(), expected, atol=0.05)


def test_the_recognition_model_is_found_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "models"
    first = export(folder / "w600k_r50.onnx")
    export(folder / "genderage.onnx", size=96)  # another insightface model: not 112 x 112
    export(folder / "det_10g.onnx", size=64, seed=1)  # a detector: used only with the insightface package
    with caplog.at_level(logging.WARNING):
        encoder = create_encoder(f"face:{folder}")
    chip_only = create_encoder(f"face:{first}")
    try:
        import insightface  # noqa: F401
    except ImportError:
        assert "insightface package is not installed" in caplog.text
        assert encoder.fingerprint == chip_only.fingerprint  # no alignment: the same embeddings
    export(folder / "glintr100.onnx", seed=2)
    with pytest.raises(KennerError, match=r"expected one ArcFace recognition ONNX model.*glintr100\.onnx, w600k"):
        create_encoder(f"face:{folder}")
    other = create_encoder(f"face:{folder / 'glintr100.onnx'}")
    assert other.fingerprint != chip_only.fingerprint
    with pytest.raises(KennerError, match="no such folder"):
        create_encoder(f"face:{tmp_path / 'missing'}")
    with pytest.raises(KennerError, match="--weights is not used"):
        create_encoder(f"face:{folder}", weights=first)


def test_face_encoder_end_to_end(tmp_path: Path, grouped_folder_dataset: Path) -> None:
    export(tmp_path / "buffalo" / "w600k_r50.onnx")
    run = tmp_path / "run"
    common = ["--encoder", f"face:{tmp_path / 'buffalo'}", "--cache-dir", str(tmp_path / "cache"), "-q"]
    args = ["train", "--method", "knn", "--data", str(grouped_folder_dataset), "--out-dir", str(run), "--no-track"]
    assert main([*args, *common, "--num-workers", "0"]) == 0
    assert json.loads((run / "run_config.json").read_text())["encoder"]["encoder"].startswith("face:")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] >= 1
    out = tmp_path / "predictions.csv"
    shutil.copytree(grouped_folder_dataset, tmp_path / "new")
    assert main(["predict", str(run), str(tmp_path / "new"), "--output", str(out), *common[2:]]) == 0
    assert len(out.read_text().splitlines()) == 1 + 12
