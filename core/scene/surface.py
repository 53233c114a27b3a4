"""Surface points near a box: what the cameras saw there, from a field's depth or from depth maps.

For each camera that sees the box (its centre projects inside the image, in front of the camera), depth is
taken at the pixels inside the box's projection and back-projected to 3D; points inside the box grown by a
margin are kept. The field is rendered only at those pixels, so a snap costs a few small renders.
All geometry here is in the cameras' (data) frame; callers map boxes and points with ``world_from_data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..geometry.cameras import camera_rays, pixel_centers, project_points
from ..data.dataset import Frame
from ..errors import NeuralLabelError
from ..progress import ProgressFn, report


@dataclass
class Box:
    pose: np.ndarray  # 4x4 box-to-frame, the box centred at its origin (rigid or similarity)
    size: np.ndarray  # (3,) full edge lengths along the box's axes

    def corners(self) -> np.ndarray:
        signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        local = signs * np.asarray(self.size, dtype=np.float64)
        return local @ self.pose[:3, :3].T + self.pose[:3, 3]

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Which ``points`` (N,3) lie inside the box grown by ``margin`` on every side."""
        pose = np.asarray(self.pose, dtype=np.float64)
        axes = pose[:3, :3]
        lengths = np.linalg.norm(axes, axis=0)  # a similarity pose scales its axes
        local = (np.asarray(points, dtype=np.float64) - pose[:3, 3]) @ (axes / lengths**2)
        half = 0.5 * np.asarray(self.size, dtype=np.float64) + margin / lengths
        return np.all(np.abs(local) <= half, axis=1)

    def transformed(self, matrix: np.ndarray) -> "Box":
        """The same box under a similarity ``matrix`` (its scale goes into the pose's axes)."""
        return Box(np.asarray(matrix, dtype=np.float64) @ self.pose, np.asarray(self.size, dtype=np.float64))


@dataclass
class SurfacePoints:
    points: np.ndarray  # (N,3) in the cameras' frame
    view_count: int  # how many cameras contributed


def frames_seeing_box(frames: Sequence[Frame], box: Box, max_views: int = 12) -> list[Frame]:
    """Cameras whose image contains the box's centre, nearest first, spread over the others' headings."""
    centre = box.pose[:3, 3][None]
    scored: list[tuple[float, Frame]] = []
    for frame in frames:
        pixels, z = project_points(frame.intrinsics, frame.cam_to_data, centre)
        col, row = pixels[0]
        if z[0] > 0 and 0 <= col < frame.intrinsics.width and 0 <= row < frame.intrinsics.height:
            scored.append((float(z[0]), frame))
    scored.sort(key=lambda item: item[0])
    if len(scored) <= max_views:
        return [f for _, f in scored]
    # Spread the chosen views: greedily take the camera whose heading differs most from those taken.
    headings = np.array([f.cam_to_data[:3, 3] - centre[0] for _, f in scored])
    headings /= np.linalg.norm(headings, axis=1, keepdims=True)
    chosen = [0]
    while len(chosen) < max_views:
        similarity = (headings @ headings[chosen].T).max(axis=1)
        similarity[chosen] = np.inf
        chosen.append(int(np.argmin(similarity)))
    return [scored[i][1] for i in sorted(chosen)]


def box_pixels(frame: Frame, box: Box, margin: float, max_pixels: int = 40_000) -> np.ndarray:
    """Pixel centres (N,2) inside the bounding rectangle of the grown box's projection, every ``stride``-th
    row and column so that at most about ``max_pixels`` remain (a close-up in a 4K photo stays cheap)."""
    grown = Box(box.pose, np.asarray(box.size) + 2.0 * margin / np.linalg.norm(box.pose[:3, :3], axis=0))
    pixels, z = project_points(frame.intrinsics, frame.cam_to_data, grown.corners())
    width, height = frame.intrinsics.width, frame.intrinsics.height
    if np.any(z <= 0):  # the camera is inside or beside the box: take the whole image
        c0, r0, c1, r1 = 0, 0, width, height
    else:
        c0 = int(np.clip(np.floor(pixels[:, 0].min()), 0, width))
        c1 = int(np.clip(np.ceil(pixels[:, 0].max()), 0, width))
        r0 = int(np.clip(np.floor(pixels[:, 1].min()), 0, height))
        r1 = int(np.clip(np.ceil(pixels[:, 1].max()), 0, height))
    stride = max(1, int(np.ceil(np.sqrt((c1 - c0) * (r1 - r0) / max(max_pixels, 1)))))
    cols, rows = np.meshgrid(np.arange(c0, c1, stride) + 0.5, np.arange(r0, r1, stride) + 0.5)
    return np.stack([cols.ravel(), rows.ravel()], axis=-1)


def backproject(frame: Frame, pixels: np.ndarray, z_depth: np.ndarray) -> np.ndarray:
    """3D points (N,3) of ``pixels`` at z-depth ``z_depth`` (N,); non-finite depths are dropped."""
    valid = np.isfinite(z_depth) & (z_depth > 0)
    origins, directions, z_per_distance = camera_rays(frame.intrinsics, frame.cam_to_data, pixels[valid])
    distance = z_depth[valid] / z_per_distance
    return origins + directions * distance[:, None]


