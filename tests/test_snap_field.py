"""Snap against a field reads the field's front surface: the depth where a ray's accumulated opacity first
reaches a small share, not its median (which lies inside a trained object's soft density)."""

from __future__ import annotations

import numpy as np

from neurallabel.core.app.jobs import SNAP_FRONT_OPACITY, front_depth
from neurallabel.core.scene.queries import RayWeights


def test_front_depth_is_the_first_crossing_of_the_opacity_level():
    # ray 0: opacity after each sample 0.05, 1 - 0.95 * 0.94 = 0.107, then 0.55; ray 1 never gets to 0.1;
    # ray 2 has no samples; ray 3 is opaque at once.
    samples = RayWeights(ray=np.array([0, 0, 0, 1, 1, 3]), z=np.array([1.0, 2.0, 3.0, 1.5, 2.5, 4.0]),
                         alpha=np.array([0.05, 0.06, 0.5, 0.01, 0.01, 1.0]))
    front = front_depth(samples, 4, 0.1)
    assert front[0] == 2.0 and np.isnan(front[1]) and np.isnan(front[2]) and front[3] == 4.0
    # at the median level ray 0's surface is the third sample: a fog in front moves the median back
    assert front_depth(samples, 4, 0.5)[0] == 3.0


def test_front_depth_restarts_per_ray():
    # ray 0 accumulates almost to the level; ray 1's first sample alone must not inherit ray 0's opacity
    samples = RayWeights(ray=np.array([0, 0, 1, 1]), z=np.array([1.0, 2.0, 1.0, 2.0]),
                         alpha=np.array([0.05, 0.04, 0.05, 0.06]))
    front = front_depth(samples, 2, SNAP_FRONT_OPACITY)
    assert np.isnan(front[0]) and front[1] == 2.0
    assert np.all(np.isnan(front_depth(RayWeights(np.zeros(0, np.int64), np.zeros(0), np.zeros(0)), 3, 0.1)))


def test_snap_on_a_field_refuses_a_surface_unlike_the_mesh(small_scene, tmp_path):
    """A field holding a ball where the cube should be: the snap (through the front surface) refuses rather
    than moving the cube onto the ball's floor or into it."""
    import trimesh

    from neurallabel.addon.worker_client import run_job_sync
    from neurallabel.core.data.truth import load_scene_truth
    from neurallabel.core.errors import NeuralLabelError

    from test_icp import displaced, write_voxel_field

    truth = load_scene_truth(small_scene)
    cube = next(o for o in truth.objects if o.name == "cube_1")
    placed = cube.load_mesh().copy().apply_transform(cube.object_to_world)
    centre = placed.bounds.mean(axis=0)
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.25 * float(placed.extents.max()))
    ball.apply_translation(centre + [0.03, 0.0, 0.0])
    roi = np.array([centre - 0.07, centre + 0.07])
    roi[0, 2] = -0.02
    write_voxel_field(tmp_path / "field.pt", [ball], roi, resolution=80)
    start = displaced(cube.object_to_world, np.random.default_rng(2), 0.02, 10.0)
    job = {"kind": "snap", "data": str(truth.transforms_path), "field": str(tmp_path / "field.pt"),
           "mesh": str(cube.mesh_path), "pose": start.tolist(), "device": "cpu", "max_views": 6}
    try:
        result = run_job_sync(job)
    except NeuralLabelError as error:
        assert "stays where it was" in str(error) or "lost the object" in str(error), error
        return
    raise AssertionError(f"the snap moved the cube onto a ball: {result}")
