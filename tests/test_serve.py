"""``kenner serve``: the HTTP API on tiny runs trained here, over real loopback sockets (uvicorn in a thread, and
the CLI in a subprocess) and FastAPI's TestClient for the bad-upload matrix."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from conftest import _corrupt_png, _truncated_jpeg
from kenner.cli import main
from kenner.runs.predict import predict_run
from kenner.serve.app import ServeSettings, create_app
from kenner.serve.batching import MicroBatcher
from kenner.serve.browse import confused_pairs, find_runs, misclassified, runs_table
from kenner.serve.engine import load_engine
from kenner.serve.uploads import Limits
from synthetic import write_two_view_dataset

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-view linear run and a single-view (obverse) knn run on generated coins, sharing one cache."""
    root = tmp_path_factory.mktemp("serve")
    manifest = write_two_view_dataset(root / "data", groups_per_class=4)
    cache = root / "cache"
    common = ["--data", str(manifest), "--cache-dir", str(cache), "--no-track", "--num-workers", "0", "-q"]
    common += ["--device", "cpu", "--target-precision", "0.9"]
    assert main(["train", *common, "--out-dir", str(root / "linear"), "--views", "both_concat", "--epochs", "20"]) == 0
    assert main(["train", *common, "--out-dir", str(root / "knn"), "--method", "knn", "--views", "obverse"]) == 0
    return {"manifest": manifest, "data": manifest.parent, "cache": cache} | {m: root / m for m in ("linear", "knn")}


def _app(run: Path, cache: Path, **settings: object):
    return create_app(lambda: load_engine(run, cache_dir=str(cache), device="cpu"), ServeSettings(**settings))


