"""Atomic file writes: write a temporary file in the same folder, then rename it over the target.

A reader (or a crashed run's re-run) sees either the old file or the whole new one, never half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def json_bytes(value: Any) -> bytes:
    """Deterministic JSON (sorted keys are *not* forced: callers order their dicts on purpose)."""
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
