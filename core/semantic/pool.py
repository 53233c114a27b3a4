"""The label pool: the units a person can be asked to label (a pixel, a K x K patch or an image) over the
cached rays of the train views, each with its rectangle in OpenCV pixels.

A unit exists only where the field sees a surface in it (pixels with no surface are excluded: nothing there
for a label to stick to). Its cost is the pixels in its rectangle; its clicks, one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import NeuralLabelError
from .rays import RayCache

GRANULARITIES = ("pixel", "patch:K", "image")


@dataclass(frozen=True)
class Granularity:
    kind: str  # pixel | patch | image
    size: int = 1  # patch side (pixels)

    def __str__(self) -> str:
        return f"patch:{self.size}" if self.kind == "patch" else self.kind


def parse_granularity(text: str) -> Granularity:
    text = str(text).strip().lower()
    if text in ("pixel", "image"):
        return Granularity(text)
    if text.startswith("patch:"):
        try:
            size = int(text.split(":", 1)[1])
        except ValueError:
            size = 0
        if size >= 1:
            return Granularity("patch", size)
    raise NeuralLabelError(f"granularity {text!r}: use pixel, image or patch:K (K >= 1 pixels)", field="granularity")


@dataclass
class Pool:
    """Units (U,) with rectangles ``x, y, w, h`` in frame ``frame``; ``ray_unit`` (N,) the unit of each
    cached ray (-1: in no unit); ``unit_rays`` the rays of unit u are ``order[start[u]:start[u + 1]]``."""

    granularity: Granularity
    frame: np.ndarray
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    h: np.ndarray
    ray_unit: np.ndarray
    order: np.ndarray
    start: np.ndarray

    @property
    def size(self) -> int:
        return int(self.frame.shape[0])

    @property
    def cost(self) -> np.ndarray:
        return (self.w * self.h).astype(np.int64)

    def rays_of(self, unit: int) -> np.ndarray:
        return self.order[self.start[unit]:self.start[unit + 1]]

    def rect(self, unit: int, names: dict[int, str]) -> dict:
        frame = int(self.frame[unit])
        return {"frame": frame, "image": names.get(frame, ""), "x": int(self.x[unit]), "y": int(self.y[unit]),
                "w": int(self.w[unit]), "h": int(self.h[unit])}


def build_pool(cache: RayCache, frames: Sequence, granularity: Granularity) -> Pool:
    sizes = {f.index: (f.intrinsics.width, f.intrinsics.height) for f in frames}
    k = granularity.size if granularity.kind == "patch" else 1
    if granularity.kind == "image":
        tx = ty = np.zeros(cache.n_rays, dtype=np.int64)
    else:
        tx, ty = cache.x.astype(np.int64) // k, cache.y.astype(np.int64) // k
    key = (cache.frame << 40) | (ty << 20) | tx
    # a unit exists where at least one of its rays meets a surface; pixel units are surface pixels only
    surface_keys = np.unique(key[cache.has_surface])
    ray_unit = np.searchsorted(surface_keys, key)
    ray_unit[ray_unit >= len(surface_keys)] = 0
    inside = surface_keys[ray_unit] == key if len(surface_keys) else np.zeros(cache.n_rays, bool)
    if granularity.kind == "pixel":
        inside &= cache.has_surface
    ray_unit = np.where(inside, ray_unit, -1)
    frame = surface_keys >> 40
    uy, ux = (surface_keys >> 20) & 0xFFFFF, surface_keys & 0xFFFFF
    width = np.array([sizes[int(f)][0] for f in frame], dtype=np.int64)
    height = np.array([sizes[int(f)][1] for f in frame], dtype=np.int64)
    if granularity.kind == "image":
        x = y = np.zeros(len(frame), dtype=np.int64)
        w, h = width, height
    else:
        x, y = ux * k, uy * k
        w, h = np.minimum(k, width - x), np.minimum(k, height - y)
    order = np.argsort(ray_unit, kind="stable")
    order = order[ray_unit[order] >= 0]
    start = np.searchsorted(ray_unit[order], np.arange(len(frame) + 1))
    return Pool(granularity, frame, x, y, w, h, ray_unit, order, start)


def rays_in_rects(cache: RayCache, rects: Sequence[dict]) -> np.ndarray:
    """(N,) bool: the cached rays inside any of ``rects`` ({frame, x, y, w, h})."""
    inside = np.zeros(cache.n_rays, dtype=bool)
    by_frame: dict[int, list[dict]] = {}
    for rect in rects:
        by_frame.setdefault(int(rect["frame"]), []).append(rect)
    for frame, group in by_frame.items():
        rays = np.nonzero(cache.frame == frame)[0]
        x, y = cache.x[rays], cache.y[rays]
        for r in group:
            hit = (x >= r["x"]) & (x < r["x"] + r["w"]) & (y >= r["y"]) & (y < r["y"] + r["h"])
            inside[rays[hit]] = True
    return inside