def _wait_ready(get, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = get("/ready")
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 503, response.text
        time.sleep(0.1)
    raise AssertionError("the server never became ready")


@contextlib.contextmanager
def serving(app) -> Iterator[httpx.Client]:
    """``app`` under uvicorn on a free loopback port, in a thread; a client bound to it, once ready."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            _wait_ready(client.get)
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


def _files(data: Path, sample_id: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        (view, (f"{sample_id}.png", (data / view / f"{sample_id}.png").read_bytes(), "image/png"))
        for view in ("obverse", "reverse")
    ]


def test_server_answers_health_ready_info_docs_and_predict_on_loopback(runs: dict[str, Path]) -> None:
    data = runs["data"]
    with serving(_app(runs["linear"], runs["cache"])) as client:
        assert client.get("/health").json() == {"status": "ok"}
        info = client.get("/v1/info").json()
        assert info["classes"] == ["aureus", "denarius", "sestertius"]
        assert info["input_views"] == ["obverse", "reverse"] and info["method"] == "linear"
        assert set(info["metrics"]) == {"train", "val", "test"} and "macro_f1" in info["metrics"]["test"]
        assert "swagger" in client.get("/docs").text.lower()
        assert "/v1/predict" in client.get("/openapi.json").json()["paths"]

        response = client.post("/v1/predict", params={"top_k": 2}, files=_files(data, "den01_0"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["method"] == "linear" and body["encoder"] == "default" and body["backend"] == "torch"
        (result,) = body["results"]
        assert result["predicted"] == "denarius" and result["accepted"] and result["reject_reason"] is None
        assert len(result["predictions"]) == 2 and result["predictions"][0]["label"] == "denarius"

    # the same scores as `kenner predict` (which embeds through the cache) for the same files
    answers = predict_run(runs["linear"], [str(runs["manifest"])], k=2, cache_dir=str(runs["cache"]))
    expected = {r["id"]: r for r in answers}
    want = expected["den01_0"]["predictions"]
    got = result["predictions"]
    assert [p["label"] for p in got] == [p["label"] for p in want]
    np.testing.assert_allclose([p["probability"] for p in got], [p["probability"] for p in want], atol=1e-4)


def test_json_base64_and_several_items_in_one_request(runs: dict[str, Path]) -> None:
    data = runs["data"]
    with TestClient(_app(runs["linear"], runs["cache"])) as client:
        _wait_ready(client.get)
        images = [
            {
                "id": sample_id,
                "obverse": base64.b64encode((data / "obverse" / f"{sample_id}.png").read_bytes()).decode(),
                "reverse": base64.b64encode((data / "reverse" / f"{sample_id}.png").read_bytes()).decode(),
            }
            for sample_id in ("aur00_0", "ses02_1")
        ]
        response = client.post("/v1/predict", json={"images": images, "top_k": 1})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["id"] for r in results] == ["aur00_0", "ses02_1"]
        assert [r["predictions"][0]["label"] for r in results] == ["aureus", "sestertius"]
        assert all(len(r["predictions"]) == 1 for r in results)
        for result in results:  # the run's reject rule (tuned on val for 90% precision) applies
            label = result["predictions"][0]["label"]
            assert (result["predicted"], result["reject_reason"]) == (label, None) or (
                result["predicted"] == "unclassifiable" and " > " in result["reject_reason"]
            )
        # multipart with two items: files of each view paired in order
        files = _files(data, "aur01_0") + _files(data, "den02_1")
        results = client.post("/v1/predict", files=files).json()["results"]
        assert [r["predictions"][0]["label"] for r in results] == ["aureus", "denarius"]


def _png(size: tuple[int, int] = (48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 160, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bad(kind: str, tmp_path: Path) -> bytes:
    path = tmp_path / ("bad.jpg" if kind == "truncated" else "bad.png")
    {"truncated": _truncated_jpeg, "corrupt": _corrupt_png}[kind](path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def limited(runs: dict[str, Path]) -> Iterator[TestClient]:
    """A client of the linear run's app with small limits: 200 kB per file, 250,000 pixels per image."""
    app = _app(runs["linear"], runs["cache"], limits=Limits(max_bytes=200_000, max_pixels=500 * 500))
    with TestClient(app) as client:
        _wait_ready(client.get)
        yield client


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("not_an_image", 415, "not an image"),
        ("corrupt", 422, "corrupt"),
        ("truncated", 422, "truncated"),
        ("too_large", 413, "too large"),
        ("too_many_pixels", 413, "too many pixels"),
        ("wrong_field", 422, "unknown field"),
        ("missing_view", 422, "one image per view"),
        ("empty", 422, "empty"),
        ("bad_base64", 422, "base64"),
        ("bad_top_k", 422, "top_k"),
    ],
)
def test_bad_uploads_get_a_4xx_naming_the_file_and_the_server_keeps_answering(
    case: str, status: int, words: str, runs: dict[str, Path], limited: TestClient, tmp_path: Path
) -> None:
    good = _files(runs["data"], "aur00_0")
    reverse = good[1]
    requests = {
        "not_an_image": {"files": [("obverse", ("notes.png", b"just text", "image/png")), reverse]},
        "corrupt": {"files": [("obverse", ("broken.png", _bad("corrupt", tmp_path), "image/png")), reverse]},
        "truncated": {"files": [("obverse", ("cut.jpg", _bad("truncated", tmp_path), "image/jpeg")), reverse]},
        "too_large": {"files": [("obverse", ("huge.bin", b"\xff" * 300_000, "image/png")), reverse]},
        "too_many_pixels": {"files": [("obverse", ("wide.png", _png((1000, 400)), "image/png")), reverse]},
        "wrong_field": {"files": [("photo", ("notes.png", _png(), "image/png")), reverse]},
        "missing_view": {"files": [reverse]},
        "empty": {"files": [("obverse", ("empty.png", b"", "image/png")), reverse]},
        "bad_base64": {"json": {"images": [{"obverse": "%%%", "reverse": "AAAA"}]}},
        "bad_top_k": {"files": good, "params": {"top_k": 0}},
    }
    response = limited.post("/v1/predict", **requests[case])
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"].lower() and "Traceback" not in response.text
    filename = requests[case].get("files", [(None, (None,))])[0][1][0]
    if case in ("not_an_image", "corrupt", "truncated", "too_large", "too_many_pixels", "empty"):
        assert error["file"] == filename and error["field"] == "obverse"
    if case == "wrong_field":
        assert error["field"] == "photo"
    assert "/tmp" not in error["message"] and "kenner-serve-" not in error["message"]
    still = limited.post("/v1/predict", files=good)
    assert still.status_code == 200 and still.json()["results"][0]["predictions"][0]["label"] == "aureus"


