"""Checking paths users hand us before opening them: a directory, a FIFO or a device (``/dev/zero``) is not
a file to read. Opening a FIFO blocks until a writer comes and ``/dev/zero`` never ends, so these are
checked with ``stat`` (which does neither) before anything reads the path."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from ..errors import NeuralLabelError


def file_problem(path: str | Path) -> Optional[str]:
    """Why ``path`` cannot be read as a file ("does not exist", "is not a regular file (a directory)", ...),
    or None when it is a regular file (symlinks are followed)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as exc:  # permission, a name too long, a NUL byte in the name
        return f"cannot be read ({exc.__class__.__name__})"
    if stat.S_ISREG(mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a file")
    return f"is not a regular file ({kind})"


def check_regular_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file, else NeuralLabelError "WHAT PATH does not exist" / "is not a regular
    file (a FIFO)"."""
    problem = file_problem(path)
    if problem is not None:
        raise NeuralLabelError(f"{what} {path} {problem}")
    return Path(path)
