"""Background training jobs of the web UI: ``kenner train`` (or ``kenner sweep``) in a subprocess each, with
their output kept, their state polled and a cancel that stops them the way Ctrl-C does (SIGTERM)."""

from __future__ import annotations

import itertools
import os
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
        with open(log, "wb") as handle:
            process = subprocess.Popen([*COMMAND, *argv], stdout=handle, stderr=subprocess.STDOUT, env=env)
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
