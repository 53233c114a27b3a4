"""Pixels of one view -> rays -> 3D points -> pixels of another, through each camera's lens distortion.

Pixels here are continuous coordinates in the transforms.json convention (pixel (col, row) has its centre at
(col + 0.5, row + 0.5)); :func:`to_opencv` shifts them to OpenCV's/BOP's (centre at (col, row)) for output.
Everything is in the views' ``cam_to_data`` frame, the field's frame.
"""

from __future__ import annotations

import numpy as np

from ..geometry.cameras import camera_rays, distort, undistort
from ..geometry.projection import opencv_from_pose, project
from ..geometry.view import View

#: a distorted point whose undistortion misses it by more than this (normalised units) lies where the lens
#: model folds back on itself: its pixel is not where the camera would see the point
FOLD_TOLERANCE = 1e-6


def to_opencv(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float64) - 0.5


def pixel_rays(view: View, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit world rays through continuous ``pixels`` (N, 2) of ``view`` (undistorted first): origins,
    directions and the z-depth per unit distance along each."""
    return camera_rays(view.intrinsics, view.cam_to_data, np.asarray(pixels, dtype=np.float64).reshape(-1, 2))


def project_to_view(view: View, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous pixels (N, 2) and z-depths (N,) of ``points`` in ``view`` (distorted), and whether each is
    in view: in front of the camera, inside the image, and where the lens model is one-to-one."""
    intrinsics = view.intrinsics
    cam_from_data = opencv_from_pose(view.cam_to_data)
    pixels, z = project(intrinsics, cam_from_data, points)
    ok = np.isfinite(pixels).all(axis=1) & np.isfinite(z) & (z > 1e-9)
    ok &= (pixels[:, 0] >= 0) & (pixels[:, 0] < intrinsics.width)
    ok &= (pixels[:, 1] >= 0) & (pixels[:, 1] < intrinsics.height)
    if intrinsics.has_distortion and ok.any():
        p_cam = points[ok] @ cam_from_data[:3, :3].T + cam_from_data[:3, 3]
        xy = p_cam[:, :2] / p_cam[:, 2:3]
        back = undistort(intrinsics, distort(intrinsics, xy))
        unfolded = np.abs(back - xy).max(axis=1) <= FOLD_TOLERANCE * np.maximum(1.0, np.abs(xy).max(axis=1))
        ok[np.flatnonzero(ok)[~unfolded]] = False
    return pixels, z, ok
