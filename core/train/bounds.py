"""Where the field lives and which of its space the train cameras see: the field's bounds from a dataset,
and DVGO's per-vertex view count that scales the density grid's learning rate."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.dataset import Dataset, Frame
from ..errors import NeuralLabelError
from ..field.model import Field, FieldConfig
from .schedules import DENSITY_SCHEDULE




def look_at_centre(frames: list[Frame]) -> np.ndarray:
    """The point closest (least squares) to all optical axes: where an orbit of cameras looks."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for f in frames:
        origin = f.cam_to_data[:3, 3]
        axis = -f.cam_to_data[:3, 2]
        axis = axis / np.linalg.norm(axis)
        projector = np.eye(3) - np.outer(axis, axis)
        a += projector
        b += projector @ origin
    if np.linalg.cond(a) > 1e8:  # parallel axes: use the cameras' centroid
        return np.mean([f.cam_to_data[:3, 3] for f in frames], axis=0)
    return np.linalg.solve(a, b)


def field_config_for(dataset: Dataset) -> FieldConfig:
    """Field bounds from the dataset: its ``scene_aabb`` when given (generated scenes), else the cameras.

    Without ``scene_aabb``: a box around the point the cameras look at, half as wide as the median camera
    distance, with ``1 + log2(aabb_scale)`` nested levels for the background (instant-ngp's aabb_scale).
    With ``scene_aabb``: that box, 4 % larger, one level (a closed room).
    """
    extra = dataset.extra or {}
    scene_aabb = extra.get("scene_aabb")
    if scene_aabb is not None:
        box = np.asarray(scene_aabb, dtype=np.float64).reshape(2, 3)
        if not np.all(box[1] > box[0]):
            raise NeuralLabelError(f"{dataset.path}: scene_aabb {scene_aabb} is not a box (min < max)",
                                   field="data")
        centre, half = box.mean(axis=0), (box[1] - box[0]) / 2 * 1.04
        levels = 1
    else:
        centre = look_at_centre(dataset.frames)
        distances = [np.linalg.norm(f.cam_to_data[:3, 3] - centre) for f in dataset.frames]
        half = np.full(3, 0.5 * float(np.median(distances)))
        aabb_scale = max(1.0, float(dataset.aabb_scale or 1.0))
        levels = int(min(5, 1 + math.ceil(math.log2(aabb_scale)))) if aabb_scale > 1 else 2
    roi = [list(map(float, centre - half)), list(map(float, centre + half))]
    # open scenes: coarser occupancy cells per level (the levels multiply the cells to refresh)
    return FieldConfig(roi_aabb=roi, levels=levels, density_resolution=DENSITY_SCHEDULE[0][0],
                       occupancy_resolution=128 if levels == 1 else 64)


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
    if field.config.levels > 1:  # invert the L-inf contraction of Field.normalize
        contracted = coords * 2.0
        norm = contracted.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)
        u = torch.where(norm <= 1.0, contracted, contracted / norm / (2.0 - norm.clamp_max(1.999)))
    else:
        u = coords
    points = field.roi_centre + u * field.roi_half
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


def default_near(frames: list[Frame]) -> float:
    """0.2 x the median camera distance to the point the cameras look at: a per-view "fog" right in front
    of each camera is the easiest way to memorise the train views; nothing photographed sits that close."""
    centre = look_at_centre(frames)
    return 0.2 * float(np.median([np.linalg.norm(f.cam_to_data[:3, 3] - centre) for f in frames]))
