"""Projection of 3D points into a camera's pixels, and the pixel rectangles that projections cover.

The one ``project``: labels, snap and cameras all go through it. Pixels are continuous coordinates in the
transforms.json convention (the centre of pixel (col, row) is at (col + 0.5, row + 0.5)); regions are
half-open integer rectangles ``(c0, r0, c1, r1)`` of pixel indices.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .cameras import OPENGL_TO_OPENCV, Intrinsics, camera_directions, distort
from .transforms import apply_points, rigid_inverse

Region = tuple[int, int, int, int]  # (c0, r0, c1, r1), half-open pixel indices


def project(intrinsics: Intrinsics, cam_from_world: np.ndarray, points: np.ndarray,
            apply_distortion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) seen from an OpenCV ``cam_from_world`` (4x4): ``pixels`` (N, 2) and ``z_depth`` (N,).

    ``z_depth`` is positive in front of the camera; points on the camera plane give non-finite pixels.
    """
    p_cam = apply_points(cam_from_world, np.asarray(points, dtype=np.float64))
    z = p_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = p_cam[:, :2] / z[:, None]
        if apply_distortion:
            xy = distort(intrinsics, xy)
    pixels = np.stack([xy[:, 0] * intrinsics.fx + intrinsics.cx, xy[:, 1] * intrinsics.fy + intrinsics.cy],
                      axis=-1)
    return pixels, z


def opencv_from_pose(cam_to_world: np.ndarray) -> np.ndarray:
    """The OpenCV ``cam_from_world`` of a rigid OpenGL camera pose (any frame)."""
    return OPENGL_TO_OPENCV @ rigid_inverse(cam_to_world)


def projected_region(intrinsics: Intrinsics, cam_to_world: np.ndarray, points: np.ndarray, extent: Region,
                     pad: int = 2) -> Optional[Region]:
    """Pixel rectangle, half-open, that holds the projection of ``points`` seen from the rigid OpenGL pose
    ``cam_to_world``, within ``extent``.

    None when every point is behind the camera (or the rectangle misses ``extent``); the whole extent when
    some but not all are (the projection of an object that straddles the camera plane is unbounded).
    """
    pixels, z = project(intrinsics, opencv_from_pose(cam_to_world), points)
    if np.all(z <= 0):
        return None
    if np.any(z <= 1e-9) or not np.all(np.isfinite(pixels)):
        return extent
    c0 = int(np.floor(pixels[:, 0].min())) - pad
    r0 = int(np.floor(pixels[:, 1].min())) - pad
    c1 = int(np.ceil(pixels[:, 0].max())) + pad
    r1 = int(np.ceil(pixels[:, 1].max())) + pad
    c0, r0 = max(c0, extent[0]), max(r0, extent[1])
    c1, r1 = min(c1, extent[2]), min(r1, extent[3])
    if c0 >= c1 or r0 >= r1:
        return None
    return c0, r0, c1, r1


def region_pixels(region: Region, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of every ``stride``-th pixel of ``region``, row-major (row 0 first)."""
    c0, r0, c1, r1 = region
    cols, rows = np.meshgrid(np.arange(c0, c1, stride), np.arange(r0, r1, stride))
    return rows.ravel(), cols.ravel()


def backproject(intrinsics: Intrinsics, cam_to_world: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                z_depth: np.ndarray) -> np.ndarray:
    """Points (N, 3) at z-depth ``z_depth`` through the centres of pixels (rows, cols), in the frame of the
    OpenGL pose ``cam_to_world`` (through the lens distortion)."""
    dirs_cam = camera_directions(intrinsics, np.stack([cols + 0.5, rows + 0.5], axis=-1))  # z = -1
    return apply_points(cam_to_world, dirs_cam * z_depth[:, None])
