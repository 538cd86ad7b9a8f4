"""Background training jobs of the web UI: ``kenner train`` in a subprocess each, with its output kept, its state
and progress polled and a cancel that stops it the way Ctrl-C does (SIGTERM).

The job's output goes through a pseudo-terminal where there is one, so kenner's progress bars are drawn (they show
on terminals only) and the UI reads the current bar's percentage from the output.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import kenner

COMMAND = [sys.executable, "-c", "import sys; from kenner.cli import main; sys.exit(main(sys.argv[1:]))"]
TAIL_LINES = 12
PERCENT = re.compile(r"(\d{1,3})%\|")


@dataclass
class Job:
    """One background command: its arguments, run folder, process and output file."""

    id: int
    argv: list[str]
    out_dir: Path
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    cancelled: bool = False

    @property
    def state(self) -> str:
        """running, finished, failed or cancelled."""
        code = self.process.poll()
        if code is None:
            return "running"
        if self.ended is None:
            self.ended = time.monotonic()
        if self.cancelled:
            return "cancelled"
        return "finished" if code == 0 else "failed"

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of the job's output."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    def progress(self) -> float | None:
        """The fraction the current progress bar shows (1 once finished; None before the first bar)."""
        if self.state == "finished":
            return 1.0
        found = PERCENT.findall(self.tail(3))
        return int(found[-1]) / 100 if found else None

    def status(self) -> str:
        return (
            f"job {self.id} {self.state} after {self.seconds:.0f} s: kenner {' '.join(self.argv[:1])} → {self.out_dir}"
        )


class Jobs:
    """The UI's jobs, numbered from 1."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._logs = Path(tempfile.mkdtemp(prefix="kenner-jobs-"))

    def start(self, argv: list[str], out_dir: Path) -> Job:
        """Run ``kenner ARGV`` in the background (its output into a log file)."""
        with self._lock:
            job_id = next(self._ids)
        log = self._logs / f"job{job_id}.log"
        source = str(Path(kenner.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
        process = _start([*COMMAND, *argv], log, env)
        job = Job(job_id, list(argv), Path(out_dir), process, log)
        with self._lock:
            self._jobs[job_id] = job
        return job

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def latest(self) -> Job | None:
        return self._jobs[max(self._jobs)] if self._jobs else None

    def cancel(self, job_id: int) -> bool:
        """Stop a running job (SIGTERM: kenner keeps finished work and exits); False when it was not running."""
        job = self._jobs.get(job_id)
        if job is None or job.state != "running":
            return False
        job.cancelled = True
        job.process.terminate()
        return True

    def close(self) -> None:
        for job in self._jobs.values():
            if job.process.poll() is None:
                job.process.terminate()


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` with its output (through a pseudo-terminal where the system has them) copied to ``log``."""
    try:
        import pty

        master, slave = pty.openpty()
    except (ImportError, OSError):
        with open(log, "wb") as handle:
            return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    process = subprocess.Popen(command, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    threading.Thread(target=_copy, args=(master, log), daemon=True).start()
    return process


def _copy(master: int, log: Path) -> None:
    """Append what the job writes to its terminal to ``log`` until it closes it."""
    with open(log, "ab") as handle, contextlib.suppress(OSError):
        while chunk := os.read(master, 4096):
            handle.write(chunk)
            handle.flush()
    os.close(master)