def test_concurrent_requests_share_batches_and_get_their_own_answers(runs: dict[str, Path]) -> None:
    data = runs["data"]
    ids = [f"{label}{g:02d}_{p}" for label in ("aur", "den", "ses") for g in range(4) for p in range(2)]
    truth = {"aur": "aureus", "den": "denarius", "ses": "sestertius"}
    with serving(_app(runs["linear"], runs["cache"], max_batch=8, max_wait_ms=100)) as client:

        def ask(sample_id: str) -> str:
            response = client.post("/v1/predict", files=_files(data, sample_id))
            assert response.status_code == 200, response.text
            return response.json()["results"][0]["predictions"][0]["label"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, ids))
        stats = client.get("/v1/info").json()["batching"]
    assert answers == [truth[i[:3]] for i in ids]
    assert stats["queries"] == len(ids) and stats["batches"] < len(ids) and stats["largest"] > 1


def test_micro_batcher_batches_up_to_max_and_isolates_a_failing_item() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("unlucky")
        return [2 * item for item in items]

    async def scenario() -> tuple[list[list[int]], object]:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=50)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
        # three requests, likely in one batch: the failing one gets its error, the others their answers
        failing = await asyncio.gather(
            batcher.submit([1]), batcher.submit([13]), batcher.submit([2]), return_exceptions=True
        )
        await batcher.stop()
        return answers, failing

    answers, (one, thirteen, two) = asyncio.run(scenario())
    assert answers == [[2 * i] for i in range(10)]
    assert max(len(c) for c in calls[:3]) == 4 and sum(len(c) for c in calls[:3]) == 10
    assert one == [2] and isinstance(thirteen, ValueError) and two == [4] and [13] in calls


