"""The frozen field's samples along each ray, cached once: the head is trained and rendered from them.

The field does not change while the head trains, so every ray's marching, weights and surface (its peak: the
start of its most-weighted sample, as the bake's depth) are computed once. Samples with a negligible weight are
dropped (they would add nothing to ``Σ w_k logits_k``); what is kept is the samples' normalised grid coordinates
(the head's input) and weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..geometry.cameras import camera_rays
from ..render.march import march
from ..render.volrend import composite

#: samples lighter than this are dropped from the cache (1 % of a pixel: their logits barely move its sum)
MIN_WEIGHT = 1e-2
#: at most this many samples per ray are kept, the heaviest (a young, foggy field spreads a ray's weight
#: over dozens of samples; the head's cost grows with them, its answer hardly)
MAX_SAMPLES = 8
#: a pixel "has a surface" where the field's opacity reaches this (as render_frame's depths)
MIN_OPACITY = 0.5


@dataclass
class RayCache:
    """Cached rays of several frames: per ray its frame index, pixel (x, y), surface point (world, NaN where
    none); per kept sample its ray, normalised coordinates and weight (packed, sorted by ray)."""

    frame: np.ndarray  # (N,) int64 frame index
    x: np.ndarray  # (N,) int32
    y: np.ndarray  # (N,) int32
    surface: np.ndarray  # (N, 3) float32 world point at the peak distance; NaN without a surface
    ray_indices: Tensor  # (M,) int64
    coords: Tensor  # (M, 3) float32 in [-1, 1] (the field's normalised coordinates)
    weights: Tensor  # (M,)

    @property
    def n_rays(self) -> int:
        return int(self.frame.shape[0])

    @property
    def has_surface(self) -> np.ndarray:
        return np.isfinite(self.surface[:, 0])

    def subset(self, rays: np.ndarray) -> "RayCache":
        """The cache of the rays ``rays`` (indices, in that order)."""
        rays = np.asarray(rays, dtype=np.int64)
        if len(rays) == 0 or np.all(np.diff(rays) > 0):  # ascending: the samples keep their order, no sort
            chosen = torch.zeros(self.n_rays, dtype=torch.bool)
            chosen[torch.from_numpy(rays)] = True
            keep = chosen[self.ray_indices]
            new_index = torch.cumsum(chosen.long(), 0) - 1
            return RayCache(self.frame[rays], self.x[rays], self.y[rays], self.surface[rays],
                            new_index[self.ray_indices[keep]], self.coords[keep], self.weights[keep])
        new_index = torch.full((self.n_rays,), -1, dtype=torch.long)
        new_index[torch.from_numpy(rays)] = torch.arange(len(rays))
        mapped = new_index[self.ray_indices]
        keep = mapped >= 0
        mapped = mapped[keep]
        order = torch.argsort(mapped, stable=True)
        return RayCache(self.frame[rays], self.x[rays], self.y[rays], self.surface[rays], mapped[order],
                        self.coords[keep][order], self.weights[keep][order])

    @staticmethod
    def concat(parts: Sequence["RayCache"]) -> "RayCache":
        offsets = np.cumsum([0] + [p.n_rays for p in parts])
        return RayCache(np.concatenate([p.frame for p in parts]), np.concatenate([p.x for p in parts]),
                        np.concatenate([p.y for p in parts]), np.concatenate([p.surface for p in parts]),
                        torch.cat([p.ray_indices + int(o) for p, o in zip(parts, offsets)]),
                        torch.cat([p.coords for p in parts]), torch.cat([p.weights for p in parts]))


def heaviest(ray_indices: Tensor, weights: Tensor, n_rays: int) -> Tensor:
    """Indices of the packed samples to keep: weight >= MIN_WEIGHT, the MAX_SAMPLES heaviest per ray, still
    grouped by ray (in order of weight inside a ray: a sum does not care)."""
    if ray_indices.numel() == 0:
        return ray_indices
    order = torch.argsort(ray_indices.double() * 2.0 - weights.double().clamp(0.0, 1.0), stable=True)
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=order.device) - first[ray_indices[order]]
    keep = order[(rank < MAX_SAMPLES) & (weights[order] >= MIN_WEIGHT)]
    return keep


@torch.no_grad()
def cache_frame(field, frame, pixels: Optional[np.ndarray] = None, *, chunk: int = 32768) -> RayCache:
    """March ``frame``'s rays (every pixel centre, or ``pixels`` (N, 2) integer x, y) through the frozen field."""
    intr = frame.intrinsics
    if pixels is None:
        ys, xs = np.mgrid[0:intr.height, 0:intr.width]
        pixels = np.stack([xs.ravel(), ys.ravel()], axis=-1)
    pixels = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
    origins, directions, _ = camera_rays(intr, frame.cam_to_data, pixels.astype(np.float64))
    device = field.aabb.device
    near = field.config.near
    surfaces, rays, coords, weights = [], [], [], []
    for begin in range(0, len(pixels), chunk):
        o = torch.from_numpy(origins[begin:begin + chunk]).float().to(device)
        d = torch.from_numpy(directions[begin:begin + chunk]).float().to(device)
        samples = march(field, o, d, near=near)
        out, samples = composite(field, o, d, samples, depth_only=True)
        hit = (out["opacity"] >= MIN_OPACITY) & torch.isfinite(out["peak_distance"])
        point = o + out["peak_distance"].clamp_max(1e6)[:, None] * d
        point[~hit] = float("nan")
        surfaces.append(point.float().cpu())
        keep = heaviest(samples.ray_indices, samples.weights, len(o))
        rays.append(samples.ray_indices[keep].cpu() + begin)
        coords.append(field.normalize(samples.points(o, d)[keep]).float().cpu())
        weights.append(samples.weights[keep].float().cpu())
    n = len(pixels)
    return RayCache(np.full(n, frame.index, dtype=np.int64), pixels[:, 0].astype(np.int32),
                    pixels[:, 1].astype(np.int32), torch.cat(surfaces).numpy() if surfaces else np.zeros((0, 3), np.float32),
                    torch.cat(rays) if rays else torch.zeros(0, dtype=torch.long),
                    torch.cat(coords) if coords else torch.zeros(0, 3), torch.cat(weights) if weights else torch.zeros(0))


