"""Download the images listed in a ``url,class[,source]`` CSV into a class-folder dataset.

Layout (``root`` = ``--out-dir``; ``sources`` defaults to ``root/.sources``, hidden so that the folder
dataset reader, which skips hidden folders, does not take it for a class)::

    sources/<source>/<class>/<sha256[:16]>.<ext>   downloaded files, one per distinct image
    sources/download_state.jsonl                    one line per finished URL (resume log)
    root/<class>/<sha256[:16]>.<ext>                consolidated by hard link, symbolic link or copy
    root/download_failures.csv                      url, class, source, row, reason, attempts

File names are the first 16 hex digits of the content's SHA-256 plus the extension of the decoded
format, so they contain no ``_`` and every downloaded photo is its own group in the folder layout.
The same bytes under two URLs are stored once. Class and source names are made safe for every file
system and every final path is checked to lie inside its root; an existing different file is never
overwritten; names of kenner's own files are refused as class or source names. A rerun skips URLs
already downloaded, moves a URL whose class (or source) changed in the CSV to its new folders without
downloading it again, and retries the ones that failed. Only one download should write to a sources
folder at a time.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import unicodedata
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3
from PIL import Image

from kenner import __version__
from kenner.data.images import file_sha256, inspect_image
from kenner.errors import DataError, ImageError, KennerError
from kenner.io import atomic_write_text
from kenner.progress import progress_bar

log = logging.getLogger(__name__)

LINK_MODES = ("copy", "hard", "symlink")
STATE_FILE = "download_state.jsonl"
FAILURES_FILE = "download_failures.csv"
FAILURE_COLUMNS = ("url", "class", "source", "row", "reason", "attempts")
# kenner's own names in ROOT (class folders) and in the sources folder (source folders), compared case-blind
RESERVED_CLASSES = frozenset({FAILURES_FILE})
RESERVED_SOURCES = frozenset({STATE_FILE})
MAX_NAME_BYTES = 120
RETRY_STATUS = frozenset({408, 429})  # and every 5xx
MAX_RETRY_AFTER_S = 60.0
CHUNK_BYTES = 1 << 16
EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
_UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')


@dataclass(frozen=True)
class UrlRow:
    """One CSV row: ``row`` is the 1-based data row (the header is not counted)."""

    row: int
    url: str
    label: str
    source: str


@dataclass
class Outcome:
    """What happened to one row; also one line of the state file."""

    url: str
    label: str
    source: str
    row: int
    status: str  # "ok" (new file), "duplicate" (same bytes as an earlier row) or "failed"
    sha256: str = ""
    path: str = ""  # relative to the sources folder
    reason: str = ""
    attempts: int = 0


@dataclass
class DownloadSummary:
    """Counts for one run, the rows that failed and where the reports are."""

    rows: int = 0
    downloaded: int = 0
    duplicates: int = 0
    skipped: int = 0
    moved: int = 0
    failed: int = 0
    consolidated: int = 0
    failures: list[Outcome] = field(default_factory=list)
    failures_path: Path | None = None
    state_path: Path | None = None

    def __str__(self) -> str:
        text = (
            f"{self.rows} rows: {self.downloaded} downloaded, {self.duplicates} duplicates, "
            f"{self.skipped} already done, {self.moved} moved to a new class, {self.failed} failed; "
            f"{self.consolidated} files consolidated"
        )
        if self.failures:
            text += f"\nfailures listed in {self.failures_path}"
        return text

    @property
    def problem(self) -> str | None:
        """One line saying how many rows failed, or None when every row has its image in place."""
        if not self.failures:
            return None
        return (
            f"{len(self.failures)} of {self.rows} rows failed (listed in {self.failures_path}); fix them or "
            "rerun to retry"
        )


@dataclass
class _Fetched:
    """A worker's result: a verified temporary file, or the reason it failed."""

    tmp: Path | None
    sha256: str
    ext: str
    reason: str
    attempts: int


def safe_name(text: str, *, what: str = "name") -> str:
    """A folder name that cannot escape its parent on any file system.

    Unicode is NFC-normalised; path separators, reserved and control characters become ``-``; runs of
    dots become one dot; leading/trailing dots, dashes and spaces go (``../yellow star`` -> ``yellow star``);
    the result is capped at 120 UTF-8 bytes.
    """
    name = _UNSAFE.sub("-", unicodedata.normalize("NFC", text))
    name = re.sub(r"\.{2,}", ".", name).strip(" .-")
    name = name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore").strip(" .-")
    if not name:
        raise KennerError(f"{what} {text!r} is empty once made safe for a folder name; rename it")
    return name