def test_gallery_runs_answer_neighbours_with_thumbnails(runs: dict[str, Path]) -> None:
    data = runs["data"]
    with TestClient(_app(runs["knn"], runs["cache"])) as client:
        _wait_ready(client.get)
        assert client.get("/v1/info").json()["input_views"] == ["obverse"]
        image = ("ses03_1.png", (data / "obverse" / "ses03_1.png").read_bytes(), "image/png")
        response = client.post("/v1/predict", params={"neighbours": 3, "top_k": 2}, files={"image": image})
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["predicted"] == "sestertius"
        assert len(result["neighbours"]) == 3 and result["neighbours"][0]["label"] == "sestertius"
        distances = [n["distance"] for n in result["neighbours"]]
        assert distances == sorted(distances)
        thumbnail = client.get(result["neighbours"][0]["thumbnail_url"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 160
        assert client.get("/v1/gallery/99999/thumbnail").status_code == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kenner_serve_cli_binds_loopback_and_serves_the_run(runs: dict[str, Path], tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", "import sys; from kenner.cli import main; sys.exit(main(sys.argv[1:]))"]
    args = [
        "serve",
        str(runs["knn"]),
        "--port",
        str(port),
        "--cache-dir",
        str(runs["cache"]),
        "--device",
        "cpu",
        "--no-ui",
    ]
    process = subprocess.Popen([*command, *args, "-q"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, process.stderr.read()
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/ready").status_code == 200:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.2)
            image = (runs["data"] / "obverse" / "aur02_0.png").read_bytes()
            result = client.post("/v1/predict", files={"image": ("a.png", image, "image/png")}).json()["results"][0]
            assert result["predicted"] == "aureus"
    finally:
        process.terminate()
        process.wait(20)
    bad = subprocess.run([*command, *args[:1], str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("kenner: error:") and "Traceback" not in bad.stderr


def test_a_run_that_cannot_load_is_reported_by_ready_not_by_a_crash(tmp_path: Path) -> None:
    app = create_app(lambda: load_engine(tmp_path / "nothing"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while not app.state.kenner.loaded.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and "nothing" in ready.json()["error"]["message"]
        predict = client.post("/v1/predict", files={"image": ("a.png", _png(), "image/png")})
        assert predict.status_code == 503 and json.loads(predict.text)["error"]["status"] == 503


@pytest.mark.parametrize("method", ["linear", "knn"])
def test_onnx_export_agrees_with_torch_and_serves_the_same_answers(method: str, runs: dict[str, Path]) -> None:
    run, cache, data = runs[method], runs["cache"], runs["data"]
    assert main(["export", str(run), "--format", "onnx", "--cache-dir", str(cache), "-q"]) == 0
    info = json.loads((run / "export_onnx" / "onnx.json").read_text())
    assert (run / "export_onnx" / "model.onnx").stat().st_size > 0
    assert info["check"]["images"] > 0 and info["check"]["max_abs_diff"] <= info["check"]["tolerance"]
    assert info["outputs"] == (["embeddings", "probabilities"] if method == "linear" else ["embeddings"])
    if method == "linear":
        files = _files(data, "ses01_0") + _files(data, "aur03_1")
    else:
        files = [
            ("image", (f"{i}.png", (data / "obverse" / f"{i}.png").read_bytes(), "image/png"))
            for i in ("ses01_0", "aur03_1")
        ]
    answers = {}
    for backend in ("torch", "onnx"):
        app = create_app(lambda b=backend: load_engine(run, backend=b, cache_dir=str(cache), device="cpu"))
        with TestClient(app) as client:
            assert _wait_ready(client.get)["backend"] == backend
            response = client.post("/v1/predict", params={"top_k": 3, "neighbours": 2}, files=files)
            assert response.status_code == 200, response.text
            answers[backend] = response.json()["results"]
    for torch_result, onnx_result in zip(answers["torch"], answers["onnx"], strict=True):
        assert onnx_result["predicted"] == torch_result["predicted"]
        assert [p["label"] for p in onnx_result["predictions"]] == [p["label"] for p in torch_result["predictions"]]
        np.testing.assert_allclose(
            [p["probability"] for p in onnx_result["predictions"]],
            [p["probability"] for p in torch_result["predictions"]],
            atol=1e-3,
        )
        assert [n["id"] for n in onnx_result["neighbours"]] == [n["id"] for n in torch_result["neighbours"]]


def test_run_browser_lists_runs_and_finds_confused_pairs_and_their_images(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    run = root / "coins" / "linear"
    shutil.copytree(runs["linear"], run)
    table = runs_table(root)
    assert list(table["run"]) == ["coins/linear"] and table["method"][0] == "linear"
    assert find_runs(root) == [run]
    # one test row answered wrongly: the pair is found and its image comes back from the run's dataset
    predictions = pd.read_parquet(run / "predictions.parquet")
    row = predictions.index[(predictions["split"] == "test") & (predictions["true"] == "aureus")][0]
    predictions.loc[row, "predicted"] = "denarius"
    predictions.to_parquet(run / "predictions.parquet")
    assert confused_pairs(run)[0] == ("aureus", "denarius", 1)
    ((path, caption),) = misclassified(run, "aureus", "denarius")
    sample_id = predictions.loc[row, "sample_id"]
    assert Path(path) == (runs["data"] / "obverse" / f"{sample_id}.png").resolve() and sample_id in caption


def test_background_job_runs_kenner_and_keeps_its_output(tmp_path: Path) -> None:
    from kenner.serve.jobs import Jobs

    jobs = Jobs()
    job = jobs.start(["--version"], tmp_path / "none")
    deadline = time.monotonic() + 60
    while job.state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job.state == "finished" and job.progress() == 1.0 and "kenner 0.1" in job.tail()
    assert jobs.latest() is job and not jobs.cancel(job.id)  # a finished job is not cancelled
    failing = jobs.start(["train", "--data", str(tmp_path / "missing")], tmp_path / "run")
    while failing.state == "running":
        assert time.monotonic() < deadline + 60
        time.sleep(0.1)
    time.sleep(0.3)  # the output copier drains the terminal
    assert failing.state == "failed" and "kenner: error:" in failing.tail()
