"""What a new user meets first: a default head whose probabilities mean something, and visible progress."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
from PIL import Image

from kenner.cli import main

KENNER = str(Path(sys.executable).parent / "kenner")


def easy_folder(root: Path, classes: int = 6, groups: int = 8, photos: int = 2) -> Path:
    """``classes`` colours, ``groups`` objects each, ``photos`` photos of every object: easy to tell apart."""
    rng = np.random.default_rng(0)
    colours = rng.integers(30, 226, (classes, 3))
    for c, colour in enumerate(colours):
        for g in range(groups):
            for i in range(photos):
                pixels = np.clip(colour + rng.integers(-30, 30, (48, 48, 3)), 0, 255).astype(np.uint8)
                path = root / f"class{c}" / f"c{c}obj{g}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def test_the_default_head_is_calibrated_on_easy_data(tmp_path: Path) -> None:
    """Early stopping on macro-F1 alone kept the first perfect epoch (top probabilities 0.2-0.3, ECE 0.74);
    with the loss as tie-break and temperature scaling on val by default, the default run is calibrated."""
    run = tmp_path / "run"
    data = easy_folder(tmp_path / "data")
    assert (
        main(
            ["train", "--data", str(data), "--out-dir", str(run), "--cache-dir", str(tmp_path / "cache"), "--no-track"]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == 1.0 and metrics["test"]["ece"] <= 0.10
    info = json.loads((run / "model" / "model_info.json").read_text())
    assert info["predictor"]["best epoch"] > 1 and "temperature" in info["predictor"]
    report = (run / "report.md").read_text()
    assert "best epoch" in report and "ECE before" in report and "ECE after" in report


def _terminal(argv: list[str]) -> str:
    """Run ``kenner argv`` with its output on a pseudo-terminal; what it printed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    process = subprocess.Popen(
        [KENNER, *argv], stdin=follower, stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "120"}
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_embedding_shows_a_progress_bar_on_a_terminal_and_quiet_hides_it(tmp_path: Path) -> None:
    data = easy_folder(tmp_path / "data", classes=2, groups=20, photos=1)
    shown = _terminal(["embed", "--data", str(data), "--cache-dir", str(tmp_path / "cache")])
    assert "embedding with" in shown and "img/s" in shown and "40/40" in shown
    hidden = _terminal(["embed", "--data", str(data), "--cache-dir", str(tmp_path / "fresh"), "--quiet"])
    assert "img/s" not in hidden and "embedded with default" in hidden
    piped = subprocess.run(
        [KENNER, "embed", "--data", str(data), "--cache-dir", str(tmp_path / "piped")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "img/s" not in piped.stderr  # not a terminal: no bar in logs