#: "-peak-start": caches whose surface points sat at the median distance, or the middle of the peak sample, are stale
CACHE_FORMAT = "neurallabel-semantic-rays-peak-start"


def save_cache(path, cache: RayCache, key: dict) -> None:
    """Write ``cache`` with the ``key`` (what it was computed from) to ``path``, atomically."""
    from ..io.atomic import write_with

    payload = {"format": CACHE_FORMAT, "key": key, "frame": torch.from_numpy(cache.frame),
               "x": torch.from_numpy(cache.x), "y": torch.from_numpy(cache.y),
               "surface": torch.from_numpy(cache.surface), "ray_indices": cache.ray_indices,
               "coords": cache.coords, "weights": cache.weights}
    write_with(path, lambda tmp: torch.save(payload, tmp))


def load_cache(path, key: dict) -> Optional[RayCache]:
    """The cache saved at ``path`` when it was computed from ``key``; None when absent, stale or unreadable
    (it is then computed again: a cache is never the only copy of anything)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT or payload.get("key") != key:
        return None
    return RayCache(payload["frame"].numpy(), payload["x"].numpy(), payload["y"].numpy(), payload["surface"].numpy(),
                    payload["ray_indices"], payload["coords"], payload["weights"])


def cache_frames(field, frames, *, progress=None) -> RayCache:
    """Every pixel of every frame in ``frames``, in one cache (frame by frame, row-major inside a frame)."""
    from ..progress import report

    parts = []
    for n, frame in enumerate(frames):
        parts.append(cache_frame(field, frame))
        report(progress, n + 1, len(frames), "cache rays")
    return RayCache.concat(parts)
