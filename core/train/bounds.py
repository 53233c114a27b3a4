"""Where the field lives and which of its space the train cameras see: the field's bounds from a dataset,
and DVGO's per-vertex view count that scales the density grid's learning rate."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..data.colmap import SparsePoints
from ..data.dataset import Dataset, Frame, load_sparse_points
from ..errors import NeuralLabelError
from ..geometry.cameras import project_points
from ..field.model import Field, FieldConfig
from .schedules import DENSITY_SCHEDULE




#: the detailed region is at most this share of the median camera distance from the look-at point (half
#: width), and at least a quarter of it
ROI_HALF_SHARE = (0.25, 0.5)
#: nested boxes around the detailed region: the outermost is 2^(levels - 1) times as large (the contracted
#: background out to 16 x by default; instant-ngp's ``aabb_scale`` asks for more, up to 128 x)
MIN_LEVELS, MAX_LEVELS = 5, 8
#: step growth per step in the background: about one contracted voxel per step where it starts, far
#: coarser than the voxels beyond (they grow with the square of the distance)
BACKGROUND_CONE = 1.0 / 64
#: a common region is one at least this share of the cameras sees in front of them, inside the image
MIN_SHARE_SEEING_CENTRE = 0.5


def least_squares_look_at(frames: list[Frame]) -> Optional[np.ndarray]:
    """The point closest (least squares) to all optical axes, or None when the axes are (near) parallel."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for f in frames:
        origin = f.cam_to_data[:3, 3]
        axis = -f.cam_to_data[:3, 2]
        axis = axis / np.linalg.norm(axis)
        projector = np.eye(3) - np.outer(axis, axis)
        a += projector
        b += projector @ origin
    if np.linalg.cond(a) > 1e8:
        return None
    return np.linalg.solve(a, b)


def share_seeing(frames: list[Frame], point: np.ndarray) -> float:
    """Share of ``frames`` that see ``point`` in front of the camera and inside the image."""
    seen = 0
    for f in frames:
        pixels, z = project_points(f.intrinsics, f.cam_to_data, point[None], apply_distortion=False)
        x, y = pixels[0]
        seen += bool(z[0] > 0 and 0 <= x <= f.intrinsics.width and 0 <= y <= f.intrinsics.height)
    return seen / max(1, len(frames))


def look_at_centre(frames: list[Frame], what: str = "data") -> np.ndarray:
    """The point the cameras look at: closest (least squares) to all optical axes.

    Raises when there is none: parallel axes, or a point that fewer than half of the cameras see (a capture
    whose cameras share no region, e.g. a walk along a corridor): the field needs a common subject."""
    centre = least_squares_look_at(frames)
    if centre is None or share_seeing(frames, centre) < MIN_SHARE_SEEING_CENTRE:
        seen = 0.0 if centre is None else share_seeing(frames, centre)
        raise NeuralLabelError(
            f"the {len(frames)} cameras do not look at a common region (the point closest to all optical axes "
            f"is in view of {seen:.0%} of them, at least {MIN_SHARE_SEEING_CENTRE:.0%} needed): NeuralLabel "
            "trains a field around one photographed subject", field=what)
    return centre


def camera_distances(frames: list[Frame], centre: np.ndarray) -> np.ndarray:
    return np.array([np.linalg.norm(f.cam_to_data[:3, 3] - centre) for f in frames])


def check_points_agree(sparse: SparsePoints, frames: list[Frame], source: object) -> None:
    """Refuse SfM points that do not sit where the cameras saw them (points from another frame of reference:
    a re-oriented transforms.json next to the model's points). One line naming the worst frame."""
    by_index = {f.index: f for f in frames}
    errors, behind = [], []
    worst = (0.0, "")
    for index in np.unique(sparse.obs_frame):
        frame = by_index.get(int(index))
        if frame is None:
            continue
        rows = np.nonzero(sparse.obs_frame == index)[0]
        pixels, z = project_points(frame.intrinsics, frame.cam_to_data, sparse.points[sparse.obs_point[rows]])
        error = np.linalg.norm(pixels - sparse.obs_pixel[rows], axis=1)
        error = np.where(z > 0, error, np.inf)
        errors.append(error)
        behind.append(z <= 0)
        median = float(np.median(error))
        if median > worst[0]:
            worst = (median, frame.file_path)
    if not errors:
        return
    error = np.concatenate(errors)
    if float(np.median(error)) > POINTS_AGREE_PX or float(np.mean(np.concatenate(behind))) > 0.1:
        raise NeuralLabelError(
            f"{source}: the SfM points disagree with the camera poses (median reprojection error "
            f"{np.median(error):.1f} px, {np.mean(np.concatenate(behind)):.0%} behind the cameras; worst frame "
            f"{worst[1]}): the points and the poses are in different frames of reference", field="data")


#: median reprojection error (pixels) above which SfM points and camera poses are taken to disagree
POINTS_AGREE_PX = 8.0


