"""Scene queries: one definition of the field's surface at a pixel, shared by the bake's occlusion and snap;
capabilities told apart by protocol, not by attribute probing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurallabel.core.geometry.box import Box
from neurallabel.core.geometry.cameras import Intrinsics, project_points
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View
from neurallabel.core.labels.frame import FrameLabeler
from neurallabel.core.labels.raycast import MeshCaster
from neurallabel.core.render.views import render_frame
from neurallabel.core.scene.queries import (CachedDensityQuery, DensityQuery, DepthMapQuery, FieldQuery,
                                            SceneQuery, cached)
from neurallabel.core.scene.surface import surface_points

WALL_Z, FOG_Z = -1.2, (-0.9, -0.7)


@pytest.fixture(scope="module")
def fog_field():
    """A hand-set field seen from the origin along -z: a fog slab that stops ~40 % of the light in front of an
    opaque wall. The median depth lies on the wall; the expected depth is pulled ~0.15 forward by the fog."""
    import torch

    from neurallabel.core.field.model import Field, FieldConfig

    roi = np.array([[-0.6, -0.6, -1.5], [0.6, 0.6, -0.5]])
    resolution = 48
    field = Field(FieldConfig(roi_aabb=roi.tolist(), density_resolution=resolution, plane_resolutions=(4,),
                              plane_features=2, hidden=8, occupancy_resolution=16, steps_per_roi=1024))
    z = np.linspace(roi[0, 2], roi[1, 2], resolution)
    fog_sigma = -math.log(0.6) / (FOG_Z[1] - FOG_Z[0])  # 40 % opacity across the slab
    fog_raw = math.log(math.expm1(fog_sigma / field.density_scale)) - field.density_shift
    raw = np.where(z < WALL_Z, 12.0, np.where((z > FOG_Z[0]) & (z < FOG_Z[1]), fog_raw, -12.0))
    grid = np.broadcast_to(raw[None, None, :], (resolution,) * 3)  # grid[x, y, z]
    with torch.no_grad():
        field.density_grid.copy_(torch.from_numpy(np.ascontiguousarray(grid)).float()[None, None])
        field.update_occupancy(threshold=0.001, samples_per_cell=2)
    return field


def test_snap_and_occlusion_use_the_same_field_surface(fog_field) -> None:
    """Snap's surface points lie at the depth the bake's occlusion test reads (the median), not at the expected
    depth (the old snap rendered ``render_frame``'s expected depth: 0.15 in front of the wall here)."""
    intr = Intrinsics(24, 18, 24.0, 24.0, 12.0, 9.0)
    view = View.synthetic(0, intr, np.eye(4), Similarity.identity())
    scene = FieldQuery(fog_field)
    labeler = FrameLabeler([], MeshCaster([]), scene)
    occlusion_z = labeler.label(view, confidence=False).source_depth  # what a mesh is tested against

    pose = np.eye(4)
    pose[2, 3] = WALL_Z
    box = Box(pose, np.array([0.6, 0.6, 0.2]))  # around the wall, not the fog
    surface = surface_points([view], box, scene, margin=0.0, voxel=0.0)
    assert len(surface.points) > 100
    pixels, z = project_points(intr, view.cam_to_data, surface.points)
    rows, cols = np.floor(pixels[:, 1]).astype(int), np.floor(pixels[:, 0]).astype(int)
    assert np.allclose(z, occlusion_z[rows, cols], atol=1e-9)
    assert np.allclose(z, -WALL_Z, atol=0.03)  # on the wall
    expected_z = render_frame(fog_field, intr, view.cam_to_data, depth_only=True)["z_depth"][rows, cols]
    assert np.all(z - expected_z > 0.08), (z - expected_z).min()  # the definitions really differ here


def test_capabilities_are_protocols(fog_field) -> None:
    """A field has a density (box meshes) and measures confidence; depth maps do neither; a cache keeps what
    its scene has."""
    field = FieldQuery(fog_field)
    maps = DepthMapQuery(lambda view: np.ones((view.height, view.width)))
    assert isinstance(field, SceneQuery) and isinstance(field, DensityQuery) and field.measures_confidence
    assert isinstance(maps, SceneQuery) and not isinstance(maps, DensityQuery) and not maps.measures_confidence
    assert isinstance(cached(field), CachedDensityQuery) and isinstance(cached(field), DensityQuery)
    assert not isinstance(cached(maps), DensityQuery) and cached(field).name == field.name


def test_cache_answers_as_its_scene(fog_field) -> None:
    intr = Intrinsics(12, 9, 12.0, 12.0, 6.0, 4.5)
    view = View.synthetic(3, intr, np.eye(4), Similarity.identity())
    field = FieldQuery(fog_field)
    rows, cols = np.divmod(np.arange(12 * 9), 12)
    direct = field.at_pixels(view, rows, cols, confidence=True)
    cache = cached(field)
    whole = cache.at_pixels(view, rows, cols, confidence=True)
    part = cache.at_pixels(view, rows[5:20], cols[5:20])
    assert np.array_equal(whole.z_depth, direct.z_depth) and np.array_equal(whole.confidence, direct.confidence)
    assert np.array_equal(part.z_depth, direct.z_depth[5:20]) and part.confidence is None
    assert np.all(np.isfinite(direct.z_depth)) and np.all(direct.confidence < 0.9)  # fog: split weight