def voxel_downsample(points: np.ndarray, voxel: float) -> np.ndarray:
    """One point (the mean) per occupied voxel of edge ``voxel``."""
    if len(points) == 0 or voxel <= 0:
        return points
    keys = np.floor(points / voxel).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    return sums / counts[:, None]


def estimate_normals(points: np.ndarray, neighbours: int = 12) -> np.ndarray:
    """Unit normals (N,3) of a point sample: the least-spread direction of each point's neighbours (PCA).

    Their sign is arbitrary (a merged cloud no longer knows its cameras); ICP compares them up to sign.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return np.zeros_like(points)
    k = min(neighbours, len(points))
    _, index = cKDTree(points).query(points, k=k)
    local = points[index] - points[index].mean(axis=1, keepdims=True)
    covariance = np.einsum("nki,nkj->nij", local, local)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues: column 0 is the normal
    return vectors[:, :, 0]


DepthAt = Callable[[Frame, np.ndarray], np.ndarray]  # (frame, pixels (N,2)) -> z-depth (N,)


def surface_points(frames: Sequence[Frame], box: Box, depth_at: DepthAt, *, margin: float,
                   max_views: int = 12, voxel: Optional[float] = None, max_pixels_per_view: int = 40_000,
                   progress: Optional[ProgressFn] = None) -> SurfacePoints:
    """Surface points inside ``box`` grown by ``margin``, from the cameras that see it.

    ``depth_at(frame, pixels)`` gives z-depth at continuous pixel coordinates (NaN = nothing there).
    ``voxel`` (default: the box's largest side / 150) thins the merged points evenly.
    """
    views = frames_seeing_box(frames, box, max_views)
    if not views:
        raise NeuralLabelError("no camera sees the box: move it in front of the cameras")
    chunks = []
    for i, frame in enumerate(views):
        pixels = box_pixels(frame, box, margin, max_pixels_per_view)
        if len(pixels):
            points = backproject(frame, pixels, np.asarray(depth_at(frame, pixels), dtype=np.float64))
            chunks.append(points[box.contains(points, margin)])
        report(progress, i + 1, len(views), "surface")
    points = np.concatenate(chunks) if chunks else np.zeros((0, 3))
    scale = float(np.linalg.norm(box.pose[:3, :3], axis=0).max())
    voxel = float(np.max(box.size)) * scale / 150.0 if voxel is None else voxel
    return SurfacePoints(voxel_downsample(points, voxel), len(views))


def depth_map_sampler(depth_maps: Callable[[Frame], np.ndarray]) -> DepthAt:
    """A :data:`DepthAt` over full z-depth maps (H,W) at pixel centres, e.g. a scene's true depth."""

    def depth_at(frame: Frame, pixels: np.ndarray) -> np.ndarray:
        z = depth_maps(frame)
        cols = np.clip(np.floor(pixels[:, 0]).astype(int), 0, z.shape[1] - 1)
        rows = np.clip(np.floor(pixels[:, 1]).astype(int), 0, z.shape[0] - 1)
        return z[rows, cols].astype(np.float64)

    return depth_at


def field_sampler(field, chunk: int = 65536) -> DepthAt:
    """A :data:`DepthAt` that renders a field's z-depth (NaN where its opacity is under 0.5)."""
    from ..render.volume import render_frame

    def depth_at(frame: Frame, pixels: np.ndarray) -> np.ndarray:
        out = render_frame(field, frame.intrinsics, frame.cam_to_data, pixels=pixels, depth_only=True,
                           chunk=chunk)
        return np.asarray(out["z_depth"], dtype=np.float64).reshape(-1)

    return depth_at


def field_cloud(field, frames: Sequence[Frame], *, views: int = 6, scale: float = 0.125,
                max_points: int = 200_000, progress: Optional[ProgressFn] = None) -> np.ndarray:
    """A preview cloud of a field: its depth from a few cameras at low resolution, cropped to its box."""
    from ..render.volume import render_frame

    if not frames:
        raise NeuralLabelError("the dataset has no frames to render the field from")
    step = max(1, len(frames) // views)
    chosen = list(frames)[::step][:views]
    aabb = np.asarray(field.aabb.detach().cpu().numpy() if hasattr(field.aabb, "detach") else field.aabb,
                      dtype=np.float64)
    chunks = []
    for i, frame in enumerate(chosen):
        intrinsics = frame.intrinsics.scaled(scale)
        out = render_frame(field, intrinsics, frame.cam_to_data, depth_only=True)
        z = np.asarray(out["z_depth"], dtype=np.float64).reshape(-1)
        small = Frame(frame.index, frame.image_path, frame.cam_to_data, intrinsics, frame.split)
        points = backproject(small, pixel_centers(intrinsics.width, intrinsics.height), z)
        inside = np.all((points >= aabb[0]) & (points <= aabb[1]), axis=1)
        chunks.append(points[inside])
        report(progress, i + 1, len(chosen), "preview cloud")
    points = np.concatenate(chunks) if chunks else np.zeros((0, 3))
    if len(points) > max_points:
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    return points
