"""Progress reporting without printing: long functions take ``progress: ProgressFn | None``.

A callback receives ``(done, total, stage)``; it may raise :class:`Cancelled` to stop the work cleanly
(the caller must leave no half-written file behind). The CLI turns these calls into a rich progress bar or
JSON lines, the worker into JSON lines, the add-on into Blender's progress bar.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[int, int, str], None]


class Cancelled(Exception):
    """Raised by a progress callback to cancel the work in progress."""


def report(progress: Optional[ProgressFn], done: int, total: int, stage: str) -> None:
    if progress is not None:
        progress(done, total, stage)
