"""URL downloader against a loopback HTTP server serving good, broken, slow and hostile responses."""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from kenner.cli.download import register
from kenner.data.download import download_images, read_url_csv, safe_name
from kenner.data.manifest import load_dataset
from kenner.errors import DataError, KennerError

TIMEOUT = 0.3
FAST = {"timeout": TIMEOUT, "retries": 1, "backoff": 0.01, "workers": 4, "max_bytes": 20_000}


def _image_bytes(color: tuple[int, int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = _image_bytes((200, 30, 30), "JPEG")
PNG = _image_bytes((30, 200, 30), "PNG")
TARGET = _image_bytes((30, 30, 200), "JPEG")
ESCAPE = _image_bytes((90, 90, 90), "PNG")
BIG = b"\xff" * 50_000


def _name(data: bytes, ext: str) -> str:
    return hashlib.sha256(data).hexdigest()[:16] + ext


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[Counter] = Counter()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, kind: str, *, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        with self.lock:
            self.hits[path] += 1
            count = self.hits[path]
        if "escape" in path:
            self._send(200, ESCAPE, "image/png")
        elif path in ("/good.jpg", "/copy.jpg"):
            self._send(200, JPEG, "image/jpeg")
        elif path == "/good.png":
            self._send(200, PNG, "image/png; charset=binary")
        elif path == "/target.jpg":
            self._send(200, TARGET, "image/jpeg")
        elif path == "/broken.jpg":
            self._send(200, JPEG[: len(JPEG) // 2], "image/jpeg")
        elif path == "/page.html":
            self._send(200, b"<html><body>not an image</body></html>", "text/html")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/target.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/flaky.png" and count == 1:
            self._send(500, b"oops", "text/plain")
        elif path == "/flaky.png":
            self._send(200, _image_bytes((1, 2, 3), "PNG"), "image/png")
        elif path == "/always500":
            self._send(500, b"oops", "text/plain")
        elif path == "/slow.jpg":
            time.sleep(TIMEOUT * 3)
            with contextlib.suppress(OSError):  # the client has given up
                self._send(200, JPEG, "image/jpeg")
        elif path == "/trickle.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gives up half-way
                for byte in PNG:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(TIMEOUT / 6)
                with self.lock:
                    self.hits["trickle finished"] += 1
        elif path == "/big-declared.jpg":
            self._send(200, BIG, "image/jpeg")
        elif path == "/big-streamed.jpg":
            self._send(200, BIG, "image/jpeg", length=False)
        else:
            self._send(404, b"no", "text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def _write_csv(path: Path, rows: list[tuple[str, ...]], header: tuple[str, ...] = ("url", "class")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _failures(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "download_failures.csv", newline="", encoding="utf-8") as handle:
        return {row["url"]: row for row in csv.DictReader(handle)}


def _all_files(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file() or path.is_symlink()}


def test_every_kind_of_response(server: str, tmp_path: Path) -> None:
    names = [
        "good.jpg",
        "good.png",
        "copy.jpg",
        "broken.jpg",
        "page.html",
        "redirect",
        "missing.jpg",
        "flaky.png",
        "always500",
        "slow.jpg",
        "big-declared.jpg",
        "big-streamed.jpg",
    ]
    rows = [(f"{server}/{name}", "cats") for name in names]
    csv_path = _write_csv(tmp_path / "urls.csv", rows)
    root = tmp_path / "root"
    summary = download_images(csv_path, root, **FAST)

    assert (summary.rows, summary.downloaded, summary.duplicates, summary.failed) == (12, 4, 1, 7)
    class_dir = root / "cats"
    expected = {
        _name(JPEG, ".jpg"),
        _name(PNG, ".png"),
        _name(TARGET, ".jpg"),
        _name(_image_bytes((1, 2, 3), "PNG"), ".png"),
    }
    assert {path.name for path in class_dir.iterdir()} == expected
    assert (class_dir / _name(JPEG, ".jpg")).read_bytes() == JPEG
    assert all("_" not in name for name in expected)  # each photo is its own group
    failures = _failures(root)
    assert set(failures) == {
        f"{server}/{name}"
        for name in (
            "broken.jpg",
            "page.html",
            "missing.jpg",
            "always500",
            "slow.jpg",
            "big-declared.jpg",
            "big-streamed.jpg",
        )
    }
    assert "not a readable image" in failures[f"{server}/broken.jpg"]["reason"]
    assert "text/html" in failures[f"{server}/page.html"]["reason"]
    assert "HTTP 404" in failures[f"{server}/missing.jpg"]["reason"]
    assert failures[f"{server}/missing.jpg"]["attempts"] == "1"
    assert "HTTP 500" in failures[f"{server}/always500"]["reason"]
    assert failures[f"{server}/always500"]["attempts"] == "2"
    assert "timed out" in failures[f"{server}/slow.jpg"]["reason"]
    assert "too large" in failures[f"{server}/big-declared.jpg"]["reason"]
    assert "too large" in failures[f"{server}/big-streamed.jpg"]["reason"]
    state_lines = (root / ".sources" / "download_state.jsonl").read_text().splitlines()
    state = [json.loads(line) for line in state_lines]
    by_url = {record["url"]: record for record in state}
    assert by_url[f"{server}/flaky.png"]["attempts"] == 2
    assert by_url[f"{server}/copy.jpg"]["path"] == by_url[f"{server}/good.jpg"]["path"]
    assert {by_url[f"{server}/copy.jpg"]["status"], by_url[f"{server}/good.jpg"]["status"]} == {"ok", "duplicate"}
    assert not list((root / ".sources" / ".partial").iterdir())


def test_rerun_downloads_nothing_new(server: str, tmp_path: Path) -> None:
    rows = [(f"{server}/good.png", "a"), (f"{server}/target.jpg", "b"), (f"{server}/missing.jpg", "b")]
    csv_path = _write_csv(tmp_path / "urls.csv", rows)
    root = tmp_path / "root"
    first = download_images(csv_path, root, **FAST)
    assert (first.downloaded, first.failed) == (2, 1)
    before = Counter(_Handler.hits)
    with open(root / ".sources" / "download_state.jsonl", "a") as handle:
        handle.write('{"url": "cut sho')  # a run killed mid-line
    second = download_images(csv_path, root, **FAST)
    assert (second.downloaded, second.skipped, second.failed, second.consolidated) == (0, 2, 1, 0)
    assert _Handler.hits["/good.png"] == before["/good.png"]
    assert _Handler.hits["/target.jpg"] == before["/target.jpg"]
    assert _Handler.hits["/missing.jpg"] == before["/missing.jpg"] + 1  # failures are retried


def test_hostile_class_and_url_stay_inside_root(server: str, tmp_path: Path) -> None:
    rows = [
        (f"{server}/good.jpg", "../../x"),
        (f"{server}/img/..%2f..%2fescape.png", "/etc/passwd"),
        (f"{server}/../../escape2.png", ".."),
    ]
    csv_path = _write_csv(tmp_path / "urls.csv", rows[:2])
    root = tmp_path / "root"
    summary = download_images(csv_path, root, **FAST)
    assert summary.downloaded == 2
    assert _all_files(tmp_path) - {csv_path} == {p for p in _all_files(root)}
    assert {path.name for path in root.iterdir() if path.is_dir()} == {".sources", "x", "etc-passwd"}
    assert (root / "x" / _name(JPEG, ".jpg")).exists()
    with pytest.raises(DataError, match="row 1"):
        download_images(_write_csv(tmp_path / "dots.csv", rows[2:]), root, **FAST)


@pytest.mark.parametrize("mode", ["hard", "symlink", "copy"])
def test_link_modes(server: str, tmp_path: Path, mode: str) -> None:
    csv_path = _write_csv(
        tmp_path / "urls.csv", [(f"{server}/good.png", "a", "aurita")], header=("url", "class", "source")
    )
    root = tmp_path / "root"
    download_images(csv_path, root, link_mode=mode, sources_dir=tmp_path / "raw_sources", **FAST)
    source_file = tmp_path / "raw_sources" / "aurita" / "a" / _name(PNG, ".png")
    final = root / "a" / _name(PNG, ".png")
    assert source_file.read_bytes() == PNG and final.read_bytes() == PNG
    if mode == "hard":
        assert os.stat(final).st_ino == os.stat(source_file).st_ino
    elif mode == "symlink":
        assert final.is_symlink() and not os.path.isabs(os.readlink(final))
        assert final.resolve() == source_file.resolve()
    else:
        assert not final.is_symlink() and os.stat(final).st_ino != os.stat(source_file).st_ino


@pytest.mark.parametrize("mode", ["hard", "symlink"])
def test_download_is_a_folder_dataset(server: str, tmp_path: Path, mode: str) -> None:
    rows = [(f"{server}/good.png", "a"), (f"{server}/target.jpg", "a"), (f"{server}/good.jpg", "b")]
    root = tmp_path / "root"
    download_images(_write_csv(tmp_path / "urls.csv", rows), root, link_mode=mode, **FAST)
    dataset, excluded = load_dataset(root)
    assert dataset.classes == ["a", "b"] and not excluded
    assert sorted(dataset.groups) == sorted(_name(data, "") for data in (PNG, TARGET, JPEG))


def test_existing_different_file_is_not_overwritten(server: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    occupied = root / "a" / _name(PNG, ".png")
    occupied.parent.mkdir(parents=True)
    occupied.write_bytes(b"someone else's file")
    csv_path = _write_csv(tmp_path / "urls.csv", [(f"{server}/good.png", "a")])
    summary = download_images(csv_path, root, **FAST)
    assert occupied.read_bytes() == b"someone else's file"
    assert summary.downloaded == 1 and summary.consolidated == 0
    assert "not overwritten" in _failures(root)[f"{server}/good.png"]["reason"]


def test_existing_different_source_file_is_not_overwritten(server: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    occupied = root / ".sources" / "default" / "a" / _name(PNG, ".png")
    occupied.parent.mkdir(parents=True)
    occupied.write_bytes(b"not the download")
    summary = download_images(_write_csv(tmp_path / "urls.csv", [(f"{server}/good.png", "a")]), root, **FAST)
    assert occupied.read_bytes() == b"not the download"
    assert summary.failed == 1 and not (root / "a").exists()
    assert "not overwritten" in _failures(root)[f"{server}/good.png"]["reason"]


def test_same_image_under_two_classes_is_reported(server: str, tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "urls.csv", [(f"{server}/good.jpg", "a"), (f"{server}/copy.jpg", "b")])
    summary = download_images(csv_path, tmp_path / "root", **{**FAST, "workers": 1})
    assert (summary.downloaded, summary.failed) == (1, 1)
    assert "same image as" in summary.failures[0].reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("link,class\nhttp://x/a.jpg,a\n", "'url' and a 'class' column"),
        ("url,class\nhttp://x/a.jpg,a\n,b\n", "row 2: empty url"),
        ("url,class\nhttp://x/a.jpg,\n", "row 1: empty class"),
        ("url,class\nfile:///etc/passwd,a\n", "row 1: 'file:///etc/passwd' is not an http"),
        ("url,class\nhttp://x/a.jpg,Sagui\nhttp://x/b.jpg,sagui\n", "row 2: class 'sagui' and 'Sagui'"),
    ],
)
def test_csv_errors_name_the_row(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "urls.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("?", r"\?")):
        read_url_csv(path)


def test_csv_reads_source_and_label_alias(tmp_path: Path) -> None:
    path = tmp_path / "urls.csv"
    path.write_text("URL,label,source\nhttp://x/a.jpg,a,aurita\nhttp://x/a.jpg,a,aurita\nhttps://x/b.jpg,b,\n")
    rows = read_url_csv(path, default_source="web")
    assert [(row.row, row.label, row.source) for row in rows] == [(1, "a", "aurita"), (3, "b", "web")]


def test_cli(server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    csv_path = _write_csv(tmp_path / "urls.csv", [(f"{server}/good.png", "a"), (f"{server}/nothing", "a")])
    base = [
        "download",
        "--csv",
        str(csv_path),
        "--out-dir",
        str(tmp_path / "root"),
        "--timeout",
        "0.3",
        "--retries",
        "0",
        "--link-mode",
        "copy",
    ]
    args = parser.parse_args(base)
    assert args.func(args) == 1  # one URL failed
    out, err = capsys.readouterr()
    assert "1 downloaded" in out
    assert (
        err == f"kenner: 1 of 2 rows failed (listed in {tmp_path / 'root' / 'download_failures.csv'}); fix them "
        "or rerun to retry\n"
    )
    assert (tmp_path / "root" / "a" / _name(PNG, ".png")).read_bytes() == PNG
    only_good = _write_csv(tmp_path / "good.csv", [(f"{server}/good.png", "../yellow star")])
    args = parser.parse_args([*base[:2], str(only_good), *base[3:]])
    assert args.func(args) == 0 and capsys.readouterr().err == ""
    assert (tmp_path / "root" / "yellow star" / _name(PNG, ".png")).read_bytes() == PNG


def test_safe_name() -> None:
    assert safe_name("Callithrix aurita") == "Callithrix aurita"
    assert safe_name("../../x") == "x"
    assert safe_name("../yellow star") == "yellow star"
    assert safe_name("a/../b") == "a-.-b"
    assert safe_name(".hidden") == "hidden"
    assert safe_name("a\\b:c") == "a-b-c"
    assert safe_name("Cafe\u0301") == "Caf\u00e9"
    assert len(safe_name("é" * 200).encode()) <= 120
    with pytest.raises(KennerError):
        safe_name("..")


def test_a_trickling_body_meets_the_deadline(server: str, tmp_path: Path) -> None:
    csv_path = _write_csv(tmp_path / "urls.csv", [(f"{server}/trickle.png", "a")])
    summary = download_images(csv_path, tmp_path / "root", **{**FAST, "deadline": TIMEOUT * 2})
    assert summary.failed == 1 and _Handler.hits["trickle finished"] == 0  # every read came within --timeout
    reason = summary.failures[0].reason
    assert reason.startswith(f"too slow: not finished within --deadline {TIMEOUT * 2:g} s (")
    assert summary.failures[0].attempts == 1  # a trickle is not retried


@pytest.mark.parametrize("mode", ["hard", "symlink", "copy"])
def test_a_relabelled_url_moves_to_its_new_class(server: str, tmp_path: Path, mode: str) -> None:
    root = tmp_path / "root"
    first = _write_csv(tmp_path / "urls.csv", [(f"{server}/good.png", "a"), (f"{server}/target.jpg", "a")])
    download_images(first, root, link_mode=mode, **FAST)
    before = Counter(_Handler.hits)
    second = _write_csv(tmp_path / "urls.csv", [(f"{server}/good.png", "b"), (f"{server}/target.jpg", "a")])
    summary = download_images(second, root, link_mode=mode, **FAST)
    assert (summary.moved, summary.skipped, summary.downloaded, summary.failed) == (1, 1, 0, 0)
    assert _Handler.hits["/good.png"] == before["/good.png"]  # moved, not downloaded again
    assert (root / "b" / _name(PNG, ".png")).read_bytes() == PNG and not (root / "a" / _name(PNG, ".png")).exists()
    assert not (root / ".sources" / "default" / "a" / _name(PNG, ".png")).exists()
    dataset, _ = load_dataset(root)
    assert dict(zip(dataset.groups, dataset.labels, strict=True)) == {_name(PNG, ""): "b", _name(TARGET, ""): "a"}
    again = download_images(second, root, link_mode=mode, **FAST)
    assert (again.moved, again.skipped, again.downloaded) == (0, 2, 0)


def test_one_url_under_two_classes_names_both_rows(tmp_path: Path) -> None:
    rows = [("http://x/a.jpg", "a"), ("http://x/b.jpg", "a"), ("http://x/a.jpg", "b")]
    path = _write_csv(tmp_path / "urls.csv", rows)
    with pytest.raises(DataError) as caught:
        read_url_csv(path)
    assert str(caught.value) == (
        f"{path}, row 3: http://x/a.jpg is listed twice, as class 'a' (source 'default') in "
        "row 1 and as class 'b' (source 'default'); keep one of the rows"
    )


@pytest.mark.parametrize(
    ("header", "row", "what"),
    [
        (("url", "class"), ("Download_Failures.CSV",), "class"),
        (("url", "class", "source"), ("a", "download_state.jsonl"), "source"),
    ],
)
def test_kenner_file_names_are_not_class_or_source_names(server: str, tmp_path: Path, header, row, what) -> None:
    csv_path = _write_csv(
        tmp_path / "urls.csv", [(f"{server}/good.png", "a"), (f"{server}/nothing", *row)], header=header
    )
    root = tmp_path / "root"
    with pytest.raises(DataError, match=f"row 2: {what} '{row[-1]}' has the name of a file kenner keeps"):
        download_images(csv_path, root, **FAST)
    assert not root.exists()
