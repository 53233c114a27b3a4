"""Surface points near a box: what the cameras saw there, as a scene query's surface.

For each view that sees the box (its centre projects inside the image, in front of the camera), the scene
(:class:`~.queries.SceneQuery`: a field, or depth maps) is asked at the pixels inside the box's projection and
its surface depth is back-projected to 3D; points inside the box grown by a margin are kept. The field is
rendered only at those pixels, so a snap costs a few small renders. Snap's surface is the bake's: the query's
surface depth (a field's peak depth), so a mesh is aligned to the surface that decides its occlusion.
All geometry here is in the cameras' (data) frame (views' ``cam_to_data``); callers map boxes and points
with ``world_from_data``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..data.dataset import Frame
from ..errors import NeuralLabelError
from ..geometry.box import Box
from ..geometry.cameras import project_points
from ..geometry.projection import backproject as backproject_pixels
from ..geometry.projection import projected_region, region_pixels
from ..geometry.transforms import Similarity
from ..geometry.view import View
from ..progress import ProgressFn, report
from .queries import FieldQuery, SceneQuery


@dataclass
class SurfacePoints:
    points: np.ndarray  # (N,3) in the cameras' frame
    view_count: int  # how many cameras contributed


def views_seeing_box(views: Sequence[View], box: Box, max_views: int = 12) -> list[View]:
    """Views whose image contains the box's centre, nearest first, spread over the others' headings."""
    centre = box.pose[:3, 3][None]
    scored: list[tuple[float, View]] = []
    for view in views:
        pixels, z = project_points(view.intrinsics, view.cam_to_data, centre)
        col, row = pixels[0]
        if z[0] > 0 and 0 <= col < view.width and 0 <= row < view.height:
            scored.append((float(z[0]), view))
    scored.sort(key=lambda item: item[0])
    if len(scored) <= max_views:
        return [v for _, v in scored]
    # Spread the chosen views: greedily take the camera whose heading differs most from those taken.
    headings = np.array([v.cam_to_data[:3, 3] - centre[0] for _, v in scored])
    headings /= np.linalg.norm(headings, axis=1, keepdims=True)
    chosen = [0]
    while len(chosen) < max_views:
        similarity = (headings @ headings[chosen].T).max(axis=1)
        similarity[chosen] = np.inf
        chosen.append(int(np.argmin(similarity)))
    return [scored[i][1] for i in sorted(chosen)]


def box_pixels(view: View, box: Box, margin: float, max_pixels: int = 40_000) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels inside the bounding rectangle of the grown box's projection, every
    ``stride``-th row and column so that at most about ``max_pixels`` remain (a close-up in a 4K photo stays
    cheap). The whole image when the camera is inside or beside the box."""
    grown = Box(box.pose, np.asarray(box.size) + 2.0 * margin / np.linalg.norm(box.pose[:3, :3], axis=0))
    image = (0, 0, view.width, view.height)
    region = projected_region(view.intrinsics, view.cam_to_data, grown.corners(), image, pad=0)
    if region is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    c0, r0, c1, r1 = region
    stride = max(1, int(np.ceil(np.sqrt((c1 - c0) * (r1 - r0) / max(max_pixels, 1)))))
    return region_pixels(region, stride)


def backproject(view: View, rows: np.ndarray, cols: np.ndarray, z_depth: np.ndarray) -> np.ndarray:
    """Data-frame points (M,3) of pixels (rows, cols) at z-depth ``z_depth`` (N,); non-finite depths are dropped."""
    valid = np.isfinite(z_depth) & (z_depth > 0)
    return backproject_pixels(view.intrinsics, view.cam_to_data, rows[valid], cols[valid], z_depth[valid])


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


def surface_points(views: Sequence[View], box: Box, scene: SceneQuery, *, margin: float, max_views: int = 12,
                   voxel: Optional[float] = None, max_pixels_per_view: int = 40_000,
                   progress: Optional[ProgressFn] = None) -> SurfacePoints:
    """Surface points inside ``box`` (data frame) grown by ``margin``, from the views that see it.

    ``scene`` gives the surface's z-depth at the views' pixels (NaN = nothing there). ``voxel`` (default: the
    box's largest side / 150) thins the merged points evenly.
    """
    seeing = views_seeing_box(views, box, max_views)
    if not seeing:
        raise NeuralLabelError("no camera sees the box: move it in front of the cameras")
    chunks = []
    for i, view in enumerate(seeing):
        rows, cols = box_pixels(view, box, margin, max_pixels_per_view)
        if len(rows):
            z_depth = scene.at_pixels(view, rows, cols).z_depth
            points = backproject(view, rows, cols, z_depth)
            chunks.append(points[box.contains(points, margin)])
        report(progress, i + 1, len(seeing), "surface")
    points = np.concatenate(chunks) if chunks else np.zeros((0, 3))
    scale = float(np.linalg.norm(box.pose[:3, :3], axis=0).max())
    voxel = float(np.max(box.size)) * scale / 150.0 if voxel is None else voxel
    return SurfacePoints(voxel_downsample(points, voxel), len(seeing))


def field_cloud(field, frames: Sequence[Frame], *, views: int = 6, scale: float = 0.125,
                max_points: int = 200_000, progress: Optional[ProgressFn] = None) -> np.ndarray:
    """A preview cloud of a field (data frame): its surface from a few cameras at low resolution, cropped to
    its box."""
    if not frames:
        raise NeuralLabelError("the dataset has no frames to render the field from")
    step = max(1, len(frames) // views)
    chosen = list(frames)[::step][:views]
    aabb = np.asarray(field.aabb.detach().cpu().numpy() if hasattr(field.aabb, "detach") else field.aabb,
                      dtype=np.float64)
    scene = FieldQuery(field)
    chunks = []
    for i, frame in enumerate(chosen):
        # The cloud stays in the data frame: the views' world is the data frame itself.
        view = View.from_frame(frame, Similarity.identity())
        small = replace(view, intrinsics=view.intrinsics.scaled(scale))
        rows, cols = np.divmod(np.arange(small.width * small.height), small.width)
        points = backproject(small, rows, cols, scene.at_pixels(small, rows, cols).z_depth)
        inside = np.all((points >= aabb[0]) & (points <= aabb[1]), axis=1)
        chunks.append(points[inside])
        report(progress, i + 1, len(chosen), "preview cloud")
    points = np.concatenate(chunks) if chunks else np.zeros((0, 3))
    if len(points) > max_points:
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    return points
