"""Box objects' meshes carved by their labels in the photos: space a view sees through is not the object.

A short training leaves fog in a box around the object: a skirt at its foot, a layer of the table under it. The
field's density cannot tell that fog from the object (both lie inside the box, above the support plane), but the
views' labels can: where the colour step says a pixel shows the table and not the object (:mod:`.colour`), that
pixel's ray crossed the box without meeting the object before the surface it does meet. So each point of the box
collects votes from the views that look at it (:func:`votes`):

- *object*: it projects onto the object's visible mask;
- *free*: it projects onto a pixel no label holds, and lies in front of that pixel's surface or less than
  ``band`` behind it (the surface there is the fog or the table itself);
- no vote: another label holds the pixel, the surface there lies more than ``band`` in front of the point (the
  point is hidden), or the point lies outside the view or behind the camera.

A point is carved when its free votes reach ``max(min_free, free_share * (object + free))`` (:func:`carved`): one
view's wrong outline never carves the object, and a point the object's mask covers in most views stays. The masks
carry the colour step's errors, so only free space is taken from them: carving removes fog, it never adds a part
the field does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..geometry.box import Box
from ..geometry.projection import backproject, opencv_from_pose, project, projected_region
from ..geometry.transforms import apply_points, rigid_inverse
from ..geometry.view import View, spread_views
from .occlusion import bottom_zone

#: a point needs this many free votes at least to be carved
MIN_FREE_VOTES = 2
#: ... and this share of the views that vote on it
FREE_SHARE = 0.2
#: how many views (evenly spread over the training views that see the box) vote
CARVE_VIEWS = 24
#: how far behind a pixel's surface a point still counts as seen through, in the mesh's voxels: the field's
#: surface lies about a voxel off either way
BAND_VOXELS = 3.0
#: with votes, a box's iso-level is this share of the field's surface level
#: (:func:`core.pipeline.bake.surface_density_level`): the faint faces the cameras see less often come out, and the
#: fog that comes out with them is carved
CARVED_LEVEL_SHARE = 0.125


@dataclass(frozen=True)
class LabelledView:
    """What one view says about one box object: its ``visible_mask``, the pixels no label holds
    (``unlabelled``), and the scene's surface z-depth at every pixel of the box's region (world units; NaN: no
    surface there, or not asked)."""

    view: View
    visible_mask: np.ndarray  # (H, W) bool
    unlabelled: np.ndarray  # (H, W) bool
    z_depth: np.ndarray  # (H, W) float


def voting_views(views: Sequence[View], box: Box, count: int = CARVE_VIEWS) -> list[View]:
    """Up to ``count`` of ``views`` that see ``box`` (world frame), evenly spread in their order. Only training
    views: the views held out from the field's training judge it, and must not shape its labels."""
    seeing = [v for v in views if v.split == "train" and projected_region(
        v.intrinsics, v.cam_to_world, box.corners(), (0, 0, v.width, v.height)) is not None]
    return spread_views(seeing, count)


def carver(views: list[LabelledView], band: float, *, min_free: int = MIN_FREE_VOTES,
           free_share: float = FREE_SHARE) -> Callable[[np.ndarray], np.ndarray]:
    """``carve(points_world (N, 3)) -> (N,) bool`` for :func:`.box_mesh.extract_box_mesh`: the points ``views``
    see through (:func:`votes`, :func:`carved`)."""
    def carve(points: np.ndarray) -> np.ndarray:
        on_object, free = votes(points, views, band)
        return carved(on_object, free, min_free=min_free, free_share=free_share)

    return carve


def votes(points: np.ndarray, views: list[LabelledView], band: float) -> tuple[np.ndarray, np.ndarray]:
    """(object votes, free votes), each (N,) int, of world ``points`` (N, 3) from ``views`` (see the module's
    docstring); ``band``: how far behind a pixel's surface a point still counts as seen through (world units)."""
    points = np.asarray(points, dtype=np.float64)
    on_object = np.zeros(len(points), np.int32)
    free = np.zeros(len(points), np.int32)
    for lv in views:
        intr = lv.view.intrinsics
        pixels, z = project(intr, opencv_from_pose(lv.view.cam_to_world), points)
        with np.errstate(invalid="ignore"):
            cols, rows = np.floor(pixels[:, 0]), np.floor(pixels[:, 1])
            seen = (z > 0) & (cols >= 0) & (cols < intr.width) & (rows >= 0) & (rows < intr.height)
        at = np.flatnonzero(seen)
        r, c = rows[at].astype(np.int64), cols[at].astype(np.int64)
        on_object[at] += lv.visible_mask[r, c]
        surface = lv.z_depth[r, c]
        through = np.isnan(surface) | (surface >= z[at] - band)
        free[at] += lv.unlabelled[r, c] & through
    return on_object, free


def carved(on_object: np.ndarray, free: np.ndarray, *, min_free: int = MIN_FREE_VOTES,
           free_share: float = FREE_SHARE) -> np.ndarray:
    """(N,) bool: the points the views see through (:func:`votes`' counts)."""
    return free >= np.maximum(min_free, free_share * (on_object + free))


def unlabelled_surface(views: list[LabelledView], box_pose: np.ndarray, size: np.ndarray, up: np.ndarray, *,
                       max_points_per_view: int = 20_000) -> np.ndarray:
    """Box-frame points (N, 3) of the surface the views see at pixels no label holds, in the zone under the box
    where its support is looked for (:func:`.occlusion.bottom_zone`): the table around the object, seen past
    it. The mesh's own vertices there hold the fog at the object's foot as much as the table; these hold the
    table."""
    box_from_world = rigid_inverse(np.asarray(box_pose, dtype=np.float64))
    chunks = []
    for lv in views:
        rows, cols = np.nonzero(lv.unlabelled & np.isfinite(lv.z_depth))
        if len(rows) > max_points_per_view:
            pick = np.linspace(0, len(rows) - 1, max_points_per_view).astype(np.int64)
            rows, cols = rows[pick], cols[pick]
        world = backproject(lv.view.intrinsics, lv.view.cam_to_world, rows, cols, lv.z_depth[rows, cols])
        local = apply_points(box_from_world, world)
        chunks.append(local[bottom_zone(local, size, up)])
    return np.concatenate(chunks) if chunks else np.zeros((0, 3))
