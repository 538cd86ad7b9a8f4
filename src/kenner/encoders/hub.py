"""Fail fast when a model hub is out of reach: one line, a few seconds, and how to use a local copy.

Without this check, an offline machine spends half a minute in the hub client's retries (printing a line
for each) before it gives up. The check is skipped where a proxy is configured (the client knows how to use
it), and a model already in the local Hugging Face cache is loaded without asking the network at all.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from kenner.errors import KennerError

HUB_URL = "https://huggingface.co"
CONNECT_TIMEOUT_S = 4.0
TRUE = ("1", "true", "yes", "on")

# How to run each encoder family without the hub.
LOCAL_HINTS = {
    "hf": "download it once where the hub is reachable (huggingface-cli download {name} --local-dir DIR) and "
    "pass --encoder hf:DIR",
    "timm": "download its weights once (huggingface-cli download timm/{name} --local-dir DIR) and pass "
    "--encoder timm:{name} --weights DIR/model.safetensors, or --encoder local:DIR",
    "open_clip": "download its weights once (e.g. open_clip_pytorch_model.bin from the model's hub page) and "
    "pass --encoder open_clip:ARCH --weights FILE",
}


def offline_hint(family: str, name: str) -> str:
    return LOCAL_HINTS[family].format(name=name)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: never ask the network."""
    return any(os.environ.get(var, "").strip().lower() in TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached(repo_id: str, *filenames: str) -> bool:
    """One of ``filenames`` of ``repo_id`` is in the local Hugging Face cache already."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, filename), str) for filename in filenames)


def require_hub(family: str, name: str, *, url: str | None = None) -> None:
    """Raise one clear KennerError, within seconds, when ``family:name`` would need the unreachable hub
    (``url``: where the weights come from, the Hugging Face hub by default)."""
    host = urlparse(url or os.environ.get("HF_ENDPOINT") or HUB_URL).hostname or "huggingface.co"
    if hub_offline():
        raise KennerError(
            f"{family}:{name} is not on this machine and HF_HUB_OFFLINE is set; {offline_hint(family, name)}"
        )
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise KennerError(
            f"cannot reach {host} to download {family}:{name} ({reason}); {offline_hint(family, name)}"
        ) from None
