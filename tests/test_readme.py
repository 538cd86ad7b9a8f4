"""Every ``kenner`` command line in the README's ``bash`` blocks runs, in order, on tiny generated data.

The README names data the way users have it (``plants/``, ``coins.tsv``, ``photo.jpg``) and encoders from
the hub; here those names point at generated images and tiny random models saved locally (no network), and
the commands run exactly as written otherwise. ``make demo``/``make test`` (the first block) are what CI
and a newcomer run themselves.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import transformers
from PIL import Image

from kenner.cli import build_parser, main
from synthetic import write_two_view_dataset
from tiny_clip import save_open_clip
from tiny_face import export

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The ``kenner ...`` lines of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#", line)[0].strip()
            if line.startswith("kenner "):
                commands.append(" ".join(line.split()))
    return commands


def write_folder(
    root: Path, classes: dict[str, tuple[int, int, int]], groups: int, seed: int = 0, photos: int = 1
) -> Path:
    """``root/<class>/<class><g>_<i>.png``: ``groups`` objects per class, ``photos`` photos of each."""
    rng = np.random.default_rng(seed)
    for label, colour in classes.items():
        for g in range(groups):
            for i in range(photos):
                pixels = np.clip(np.array(colour) + rng.integers(-25, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
                path = root / label / f"{label}{g}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


class _Images(BaseHTTPRequestHandler):
    """Serves ``/<name>.png`` as a small PNG on loopback (the download example's URLs)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        colour = (200, 40, 40) if "red" in self.path else (40, 40, 200)
        buffer = __import__("io").BytesIO()
        Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
        body = buffer.getvalue()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def tiny_encoders(root: Path) -> dict[str, str]:
    """Hub encoder specs of the README -> tiny random models of the same families, saved locally."""
    torch.manual_seed(0)
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    }
    dinov2 = root / "dinov2-small"
    transformers.Dinov2Model(transformers.Dinov2Config(**vision)).save_pretrained(dinov2)
    transformers.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(
        dinov2
    )
    convnext = root / "convnext_tiny"
    timm.models.save_for_hf(timm.create_model("test_convnext", pretrained=False), convnext)
    return {
        "hf:facebook/dinov2-small": f"hf:{dinov2}",
        "timm:convnext_tiny": f"local:{convnext}",
        "open_clip:ViT-B-32@laion2b_s34b_b79k": save_open_clip(root / "open_clip"),
        "face:models/buffalo_l": f"face:{export(root / 'buffalo_l' / 'w600k_r50.onnx').parent}",
    }


def test_readme_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_server: str) -> None:
    commands = readme_commands()
    assert len(commands) >= 10 and any(c.startswith("kenner compare") for c in commands)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KENNER_CACHE", str(tmp_path / "cache"))
    colours = {"acer": (200, 60, 40), "betula": (60, 180, 60), "carex": (60, 70, 210)}
    write_folder(tmp_path / "plants", colours, groups=5)
    write_folder(tmp_path / "marmosets", {"hibrido": (150, 110, 60), "nao_hibrido": (90, 90, 95)}, groups=6)
    write_folder(tmp_path / "new_photos", colours, groups=1, seed=1)
    Image.open(next((tmp_path / "plants" / "acer").iterdir())).save(tmp_path / "photo.jpg")
    write_two_view_dataset(tmp_path / "coin_data")
    write_two_view_dataset(tmp_path / "other_data", groups_per_class=2)
    rng = np.random.default_rng(0)
    for i in range(30):
        path = tmp_path / "negatives" / f"noise{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    csv = tmp_path / "data" / "csv" / "raw_aurita.csv"
    csv.parent.mkdir(parents=True)
    pd.DataFrame(
        {
            "url": [f"{image_server}/{name}.png" for name in ("red1", "red2", "blue1", "blue2")],
            "class": ["aurita", "aurita", "jacchus", "jacchus"],
        }
    ).to_csv(csv, index=False)
    names = {
        "plants/": "plants",
        "faces/": "plants",
        "marmosets/": "marmosets",
        "new_photos/": "new_photos",
        "negatives/": "negatives",
        "coins.tsv": "coin_data/coins.tsv",
        "other_labelled.tsv": "other_data/coins.tsv",
        **tiny_encoders(tmp_path / "models"),
    }

    for command in commands:
        argv = [",".join(names.get(part, part) for part in token.split(",")) for token in shlex.split(command)[1:]]
        if argv[0] == "serve":  # a server runs until stopped: its flags are parsed here, the server is tested in
            args = build_parser().parse_args(argv)  # tests/test_serve.py
            assert (Path(args.run) / "model" / "model_info.json").is_file(), command
            continue
        started = time.perf_counter()
        assert main(argv) == 0, command
        print(f"{time.perf_counter() - started:6.1f} s  {command}")
    assert (tmp_path / "cmp" / "plants" / "comparison.md").is_file()
    assert (tmp_path / "sweeps" / "coins" / "summary.md").is_file()
