"""An oriented box: the one representation of a box object, a crop region and a 3D bounding box."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .transforms import apply_points


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corners of an axis-aligned box, x slowest: (lo,lo,lo), (lo,lo,hi), ..., (hi,hi,hi)."""
    return np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)


@dataclass(frozen=True)
class Box:
    """A box centred at the origin of its own frame, placed by ``pose`` (4x4 box-to-frame, rigid or similarity)."""

    pose: np.ndarray
    size: np.ndarray  # (3,) full edge lengths along the box's own axes

    def local_corners(self) -> np.ndarray:
        """The 8 corners in the box's own frame (the order of :func:`box_corners`)."""
        half = np.asarray(self.size, dtype=np.float64) / 2
        return box_corners(-half, half)

    def corners(self) -> np.ndarray:
        """The 8 corners in the frame the pose maps to."""
        return apply_points(np.asarray(self.pose, dtype=np.float64), self.local_corners())

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which ``points`` (N, 3) lie inside the box grown by ``margin`` (outer-frame units) on every side."""
        pose = np.asarray(self.pose, dtype=np.float64)
        axes = pose[:3, :3]
        lengths = np.linalg.norm(axes, axis=0)  # a similarity pose scales its axes
        local = (np.asarray(points, dtype=np.float64) - pose[:3, 3]) @ (axes / lengths**2)
        half = 0.5 * np.asarray(self.size, dtype=np.float64) + margin / lengths
        return np.all(np.abs(local) <= half, axis=1)

    def transformed(self, matrix: np.ndarray) -> "Box":
        """The same box under a similarity ``matrix`` (its scale goes into the pose's axes)."""
        return Box(np.asarray(matrix, dtype=np.float64) @ self.pose, np.asarray(self.size, dtype=np.float64))
