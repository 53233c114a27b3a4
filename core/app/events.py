"""The JSON-lines event protocol shared by ``neurallabel … --json`` and the worker process.

One JSON object per line::

    {"event": "progress", "done": 12, "total": 300, "stage": "bake", "eta_s": 41.0}
    {"event": "notice", "message": "..."}              # e.g. the photos a dataset skipped
    {"event": "result", ...}                           # the job's result, last line on success
    {"event": "error", "message": "...", "field": "device"}   # bad input; field: the request field at fault
    {"event": "cancelled"}
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional, TextIO

from ..errors import NeuralLabelError
from ..progress import Cancelled


class EventWriter:
    """Writes protocol events to ``stream``: progress at most once per ``min_interval_s`` (plus each stage's
    last), and raises :class:`Cancelled` from the progress callback once ``cancel_requested()`` is true."""

    def __init__(self, stream: TextIO, *, min_interval_s: float = 0.1,
                 cancel_requested: Callable[[], bool] = lambda: False) -> None:
        self.stream = stream
        self.min_interval_s = min_interval_s
        self.cancel_requested = cancel_requested
        self._started: dict[str, float] = {}
        self._last = 0.0

    def emit(self, event: dict) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def progress(self, done: int, total: int, stage: str) -> None:
        if self.cancel_requested():
            raise Cancelled()
        now = time.monotonic()
        start = self._started.setdefault(stage, now)
        if done < total and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.emit({"event": "progress", "done": int(done), "total": int(total), "stage": stage,
                   "eta_s": eta_seconds(start, now, done, total)})

    def notice(self, message: str) -> None:
        self.emit({"event": "notice", "message": message})

    def result(self, result: dict) -> None:
        self.emit({"event": "result", **result})

    def error(self, message: str, field: Optional[str] = None) -> None:
        self.emit({"event": "error", "message": message, **({"field": field} if field else {})})

    def user_error(self, exc: NeuralLabelError) -> None:
        self.error(str(exc), exc.field)

    def cancelled(self) -> None:
        self.emit({"event": "cancelled"})


def eta_seconds(start: float, now: float, done: int, total: int) -> Optional[float]:
    """Seconds left at the rate so far (None before the first unit is done)."""
    return round((now - start) / done * (total - done), 1) if done > 0 else None
