"""Starts and talks to the worker process (``core/worker.py``) from Blender.

:class:`WorkerJob` writes the job to a temp JSON file, starts ``python -u <extension>/core/worker.py JOB``
with ``subprocess.Popen`` (never ``multiprocessing``), and a reader thread turns its stdout lines into
events on a queue, so a modal operator's timer can :meth:`WorkerJob.poll` without blocking Blender.
:func:`run_job_sync` runs a job to the end (background mode, scripts). This module does not import bpy.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

from ..core.errors import NeuralLabelError

EXTENSION_DIR = Path(__file__).resolve().parent.parent
WORKER_SCRIPT = EXTENSION_DIR / "core" / "worker.py"


def default_python() -> str:
    """Blender's own Python (``sys.executable`` in Blender 2.91+), or this interpreter under the bpy module."""
    return sys.executable


class WorkerJob:
    """One job in a worker process. Events are dicts as printed by the worker (see core/worker.py)."""

    def __init__(self, job: dict, *, python: Optional[str] = None, sys_path: Optional[list[str]] = None,
                 env: Optional[dict] = None) -> None:
        self.job = dict(job)
        if sys_path:
            self.job["sys_path"] = [str(p) for p in sys_path]
        self.python = python or default_python()
        self.env = env
        self.process: Optional[subprocess.Popen] = None
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=60)
        self.stdout_other: deque[str] = deque(maxlen=20)  # lines that are not protocol events
        self.last_progress: Optional[dict] = None
        self.result: Optional[dict] = None
        self.error: Optional[str] = None
        self.error_field: Optional[str] = None  # the job field an error event names (NeuralLabelError.field)
        self.cancelled = False
        self._job_dir: Optional[tempfile.TemporaryDirectory] = None
        self._threads: list[threading.Thread] = []

    # --- life cycle ---------------------------------------------------------------------------------------

    def start(self) -> "WorkerJob":
        if not Path(self.python).exists():
            raise NeuralLabelError(f"the worker Python {self.python} does not exist: set it in "
                                   "Preferences > Add-ons > NeuralLabel")
        self._job_dir = tempfile.TemporaryDirectory(prefix="neurallabel-job-")
        job_path = Path(self._job_dir.name) / "job.json"
        job_path.write_text(json.dumps(self.job))
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONHOME", None)  # Blender may set it for its own Python; a user's env must not get it
        try:
            self.process = subprocess.Popen(
                [self.python, "-u", str(WORKER_SCRIPT), str(job_path)], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env,
                start_new_session=(os.name == "posix"))  # Ctrl-C in Blender's terminal is not for it
        except OSError as exc:
            raise NeuralLabelError(f"cannot start the worker Python {self.python}: {exc}") from None
        for target, stream in ((self._read_stdout, self.process.stdout), (self._read_stderr, self.process.stderr)):
            thread = threading.Thread(target=target, args=(stream,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _read_stdout(self, stream) -> None:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self.stdout_other.append(line)
                continue
            if isinstance(event, dict) and "event" in event:
                self.events.put(event)
            else:
                self.stdout_other.append(line)

    def _read_stderr(self, stream) -> None:
        for line in stream:
            self.stderr_tail.append(line.rstrip("\n"))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    def poll(self) -> list[dict]:
        """Events that arrived since the last call (never blocks); remembers progress, result and error."""
        drained = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            kind = event.get("event")
            if kind == "progress":
                self.last_progress = event
            elif kind == "result":
                self.result = {k: v for k, v in event.items() if k != "event"}
            elif kind == "error":
                self.error = str(event.get("message"))
                self.error_field = event.get("field")
            elif kind == "cancelled":
                self.cancelled = True
            drained.append(event)
        return drained

    def finished(self) -> bool:
        """True once the process has exited and all its output has been read."""
        if self.process is None or self.process.poll() is None:
            return False
        return not any(t.is_alive() for t in self._threads)

    def wait(self, timeout: Optional[float] = None) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout=5.0)
        self.poll()
        return code

    def request_cancel(self) -> None:
        """Ask the worker to stop (SIGTERM; it stops after the unit of work in progress) without waiting."""
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Stop the worker at once (SIGKILL): the last resort when it does not stop by itself."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def cancel(self, grace_s: float = 20.0) -> None:
        """Ask the worker to stop (SIGTERM: it stops between frames), then kill it if it does not."""
        if self.process is None:
            return
        self.cancelled = True
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self.poll()
        self.cleanup()

    def cleanup(self) -> None:
        if self._job_dir is not None:
            self._job_dir.cleanup()
            self._job_dir = None

    def failure(self) -> NeuralLabelError:
        """Why a finished job gave no result, as the error to raise (naming the job field at fault)."""
        return NeuralLabelError(self.failure_message(), field=self.error_field if self.error else None)

    def failure_message(self) -> str:
        """Why a finished job gave no result, in words for the report area."""
        if self.error:
            return self.error
        stderr = "\n".join(self.stderr_tail)
        missing = re.findall(r"No module named '([^']+)'", stderr)
        if missing:
            return (f"the worker's Python ({self.python}) cannot import {missing[-1]!r}: install the "
                    "dependencies (Preferences > Add-ons > NeuralLabel > Install dependencies) or set the "
                    "worker Python to an environment that has them")
        last = [line for line in self.stderr_tail if line.strip()][-3:]
        return (f"the worker stopped (exit code {self.returncode}) without a result"
                + (": " + " | ".join(last) if last else ""))


def run_job_sync(job: dict, *, python: Optional[str] = None, sys_path: Optional[list[str]] = None,
                 on_event: Optional[Callable[[dict], None]] = None, timeout: Optional[float] = None) -> dict:
    """Run a job in a worker to the end; the result event (without ``event``), or NeuralLabelError."""
    return run_to_end(WorkerJob(job, python=python, sys_path=sys_path).start(), on_event, timeout)


def run_to_end(worker: WorkerJob, on_event: Optional[Callable[[dict], None]] = None,
               timeout: Optional[float] = None) -> dict:
    """Drain a started worker until it exits: its result, or NeuralLabelError. Cancels it on any exception."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            done = worker.finished()  # checked first: once true, every event is already queued
            for event in worker.poll():
                if on_event is not None:
                    on_event(event)
            if done:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise NeuralLabelError(
                    f"the worker job {worker.job.get('kind')!r} took longer than {timeout:.0f} s")
            time.sleep(0.05)
    except BaseException:
        worker.cancel()
        raise
    finally:
        worker.cleanup()
    if worker.result is not None and worker.returncode == 0:
        return worker.result
    raise worker.failure()