def read_url_csv(path: str | os.PathLike, *, default_source: str = "default") -> list[UrlRow]:
    """Read and check a ``url,class`` CSV (``label`` is accepted for ``class``; ``source`` is optional).

    Identical rows are kept once. Raises DataError naming the row for an empty url or class, a URL that
    is not http(s), one URL under two classes or sources, two classes (or sources) that would share one
    folder, or a class or source named like one of kenner's own files.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {name.strip().lower(): name for name in reader.fieldnames or []}
            records = list(reader)
    except FileNotFoundError as error:
        raise DataError("file not found; pass a CSV of url,class rows", path=str(path)) from error
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"not a readable UTF-8 CSV ({error})", path=str(path)) from error
    class_column = columns.get("class") or columns.get("label")
    if "url" not in columns or class_column is None:
        raise DataError(f"needs a 'url' and a 'class' column; found {sorted(columns)}", path=str(path))
    source_column = columns.get("source")
    rows: dict[tuple[str, str, str], UrlRow] = {}
    first_of_url: dict[str, UrlRow] = {}
    folders: dict[str, dict[str, tuple[str, int]]] = {"class": {}, "source": {}}
    reserved = {"class": RESERVED_CLASSES, "source": RESERVED_SOURCES}
    for number, record in enumerate(records, start=1):
        url = (record.get(columns["url"]) or "").strip()
        label = (record.get(class_column) or "").strip()
        source = ((record.get(source_column) if source_column else "") or "").strip() or default_source
        if not url:
            raise DataError("empty url; fill it in or delete the row", path=str(path), row=number)
        if not label:
            raise DataError(f"empty class for {url}; fill it in or delete the row", path=str(path), row=number)
        if not _is_http_url(url):
            raise DataError(
                f"{url!r} is not an http(s) URL; only http and https are downloaded", path=str(path), row=number
            )
        for kind, value in (("class", label), ("source", source)):
            try:
                key = safe_name(value, what=kind).casefold()
            except KennerError as error:
                raise DataError(str(error), path=str(path), row=number) from error
            if key in reserved[kind]:
                raise DataError(
                    f"{kind} {value!r} has the name of a file kenner keeps beside the {kind} folders; "
                    f"rename the {kind}",
                    path=str(path),
                    row=number,
                )
            other, other_row = folders[kind].setdefault(key, (value, number))
            if other != value:
                raise DataError(
                    f"{kind} {value!r} and {other!r} (row {other_row}) would share one folder; rename one of them",
                    path=str(path),
                    row=number,
                )
        row = rows.setdefault((url, label, source), UrlRow(number, url, label, source))
        first = first_of_url.setdefault(url, row)
        if (first.label, first.source) != (label, source):
            raise DataError(
                f"{url} is listed twice, as class {first.label!r} (source {first.source!r}) in row "
                f"{first.row} and as class {label!r} (source {source!r}); keep one of the rows",
                path=str(path),
                row=number,
            )
    return list(rows.values())


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def download_images(
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sources_dir: str | os.PathLike | None = None,
    default_source: str = "default",
    workers: int = 8,
    timeout: float = 10.0,
    deadline: float = 120.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_bytes: int = 50_000_000,
    link_mode: str = "hard",
) -> DownloadSummary:
    """Download every row of ``csv_path`` and consolidate the images into ``out_dir/<class>/``.

    ``timeout`` bounds connecting and each read (seconds); ``deadline`` bounds one file in all (every attempt,
    the waits between them and the whole body, so a server that trickles its body cannot hold a worker). A
    failed attempt is retried ``retries`` times after ``backoff * 2**n`` seconds on timeouts, connection errors,
    HTTP 408/429/5xx. Bodies must be ``image/*`` (or untyped), at most ``max_bytes``, and decode as an image.
    A URL finished earlier under another class or source is moved there. ``link_mode`` is ``hard`` (falls back
    to a copy across file systems), ``symlink`` (relative link into the sources) or ``copy``.
    """
    if link_mode not in LINK_MODES:
        raise KennerError(f"unknown link mode {link_mode!r}; choose one of {', '.join(LINK_MODES)}")
    if workers < 1 or retries < 0 or timeout <= 0 or deadline <= 0 or max_bytes <= 0:
        raise KennerError("--workers and --max-bytes must be positive, --timeout and --deadline > 0 and --retries >= 0")
    rows = read_url_csv(csv_path, default_source=default_source)
    root = Path(out_dir).resolve()
    sources = Path(sources_dir).resolve() if sources_dir else root / ".sources"
    if sources == root:
        raise KennerError("--sources-dir must be a folder other than --out-dir")
    reserved = sources.relative_to(root).parts[0].casefold() if sources.is_relative_to(root) else None
    for row in rows:
        if safe_name(row.label).casefold() == reserved:
            raise DataError(
                f"class {row.label!r} is the name of the sources folder {sources}; "
                "rename the class or pass --sources-dir",
                path=str(csv_path),
                row=row.row,
            )
    state = _DownloadState(sources, root, link_mode)
    summary = DownloadSummary(rows=len(rows), state_path=state.path, failures_path=root / FAILURES_FILE)
    todo = []
    for row in rows:
        done = state.finished(row)
        if done is not None:
            summary.skipped += 1
        else:
            done = state.move(row)
            if done is None:
                todo.append(row)
                continue
            if done.status == "failed":
                summary.failed += 1
                summary.failures.append(done)
                continue
            summary.moved += 1
        _consolidate_into(summary, state, done)
    fetch = _Fetcher(
        state.partial, timeout=timeout, deadline=deadline, retries=retries, backoff=backoff, max_bytes=max_bytes
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fetch, row.url): row for row in todo}
        try:
            for future in progress_bar(as_completed(futures), total=len(futures), desc="download", unit="url"):
                outcome = state.place(futures[future], future.result())
                if outcome.status == "failed":
                    summary.failed += 1
                    summary.failures.append(outcome)
                    continue
                summary.downloaded += outcome.status == "ok"
                summary.duplicates += outcome.status == "duplicate"
                _consolidate_into(summary, state, outcome)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            state.close()
            _write_failures(summary.failures, root / FAILURES_FILE)
    return summary


def _consolidate_into(summary: DownloadSummary, state: _DownloadState, outcome: Outcome) -> None:
    """Consolidate one finished row, counting a new file or recording why it could not be placed."""
    try:
        summary.consolidated += state.consolidate(outcome)
    except KennerError as error:
        summary.failures.append(
            Outcome(
                outcome.url,
                outcome.label,
                outcome.source,
                outcome.row,
                "failed",
                outcome.sha256,
                outcome.path,
                str(error),
                outcome.attempts,
            )
        )


class _DownloadState:
    """The sources folder, its resume log and the index of images by content hash (main thread only)."""

    def __init__(self, sources: Path, root: Path, link_mode: str) -> None:
        self.sources, self.root, self.link_mode = sources, root, link_mode
        self.path = sources / STATE_FILE
        self.partial = sources / ".partial"
        self.partial.mkdir(parents=True, exist_ok=True)
        for leftover in self.partial.glob("*.part"):
            leftover.unlink()
        self.done: dict[tuple[str, str, str], Outcome] = {}
        self.by_hash: dict[str, Outcome] = {}
        self.by_url: dict[str, Outcome] = {}  # the latest finished outcome of each URL
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    outcome = Outcome(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut short when a run was killed
                if outcome.status != "failed" and (sources / outcome.path).is_file():
                    self.done[(outcome.url, outcome.label, outcome.source)] = outcome
                    self.by_hash.setdefault(outcome.sha256, outcome)
                    self.by_url[outcome.url] = outcome
        self._log = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def finished(self, row: UrlRow) -> Outcome | None:
        return self.done.get((row.url, row.label, row.source))

    def move(self, row: UrlRow) -> Outcome | None:
        """Move a URL finished under another class or source to ``row``'s folders, without downloading it again
        (its old file in ``ROOT/<old class>/`` goes); None when the URL was never finished."""
        earlier = self.by_url.get(row.url)
        if earlier is None:
            return None
        src = self.sources / earlier.path
        outcome = Outcome(
            row.url,
            row.label,
            row.source,
            row.row,
            "failed",
            earlier.sha256,
            reason=f"moved from class {earlier.label!r} (source {earlier.source!r})",
        )
        dest = _inside(self.sources / safe_name(row.source) / safe_name(row.label) / src.name, self.sources)
        if dest.exists() and file_sha256(dest) != earlier.sha256:
            outcome.reason = f"cannot move it from class {earlier.label!r}: a different file exists at {dest}"
            return outcome
        shared = any(o.path == earlier.path and o.url != row.url for o in self.done.values())
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if shared:  # another URL with the same bytes still uses the old file
                shutil.copyfile(src, dest)
            else:
                os.replace(src, dest)
        if not shared:
            self._unconsolidate(earlier, src, dest)
        self.done.pop((earlier.url, earlier.label, earlier.source), None)
        outcome.status, outcome.path = "ok", dest.relative_to(self.sources).as_posix()
        self._remember(outcome)
        if self.by_hash.get(earlier.sha256) is earlier:
            self.by_hash[earlier.sha256] = outcome
        log.info("%s: moved from class %r to %r", row.url, earlier.label, row.label)
        return outcome

    def _unconsolidate(self, earlier: Outcome, src: Path, dest: Path) -> None:
        """Remove ``ROOT/<old class>/<file>`` when it is the moved image (a link to it or a copy)."""
        old = self.root / safe_name(earlier.label) / src.name
        if old.is_symlink():
            gone = (old.parent / os.readlink(old)).resolve() in (src.resolve(), dest.resolve())
        else:
            gone = old.is_file() and (os.path.samefile(old, dest) or file_sha256(old) == earlier.sha256)
        if gone:
            old.unlink()
            with contextlib.suppress(OSError):
                old.parent.rmdir()  # only when the class folder is now empty

    def _remember(self, outcome: Outcome) -> None:
        """Log a finished outcome and index it."""
        self._log.write(json.dumps(asdict(outcome), ensure_ascii=False) + "\n")
        self._log.flush()
        self.done[(outcome.url, outcome.label, outcome.source)] = outcome
        self.by_url[outcome.url] = outcome

    def place(self, row: UrlRow, fetched: _Fetched) -> Outcome:
        """Move a fetched file to its final name (or drop it as a duplicate) and log the outcome."""
        outcome = Outcome(
            row.url,
            row.label,
            row.source,
            row.row,
            "failed",
            fetched.sha256,
            reason=fetched.reason,
            attempts=fetched.attempts,
        )
        if fetched.tmp is not None:
            self._place_file(outcome, fetched)
        if outcome.status == "failed":
            self._log.write(json.dumps(asdict(outcome), ensure_ascii=False) + "\n")
            self._log.flush()
        else:
            self._remember(outcome)
        return outcome

    def _place_file(self, outcome: Outcome, fetched: _Fetched) -> None:
        earlier = self.by_hash.get(fetched.sha256)
        if earlier is not None:
            fetched.tmp.unlink()
            if earlier.label != outcome.label:
                outcome.reason = (
                    f"same image as {earlier.url} (row {earlier.row}, class {earlier.label!r}); "
                    "fix the class of one of them in the CSV"
                )
                return
            outcome.status, outcome.path = "duplicate", earlier.path
            return
        dest = _inside(
            self.sources / safe_name(outcome.source) / safe_name(outcome.label) / f"{fetched.sha256[:16]}{fetched.ext}",
            self.sources,
        )
        if dest.exists():
            fetched.tmp.unlink()
            if file_sha256(dest) != fetched.sha256:
                outcome.reason = f"a different file already exists at {dest}; not overwritten"
                return
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(fetched.tmp, dest)
        outcome.status, outcome.path = "ok", dest.relative_to(self.sources).as_posix()
        self.by_hash[fetched.sha256] = outcome

    def consolidate(self, outcome: Outcome) -> bool:
        """Link or copy a downloaded file into ``root/<class>/``; True when a new file was made there."""
        src = self.sources / outcome.path
        dest = _inside(self.root / safe_name(outcome.label) / src.name, self.root)
        if dest.exists() or dest.is_symlink():
            if dest.exists() and (os.path.samefile(src, dest) or file_sha256(dest) == outcome.sha256):
                return False
            raise KennerError(f"not consolidated: a different file already exists at {dest}; not overwritten")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            if self.link_mode == "symlink":
                os.symlink(os.path.relpath(src, dest.parent), tmp)
            elif self.link_mode == "hard":
                try:
                    os.link(src, tmp)
                except OSError as error:
                    if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                    log.debug("hard link %s -> %s failed (%s); copying", src, dest, error)
                    shutil.copyfile(src, tmp)
            else:
                shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def close(self) -> None:
        self._log.close()


class _Fetcher:
    """Downloads one URL to a verified temporary file; safe to call from many threads at once."""

    def __init__(
        self, partial: Path, *, timeout: float, deadline: float, retries: int, backoff: float, max_bytes: int
    ) -> None:
        self.partial, self.timeout, self.deadline, self.retries = partial, timeout, deadline, retries
        self.backoff, self.max_bytes = backoff, max_bytes
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers["User-Agent"] = f"kenner/{__version__} (image downloader)"
        return self._local.session

    def __call__(self, url: str) -> _Fetched:
        reason = ""
        until = time.monotonic() + self.deadline
        late = f"not finished within --deadline {self.deadline:g} s"
        for attempt in range(1, self.retries + 2):
            try:
                sha, ext, tmp = self._fetch_once(url, until)
                return _Fetched(tmp, sha, ext, "", attempt)
            except _Retry as error:
                reason, wait = str(error), error.wait
            except _Fail as error:
                return _Fetched(None, "", "", str(error), attempt)
            except (requests.Timeout, urllib3.exceptions.TimeoutError):
                reason, wait = f"timed out (--timeout {self.timeout:g} s)", 0.0
            except (
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError,
            ) as error:
                reason, wait = f"connection failed: {type(error).__name__}", 0.0
            except requests.RequestException as error:
                return _Fetched(None, "", "", f"request failed: {error}", attempt)
            left = until - time.monotonic()
            if attempt <= self.retries:
                pause = max(wait, self.backoff * 2 ** (attempt - 1))
                if pause >= left:
                    return _Fetched(None, "", "", f"{reason}; {late}", attempt)
                time.sleep(pause)
        attempts = self.retries + 1
        return _Fetched(None, "", "", f"{reason}; gave up after {attempts} attempts", attempts)

    def _fetch_once(self, url: str, until: float) -> tuple[str, str, Path]:
        """One attempt, given up at ``until`` (``time.monotonic()``): (sha256, extension, temporary file); the file
        is removed if anything fails. The body is read as it arrives (``read1``), so a trickle meets the deadline."""
        tmp = self.partial / f"{uuid.uuid4().hex}.part"
        try:
            left = until - time.monotonic()
            if left <= 0:
                raise _Fail(f"not finished within --deadline {self.deadline:g} s")
            with self._session().get(url, stream=True, timeout=min(self.timeout, left)) as response:
                _check_response(response, self.max_bytes)
                digest, size = hashlib.sha256(), 0
                with open(tmp, "wb") as handle:
                    while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise _Fail(f"too large: more than --max-bytes {self.max_bytes} bytes")
                        if time.monotonic() > until:
                            raise _Fail(
                                f"too slow: not finished within --deadline {self.deadline:g} s ({size} bytes received)"
                            )
                        digest.update(chunk)
                        handle.write(chunk)
            if size == 0:
                raise _Fail("empty body")
            return digest.hexdigest(), _verified_extension(tmp), tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _check_response(response: requests.Response, max_bytes: int) -> None:
    """Refuse error statuses, non-image content types and declared sizes over ``max_bytes``."""
    if response.status_code in RETRY_STATUS or response.status_code >= 500:
        raise _Retry(
            f"HTTP {response.status_code} {response.reason}", _retry_after(response.headers.get("Retry-After"))
        )
    if response.status_code >= 400:
        raise _Fail(f"HTTP {response.status_code} {response.reason}")
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind and not kind.startswith("image/") and kind != "application/octet-stream":
        raise _Fail(f"not an image: Content-Type {kind}")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _Fail(f"too large: {declared} bytes > --max-bytes {max_bytes}")


class _Retry(Exception):
    """A failed attempt worth repeating; ``wait`` is the server's Retry-After (seconds)."""

    def __init__(self, message: str, wait: float = 0.0) -> None:
        super().__init__(message)
        self.wait = wait


class _Fail(Exception):
    """A failure that another attempt would not change."""


def _retry_after(value: str | None) -> float:
    return min(float(value), MAX_RETRY_AFTER_S) if value and value.isdigit() else 0.0


def _verified_extension(path: Path) -> str:
    """Fully decode the image (catches corrupt and truncated files) and return its file extension."""
    try:
        inspect_image(path)
    except ImageError as error:
        raise _Fail(f"not a readable image: {str(error).removeprefix(f'{error.path}: ')}") from error
    with Image.open(path) as image:
        image_format = image.format or ""
    return EXTENSIONS.get(image_format, f".{image_format.lower() or 'img'}")


def _inside(path: Path, root: Path) -> Path:
    """``path`` resolved, refusing anything that would land outside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise KennerError(f"refusing to write {path}: it resolves outside {root}")
    return resolved


def _write_failures(failures: list[Outcome], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    for item in sorted(failures, key=lambda outcome: outcome.row):
        writer.writerow((item.url, item.label, item.source, item.row, item.reason, item.attempts))
    atomic_write_text(path, buffer.getvalue())