def subject_box(dataset: Dataset, frames: list[Frame], centre: np.ndarray, median_distance: float
                ) -> tuple[np.ndarray, float]:
    """Centre and half width of the detailed region: the SfM points near the look-at point where the dataset
    has them (their 5-95 % extent, 15 % larger), else half the median camera distance around it."""
    lo, hi = (share * median_distance for share in ROI_HALF_SHARE)
    sparse = load_sparse_points(dataset)
    if sparse is None or len(sparse.points) < 50:
        return centre, hi
    check_points_agree(sparse, frames, dataset.path)
    near_subject = sparse.points[np.linalg.norm(sparse.points - centre, axis=1) <= median_distance]
    if len(near_subject) < 50:
        return centre, hi
    p_lo, p_hi = np.percentile(near_subject, [5, 95], axis=0)
    half = float(np.clip(1.15 * 0.5 * np.max(p_hi - p_lo), lo, hi))
    return (p_lo + p_hi) / 2, half


def field_config_for(dataset: Dataset) -> FieldConfig:
    """Field bounds from the dataset, the same recipe for every capture.

    The detailed region (``roi_aabb``) is a cube around the subject: the SfM points near the point the
    cameras look at where the dataset has points, else half the median camera distance around that point.
    Everything beyond is the contracted background, in nested boxes out to 16 x the region (instant-ngp's
    ``aabb_scale`` asks for up to 128 x), marched with steps that grow with the distance past the farthest
    camera's view of the region (cone stepping)."""
    frames = dataset.frames
    centre = look_at_centre(frames)
    distances = camera_distances(frames, centre)
    centre, half = subject_box(dataset, frames, centre, float(np.median(distances)))
    aabb_scale = max(1.0, float(dataset.aabb_scale or 1.0))
    levels = int(np.clip(1 + math.ceil(math.log2(aabb_scale)), MIN_LEVELS, MAX_LEVELS))
    roi = [list(map(float, centre - half)), list(map(float, centre + half))]
    # the region spans half the density grid (the contraction maps the background into the other half): a
    # step of half a voxel at the finest grid is its diagonal / 256
    config = FieldConfig(roi_aabb=roi, levels=levels, density_resolution=DENSITY_SCHEDULE[0][0],
                         occupancy_resolution=64, contracted_density=True, steps_per_roi=256)
    # uniform steps out to the far side of the region from the farthest camera, growing beyond
    config.background_from = float(np.max(camera_distances(frames, centre))) + half * math.sqrt(3)
    config.cone_angle = BACKGROUND_CONE
    return config


@torch.no_grad()
def views_per_vertex(field: Field, frames: list[Frame], near: float, resolution: int) -> torch.Tensor:
    """(R, R, R) how many train cameras see each density-grid vertex (in the image, beyond ``near``).

    DVGO's per-voxel learning rate: space seen by one or two cameras only (right in front of each camera) can
    take any density that paints those views (a per-view "fog") without the other views objecting, so its
    density learns in proportion to the number of views and space seen by fewer than ``min_views`` stays
    empty. Pinhole projection (distortion moves points by a few pixels: irrelevant for a count)."""
    device = field.density_grid.device
    axis = torch.linspace(-1.0, 1.0, resolution, device=device)
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    points = field.uncontract(coords)
    count = torch.zeros(points.shape[0], dtype=torch.int32, device=device)  # int16 overflows at 32,768 views
    for f in frames:
        c2w = torch.tensor(f.cam_to_data, dtype=torch.float32, device=device)
        p = (points - c2w[:3, 3]) @ c2w[:3, :3]  # camera axes (OpenGL: looking down -z)
        z = -p[:, 2]
        i = f.intrinsics
        zs = z.clamp_min(1e-9)
        x = i.fx * p[:, 0] / zs + i.cx
        y = -i.fy * p[:, 1] / zs + i.cy
        count += ((z > near) & (x >= 0) & (x <= i.width) & (y >= 0) & (y <= i.height)).to(torch.int32)
    return count.view(1, 1, resolution, resolution, resolution).float()


def density_lr_scale(view_count: torch.Tensor, min_views: int) -> torch.Tensor:
    """Per-vertex factor on the density grid's update: views / most views, 0 under ``min_views``."""
    scale = view_count / view_count.max().clamp_min(1.0)
    return torch.where(view_count >= min_views, scale, torch.zeros_like(scale))


def median_camera_distance(frames: list[Frame]) -> float:
    """The median camera distance to the point the cameras look at (data units)."""
    return float(np.median(camera_distances(frames, look_at_centre(frames))))


def default_near(frames: list[Frame]) -> float:
    """0.2 x the median camera distance to the point the cameras look at: a per-view "fog" right in front
    of each camera is the easiest way to memorise the train views; nothing photographed sits that close."""
    return 0.2 * median_camera_distance(frames)
