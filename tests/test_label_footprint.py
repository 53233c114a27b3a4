"""Casting each object only through its convex hull's projection (core.labels.footprint) finds exactly the
silhouette that casting every pixel of the view and its truncation border finds: through a pinhole, through
strongly distorting lenses, for a mesh cut by the image border and for one partly behind the camera."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from neurallabel.core.data.dataset import Frame
from neurallabel.core.geometry.cameras import Intrinsics
from neurallabel.core.geometry.projection import region_pixels
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View
from neurallabel.core.labels.frame import FrameLabeler, bbox_bop, make_label_object
from neurallabel.core.labels.raycast import MeshCaster, world_mesh
from neurallabel.core.spec import SpecObject

LENSES = {
    "pinhole": Intrinsics(96, 72, 80.0, 80.0, 47.0, 37.0),
    "barrel": Intrinsics(96, 72, 70.0, 70.0, 48.5, 36.0, "OPENCV", (-0.32, 0.09, 0.002, -0.003)),
    "pincushion": Intrinsics(96, 72, 90.0, 90.0, 48.0, 36.0, "OPENCV", (0.25, 0.05, 0.0, 0.0)),
    "fisheye": Intrinsics(96, 72, 45.0, 45.0, 48.0, 36.0, "OPENCV_FISHEYE", (0.08, -0.03, 0.01, -0.002)),
}
# object-to-world poses (the camera sits at the origin looking down -z, OpenGL axes)
PLACES = {
    "centre": [0.05, -0.02, -1.0],
    "cut by the border": [0.5, 0.2, -0.9],
    "partly behind the camera": [0.1, 0.0, -0.05],
}


SHAPES = {
    # long straight edges: a lens bends them most between the hull's vertices
    "box": lambda: trimesh.creation.box([0.5, 0.35, 0.25]),
    # a hole: rays through it miss
    "torus": lambda: trimesh.creation.torus(0.2, 0.06, major_sections=48, minor_sections=16),
}


def object_pose(offset) -> np.ndarray:
    pose = trimesh.transformations.rotation_matrix(0.7, [1.0, 0.3, 0.0])
    pose[:3, 3] = offset
    return pose


def labeler(intrinsics: Intrinsics, pose: np.ndarray, shape: str = "torus"):
    mesh = SHAPES[shape]()
    obj = SpecObject(shape, shape, 6, 1, "mesh", pose, Path(f"{shape}.ply"), None, False, mesh)
    view = View.from_frame(Frame(0, Path("x.png"), np.eye(4), intrinsics), Similarity(np.eye(4)))
    caster = MeshCaster([world_mesh(mesh, pose)])
    return FrameLabeler([make_label_object(obj, mesh, 0)], caster), view


def every_pixel(labeler_: FrameLabeler, view: View):
    """The object cast through every pixel of the view and of its border (the truncated extent)."""
    W, H = view.width, view.height
    rows, cols = region_pixels((-W, -H, 2 * W, 2 * H))
    z = labeler_.cast_z_depth(0, view, rows, cols)
    hit = np.isfinite(z)
    inside = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    z_image = np.full((H, W), np.inf)
    z_image[rows[inside], cols[inside]] = z[inside]
    return int(hit.sum()), bbox_bop(rows[hit], cols[hit]), z_image


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("lens", LENSES)
def test_footprint_cast_finds_the_silhouette_of_casting_every_pixel(lens: str, place: str, shape: str) -> None:
    if lens != "pinhole" and place == "partly behind the camera":
        pytest.skip("a lens model is not meant for rays behind the image plane")
    labeler_, view = labeler(LENSES[lens], object_pose(PLACES[place]), shape)
    count, bbox, z_image = every_pixel(labeler_, view)
    assert count > 50  # the torus is seen
    silhouette = labeler_.cast_silhouettes(view)[0]
    assert silhouette.count_all == count and silhouette.bbox_all == bbox
    full = silhouette.full_mask(z_image.shape)
    assert np.array_equal(full, np.isfinite(z_image))
    c0, r0, c1, r1 = silhouette.region
    assert np.array_equal(silhouette.z[np.isfinite(silhouette.z)], z_image[r0:r1, c0:c1][full[r0:r1, c0:c1]])


@pytest.mark.parametrize("lens", ["pinhole", "barrel"])
def test_footprint_skips_the_rays_of_the_rectangle_that_cannot_hit(lens: str) -> None:
    """A torus seen at an angle fills well under its rectangle; only pixels near its outline's hull are cast."""
    labeler_, view = labeler(LENSES[lens], object_pose(PLACES["centre"]))
    cast = labeler_.caster.cast
    rays = []

    def counting(k, origins, directions):
        rays.append(len(directions))
        return cast(k, origins, directions)

    labeler_.caster.cast = counting
    silhouette = labeler_.cast_silhouettes(view)[0]
    c0, r0, c1, r1 = silhouette.region
    assert silhouette.count_all <= rays[0] < 0.9 * (c1 - c0) * (r1 - r0)
