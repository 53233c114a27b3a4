"""Point transforms, rigid poses and the data -> world similarity: the one place 4x4 matrices are applied.

Every function takes row-stacked points ``(N, 3)`` and a 4x4 matrix; none of them copies a matrix it does
not change. ``Similarity`` is the spec's ``world_from_data`` (rotation, translation and one uniform scale),
validated once with one tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NeuralLabelError

#: how far ``R^T R`` (after removing a similarity's scale) may be from the identity, and the last row from
#: [0, 0, 0, 1]: float32 round trips through JSON and Blender stay well inside it.
RIGID_TOLERANCE = 1e-4


def apply_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix @ [points, 1]`` for row-stacked points (N, 3) -> (N, 3)."""
    matrix = np.asarray(matrix)
    return np.asarray(points) @ matrix[:3, :3].T + matrix[:3, 3]


def apply_directions(matrix: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The linear part of ``matrix`` applied to row-stacked directions (N, 3) (no translation)."""
    return np.asarray(directions) @ np.asarray(matrix)[:3, :3].T


def rigid_inverse(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (R^T, -R^T t), without a general matrix inverse."""
    inv = np.eye(4)
    inv[:3, :3] = pose[:3, :3].T
    inv[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return inv


def rigidity_error(matrix: np.ndarray) -> float:
    """max |R^T R - I| of the 3x3 part: 0 for a rotation."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    return float(np.max(np.abs(r.T @ r - np.eye(3))))


def check_matrix4(value, what: str) -> np.ndarray:
    """``value`` as a finite 4x4 float64 matrix with last row [0, 0, 0, 1]; NeuralLabelError naming ``what``."""
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise NeuralLabelError(f"{what} must be a 4x4 matrix of numbers") from None
    if m.shape != (4, 4):
        raise NeuralLabelError(f"{what} must be a 4x4 matrix (a list of 4 rows of 4 numbers), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise NeuralLabelError(f"{what} has non-finite values")
    if np.max(np.abs(m[3] - [0, 0, 0, 1])) > RIGID_TOLERANCE:
        raise NeuralLabelError(f"{what}: the last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    return m


def check_rigid(matrix: np.ndarray, what: str) -> None:
    """NeuralLabelError naming ``what`` unless the 3x3 part is a rotation (no scale, shear or mirror)."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    error = rigidity_error(r)
    if error > RIGID_TOLERANCE:
        scales = np.linalg.norm(r, axis=0)
        raise NeuralLabelError(f"{what} is not a rigid transform: it has scale or shear (column lengths "
                               f"{np.round(scales, 6).tolist()}, |R^T R - I| = {error:.2g})")
    if np.linalg.det(r) < 0:
        raise NeuralLabelError(f"{what} is a reflection (det < 0), not a rotation")


@dataclass(frozen=True)
class Similarity:
    """Rotation, translation and one uniform scale, as a 4x4 ``matrix`` (e.g. the spec's ``world_from_data``)."""

    matrix: np.ndarray

    @classmethod
    def checked(cls, value, what: str = "world_from_data") -> "Similarity":
        """Validate ``value`` (finite 4x4, positive uniform scale, no shear or mirror); errors name ``what``."""
        m = check_matrix4(value, what)
        det = np.linalg.det(m[:3, :3])
        if det <= 0:
            raise NeuralLabelError(f"{what} must be a similarity with positive scale (det = {det:.3g})")
        error = rigidity_error(m[:3, :3] / np.cbrt(det))
        if error > RIGID_TOLERANCE:
            raise NeuralLabelError(f"{what} is not a similarity (rotation, translation, one uniform scale): it "
                                   f"has non-uniform scale or shear (|R^T R / s^2 - I| = {error:.2g})")
        return cls(m)

    @classmethod
    def identity(cls) -> "Similarity":
        return cls(np.eye(4))

    @property
    def scale(self) -> float:
        """Target units per source unit."""
        return float(np.cbrt(np.linalg.det(self.matrix[:3, :3])))

    def apply(self, points: np.ndarray) -> np.ndarray:
        return apply_points(self.matrix, points)

    def inverse(self) -> "Similarity":
        return Similarity(np.linalg.inv(self.matrix))

    def rigid_pose(self, pose: np.ndarray) -> np.ndarray:
        """A rigid pose in the source frame (e.g. ``cam_to_data``) as a rigid pose in the target frame.

        The scale moves the pose's centre, not its axes."""
        out = self.matrix @ np.asarray(pose, dtype=np.float64)
        out[:3, :3] /= self.scale
        return out
