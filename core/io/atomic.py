"""Atomic file writes: write a temporary file in the same folder, then rename it over the target.

A reader (or a crashed run's re-run) sees either the old file or the whole new one, never half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np


TEMP_SUFFIX = ".tmp"
#: temp names say which host and process write them, so a later run can tell a stale one (its writer died)
#: from one a concurrent process is still writing: ``.NAME.nltmp-HOST-PID-RANDOM.tmp``.
TEMP_PATTERN = re.compile(r"^\..+\.nltmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[^.]+\.tmp$")


def host_tag() -> str:
    return _host_tag(socket.gethostname())


@lru_cache(maxsize=4)
def _host_tag(hostname: str) -> str:
    return hashlib.sha256(hostname.encode()).hexdigest()[:8]


def temp_path(path: Path) -> Path:
    """A new, unique hidden temp file next to ``path``, created empty and readable as a normal file would be:
    created with mode 0666, which the process's umask trims as for any new file (mkstemp's 0600 would stay
    after the rename; reading and restoring the umask instead would race with other threads creating files)."""
    tmp, fd = _open_temp(path)
    os.close(fd)
    return tmp


def _open_temp(path: Path) -> tuple[Path, int]:
    """:func:`temp_path`, open for writing: (its path, its file descriptor). Creates ``path``'s folder when it
    is missing (tried after the file: a bake's folders exist after its first frame)."""
    prefix = f".{path.name}.nltmp-{host_tag()}-{os.getpid()}-"
    made_folder = False
    while True:
        tmp = path.parent / f"{prefix}{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue
        except FileNotFoundError:
            if made_folder:  # the folder exists (another process may have made it first): a real error
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            made_folder = True


def is_stale_temp(path: Path, max_age_s: float = 24 * 3600) -> bool:
    """Whether ``path`` is one of our temp files whose writer is gone: a dead process on this host, or (from
    another host, whose processes we cannot see) older than ``max_age_s``."""
    match = TEMP_PATTERN.match(path.name)
    if match is None:
        return False
    if match["host"] == host_tag():
        try:
            os.kill(int(match["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        return time.time() - path.stat().st_mtime > max_age_s
    except OSError:
        return False


def remove_stale_temps(folder: str | Path) -> int:
    """Remove the stale temp files (:func:`is_stale_temp`) anywhere below ``folder``; returns how many."""
    removed = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(TEMP_SUFFIX) and is_stale_temp(Path(root) / name):
                try:
                    (Path(root) / name).unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Atomically create ``path`` with ``write(tmp_path)`` (e.g. ``torch.save``, ``cv2.imwrite``): the
    writer fills a temp file in the same folder, which is renamed over ``path`` only when it returns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """:func:`write_with` of ``data``, through the temp file's own descriptor: one open per file (a bake writes
    some 25 files a frame)."""
    path = Path(path)
    tmp, fd = _open_temp(path)
    try:
        _fill(tmp, fd, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_if_changed(path: str | Path, data: bytes) -> bool:
    """``write_bytes`` unless ``path`` already holds exactly ``data`` (a re-run keeps the file untouched);
    True when it wrote."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    write_bytes(path, data)
    return True


def _fill(tmp: Path, fd: int, data: bytes) -> None:
    """Write ``data`` into the open temp file ``tmp`` and close it."""
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def json_bytes(value: Any, *, compact: bool = False) -> bytes:
    """Deterministic JSON (sorted keys are *not* forced: callers order their dicts on purpose). ``compact``: no
    indentation or spaces, for the files that grow with the frames (per-frame records and what gathers them):
    Python's C encoder writes those several times faster than its indenting one."""
    if compact:
        return (json.dumps(value, separators=(",", ":")) + "\n").encode()
    return (json.dumps(value, indent=1) + "\n").encode()


def write_json(path: str | Path, value: Any) -> Path:
    return write_bytes(path, json_bytes(value))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 / uint16 image (grey or RGB), deterministic for the same pixels."""
    import cv2

    image = np.ascontiguousarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8 or uint16 pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()
