"""Rigid point-to-plane ICP: refine a mesh's pose against surface points seen in the scene.

The scene's surface points (from a field's depth or from true depth maps, see :mod:`.surface`) cover only
what the cameras saw, plus whatever else lies near the object (the floor, neighbours). So correspondences
go from each scene point to its nearest point on the complete model, and the point-to-plane residual uses
the model's normal there. Outliers are handled twice: pairs farther apart than a shrinking trim distance
are dropped, and the rest get Tukey biweights on their residual (scale from the median absolute residual).
The motion is rigid only: rotation + translation, never scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import NeuralLabelError
from ..progress import ProgressFn, report

TUKEY_C = 4.685  # 95% efficiency under Gaussian noise


@dataclass
class IcpResult:
    pose: np.ndarray  # 4x4 refined model-to-world
    fitness: float  # fraction of scene points with an inlier correspondence at the end
    rmse: float  # RMS point-to-plane residual of the inliers (world units)
    iterations: int
    converged: bool


def sample_mesh_surface(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform points on a triangle mesh and their face normals: ``points`` (N,3), ``normals`` (N,3)."""
    import trimesh

    mesh = trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64),
                           process=False)
    if len(mesh.faces) == 0 or mesh.area <= 0.0:
        raise NeuralLabelError("the mesh has no faces with area: nothing to align")
    points, face_index = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float64), np.asarray(mesh.face_normals[face_index], dtype=np.float64)


def _rotation(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``omega`` (Rodrigues)."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-15:
        return np.eye(3)
    k = omega / angle
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * K + (1.0 - np.cos(angle)) * (K @ K)


def _tukey_weights(residuals: np.ndarray, floor: float) -> np.ndarray:
    sigma = max(1.4826 * float(np.median(np.abs(residuals))), floor)
    u = residuals / (TUKEY_C * sigma)
    return np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)


def icp_point_to_plane(model_points: np.ndarray, model_normals: np.ndarray, scene_points: np.ndarray,
                       init_pose: np.ndarray, *, max_distance: float, min_distance: Optional[float] = None,
                       scene_normals: Optional[np.ndarray] = None, max_normal_angle: float = 45.0,
                       max_iterations: int = 80, tolerance: float = 1e-6,
                       progress: Optional[ProgressFn] = None) -> IcpResult:
    """Refine ``init_pose`` (4x4 model-to-world) so the model's surface meets ``scene_points`` (world).

    ``max_distance``: the largest scene-to-model distance a correspondence may start with (cover the
    expected misplacement); the trim distance then follows three times the median correspondence distance,
    down to ``min_distance`` (default ``max_distance / 20``). With ``scene_normals`` (sign free), a pair whose
    normals differ by more than ``max_normal_angle`` degrees is dropped: the floor around an object then
    cannot pull the object's side faces sideways. Stops when an update moves the model by less than
    ``tolerance`` (world units at the model's extent) or after ``max_iterations``.
    """
    from scipy.spatial import cKDTree

    model_points = np.asarray(model_points, dtype=np.float64)
    model_normals = np.asarray(model_normals, dtype=np.float64)
    scene_points = np.asarray(scene_points, dtype=np.float64)
    pose = np.asarray(init_pose, dtype=np.float64).copy()
    if len(model_points) < 6 or model_points.shape != model_normals.shape:
        raise NeuralLabelError(f"ICP needs model points with normals (got {model_points.shape} points, "
                               f"{model_normals.shape} normals)")
    if len(scene_points) < 6:
        raise NeuralLabelError(f"only {len(scene_points)} surface points near the object: the cameras do not "
                               "see it, or it lies outside the field; move it closer to its place first")
    if max_distance <= 0.0:
        raise NeuralLabelError(f"ICP max_distance must be positive (got {max_distance})")
    if min_distance is None:
        min_distance = max_distance / 20.0
    extent = float(np.linalg.norm(model_points.max(axis=0) - model_points.min(axis=0)))
    # Tukey's scale never drops below a third of the final trim distance: when most residuals collapse to ~0
    # (one face fits), a face a fraction of a millimetre off must still count, or the fit stops sliding.
    residual_floor = max(min_distance / 3.0, 1e-6 * extent)
    if scene_normals is not None:
        scene_normals = np.asarray(scene_normals, dtype=np.float64)
        if scene_normals.shape != scene_points.shape:
            raise NeuralLabelError(f"scene normals {scene_normals.shape} do not match the points {scene_points.shape}")
    min_cos = float(np.cos(np.radians(max_normal_angle)))
    tree = cKDTree(model_points)
    trim = max_distance
    converged = False
    iterations = 0
    inliers = np.zeros(len(scene_points), dtype=bool)
    residuals = np.zeros(0)
    for iterations in range(1, max_iterations + 1):
        # Scene points in the model's frame: the model's tree is built once.
        R, t = pose[:3, :3], pose[:3, 3]
        q = (scene_points - t) @ R
        distance, index = tree.query(q, distance_upper_bound=trim)
        inliers = np.isfinite(distance)
        if scene_normals is not None:
            found = np.flatnonzero(inliers)
            agree = np.abs(np.einsum("ij,ij->i", scene_normals[found] @ R, model_normals[index[found]]))
            inliers[found[agree < min_cos]] = False
        if inliers.sum() < 6:
            raise NeuralLabelError(
                f"ICP lost the object: fewer than 6 surface points within {trim:.4g} of the mesh; "
                "place the mesh closer to where the object is and snap again")
        q_in, p_in, n_in = q[inliers], model_points[index[inliers]], model_normals[index[inliers]]
        residuals = np.einsum("ij,ij->i", q_in - p_in, n_in)
        weights = _tukey_weights(residuals, residual_floor)
        # Linearised motion G (applied to q in the model frame): G q = q + omega x q + v.
        A = np.concatenate([np.cross(q_in, n_in), n_in], axis=1)
        Aw = A * weights[:, None]
        H = A.T @ Aw + 1e-12 * np.eye(6)
        x = np.linalg.solve(H, -(Aw.T @ residuals))
        G = np.eye(4)
        G[:3, :3] = _rotation(x[:3])
        G[:3, 3] = x[3:]
        # G maps (world -> model) points onto the model: new model_from_world = G @ old, so pose = pose @ G^-1.
        pose = pose @ np.linalg.inv(G)
        step = float(np.linalg.norm(x[3:]) + np.linalg.norm(x[:3]) * extent)
        trim = float(np.clip(3.0 * np.median(distance[inliers]), min_distance, max_distance))
        report(progress, iterations, max_iterations, "snap")
        if step < tolerance:
            converged = True
            break
    kept = np.abs(residuals) < TUKEY_C * max(1.4826 * float(np.median(np.abs(residuals))), residual_floor)
    rmse = float(np.sqrt(np.mean(residuals[kept] ** 2))) if kept.any() else float("nan")
    fitness = float(kept.sum()) / float(len(scene_points))
    report(progress, max_iterations, max_iterations, "snap")
    return IcpResult(pose=pose, fitness=fitness, rmse=rmse, iterations=iterations, converged=converged)


def pose_error(pose: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(translation error in world units, rotation error in degrees) between two rigid 4x4 poses."""
    pose, truth = np.asarray(pose, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    dR = pose[:3, :3].T @ truth[:3, :3]
    cos = np.clip((np.trace(dR) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.linalg.norm(pose[:3, 3] - truth[:3, 3])), float(np.degrees(np.arccos(cos)))
