"""Exact correspondences of a generated scene (``scripts/make_scene.py``): its true z-depth, instance ids and
cameras, and the class of each pixel (for benchmarks and the tests that check the generator).

A pixel of A corresponds to the projection of its true 3D point into B; the point is *visible* in B when B's
true depth there agrees with the point's depth within ``max(abs_tol, rel_tol * z)`` (3 mm, 0.5 %) and B sees
the same instance. Pixel classes: ``glass`` (a transparent object), ``edge`` (a depth or id step in the 3 x 3
neighbourhood), ``thin`` (an object part at most ``2 * thin_px`` pixels wide), ``opaque`` (other object
pixels) and ``background`` (id 0: floor, walls, sky).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry.projection import backproject
from ..geometry.view import View
from .reproject import project_to_view

CLASSES = ("opaque", "edge", "thin", "glass", "background")


@dataclass(frozen=True)
class TrueFrame:
    view: View
    depth: np.ndarray  # (H, W) z-depth, NaN/inf where nothing was hit
    ids: np.ndarray  # (H, W) instance ids, 0 = background


def depth_steps(depth: np.ndarray, step_abs: float, step_rel: float) -> np.ndarray:
    """(H, W) bool: a neighbour in the 3 x 3 window differs by more than max(step_abs, step_rel * z), or
    one of them has no depth while this one has."""
    padded = np.pad(np.nan_to_num(depth, nan=np.inf, posinf=np.inf), 1, mode="edge")
    h, w = depth.shape
    z = padded[1:-1, 1:-1]
    step = np.zeros((h, w), bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            other = padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
            with np.errstate(invalid="ignore"):
                diff = np.abs(other - z)
            both = np.isfinite(other) & np.isfinite(z)
            step |= np.where(both, diff > np.maximum(step_abs, step_rel * np.abs(z)), np.isfinite(other) != np.isfinite(z))
    return step


def id_steps(ids: np.ndarray) -> np.ndarray:
    padded = np.pad(ids, 1, mode="edge")
    h, w = ids.shape
    step = np.zeros((h, w), bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            step |= padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] != ids
    return step


def pixel_classes(frame: TrueFrame, transparent_ids: set[int], *, step_abs: float = 0.01, step_rel: float = 0.02,
                  thin_px: int = 2) -> np.ndarray:
    """(H, W) index into :data:`CLASSES` of every pixel."""
    import cv2

    ids = frame.ids.astype(np.int64)
    classes = np.full(ids.shape, CLASSES.index("background"), dtype=np.uint8)
    objects = ids > 0
    kernel = np.ones((2 * thin_px + 1, 2 * thin_px + 1), np.uint8)
    thin = np.zeros(ids.shape, bool)
    for instance in np.unique(ids[objects]):
        mask = (ids == instance).astype(np.uint8)
        thin |= (mask > 0) & (cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel) == 0)
    classes[objects] = CLASSES.index("opaque")
    classes[objects & thin] = CLASSES.index("thin")
    classes[depth_steps(frame.depth, step_abs, step_rel) | id_steps(ids)] = CLASSES.index("edge")
    classes[np.isin(ids, sorted(transparent_ids))] = CLASSES.index("glass")
    return classes


def _sample_depth(frame: TrueFrame, pixels: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """B's true depth at continuous ``pixels``: bilinear where the four neighbouring centres hold the same
    instance with depth, else the nearest pixel's."""
    h, w = frame.depth.shape
    x, y = pixels[:, 0] - 0.5, pixels[:, 1] - 0.5
    c0 = np.clip(np.floor(x).astype(np.int64), 0, w - 1)
    r0 = np.clip(np.floor(y).astype(np.int64), 0, h - 1)
    c1, r1 = np.minimum(c0 + 1, w - 1), np.minimum(r0 + 1, h - 1)
    fx, fy = np.clip(x - c0, 0, 1), np.clip(y - r0, 0, 1)
    corners = [(r0, c0, (1 - fx) * (1 - fy)), (r0, c1, fx * (1 - fy)), (r1, c0, (1 - fx) * fy), (r1, c1, fx * fy)]
    z = sum(frame.depth[r, c].astype(np.float64) * wt for r, c, wt in corners)
    same = np.all([frame.ids[r, c] == instance for r, c, _ in corners], axis=0)
    nearest = frame.depth[np.clip(np.floor(pixels[:, 1]).astype(np.int64), 0, h - 1),
                          np.clip(np.floor(pixels[:, 0]).astype(np.int64), 0, w - 1)].astype(np.float64)
    return np.where(same & np.isfinite(z), z, nearest)


def true_correspondences(a: TrueFrame, b: TrueFrame, pixels_a: np.ndarray, *, abs_tol: float = 0.003,
                         rel_tol: float = 0.005) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For pixel centres ``pixels_a`` (N, 2; transforms.json convention): the true pixel in B (same
    convention; NaN where A sees nothing), whether it is visible in B, and A's true z-depth."""
    pixels_a = np.asarray(pixels_a, dtype=np.float64)
    rows = np.floor(pixels_a[:, 1]).astype(np.int64)
    cols = np.floor(pixels_a[:, 0]).astype(np.int64)
    z_a = a.depth[rows, cols].astype(np.float64)
    has = np.isfinite(z_a)
    points = backproject(a.view.intrinsics, a.view.cam_to_data, rows, cols, np.where(has, z_a, 1.0))
    uv_b, z_b, in_view = project_to_view(b.view, points)
    instance = a.ids[rows, cols]
    visible = has & in_view
    idx = np.flatnonzero(visible)
    if idx.size:
        uv = uv_b[idx]
        z_seen = _sample_depth(b, uv, instance[idx])
        near = (b.ids[np.floor(uv[:, 1]).astype(np.int64), np.floor(uv[:, 0]).astype(np.int64)] == instance[idx])
        agree = np.abs(z_seen - z_b[idx]) <= np.maximum(abs_tol, rel_tol * z_b[idx])
        visible[idx] = near & agree
    uv_b[~has] = np.nan
    return uv_b, visible, z_a
