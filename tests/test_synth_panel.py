"""The Synthetic Views panel in a background bpy session (issue 17): "Show Synthetic Cameras" draws the cameras
of the core's draw (posed under the root as the dataset cameras, replaced on each run, extrapolated ones red),
and "Bake Synthetic Views" bakes a few tiny views through the worker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bpy_helpers import DEV_PRELUDE, run_bpy
from test_synth import write_orbit_scene

pytestmark = pytest.mark.bpy

SCRIPT = DEV_PRELUDE + '''
from mathutils import Matrix
from neurallabel.operators import synth as S
scene = bpy.context.scene
props, synth = scene.neurallabel, scene.neurallabel.synth
out = {"show_poll_empty": bpy.ops.neurallabel.show_synthetic_cameras.poll()}
assert bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"]) == {"FINISHED"}
assert bpy.ops.neurallabel.add_mesh(filepath=ARGS["mesh"], category="ball") == {"FINISHED"}
ball = bpy.context.active_object
ball.neurallabel.category_id, ball.neurallabel.instance_id = 1, 1
out["bake_poll_no_field"] = bpy.ops.neurallabel.bake_synthetic.poll()
props.field_path = ARGS["field"]
out["bake_poll"] = bpy.ops.neurallabel.bake_synthetic.poll()

def cameras():
    collection = bpy.data.collections[S.COLLECTION_NAME]
    return [{"name": o.name, "view": o[S.PROP_VIEW], "bin": o[S.PROP_BIN], "extrapolated": o[S.PROP_EXTRAPOLATED],
             "colour": list(o.color), "collection": o.users_collection[0].name,
             "matrix_world": [list(r) for r in o.matrix_world], "parent": o.parent.name if o.parent else None}
            for o in sorted(collection.all_objects, key=lambda o: o[S.PROP_VIEW])]

# The root moved and scaled: the cameras must follow it as the dataset cameras do.
props.root.matrix_world = Matrix(ARGS["root"])
bpy.context.view_layer.update()
synth.views, synth.seed = 6, 3
synth.elevation_bins, synth.elevation_low, synth.elevation_high = 2, 0.0, 60.0
assert bpy.ops.neurallabel.show_synthetic_cameras() == {"FINISHED"}
out["first"] = cameras()
out["parent_collection"] = [c.name for c in bpy.data.collections if S.COLLECTION_NAME in [k.name for k in c.children]]
synth.views, synth.seed = 4, 5
assert bpy.ops.neurallabel.show_synthetic_cameras() == {"FINISHED"}
out["second"] = cameras()
out["synth_camera_data"] = len([c for c in bpy.data.cameras if c.name.startswith(S.COLLECTION_NAME)])
synth.views, synth.seed, synth.allow_extrapolation, synth.elevation_bins = 12, 1, True, 3
assert bpy.ops.neurallabel.show_synthetic_cameras() == {"FINISHED"}
out["extrapolated"] = cameras()
out["dataset_cameras"] = len(neurallabel.addon.scene_io.dataset_cameras(props.root))

# A bad range is refused before the worker starts, naming the panel's setting.
synth.distance_bins, synth.distance_low, synth.distance_high = 2, 2.0, 1.0
try:
    bpy.ops.neurallabel.show_synthetic_cameras()
except RuntimeError as exc:
    out["bad_range"] = str(exc)
synth.distance_bins = 0
try:
    bpy.ops.neurallabel.bake_synthetic()
except RuntimeError as exc:
    out["no_output"] = str(exc)

# Bake 3 tiny views (the field and the ball sit in the data frame: the root back at identity).
props.root.matrix_world = Matrix.Identity(4)
bpy.context.view_layer.update()
synth.views, synth.seed, synth.allow_extrapolation, synth.elevation_bins = 3, 0, False, 0
synth.width, synth.height = 32, 24
synth.output_dir = ARGS["out"]
assert bpy.ops.neurallabel.bake_synthetic() == {"FINISHED"}
out["job_running"] = props.job_running
emit(out)
'''


def poses_job(data, root, views, seed, elevation, allow=False) -> dict:
    from neurallabel.core.app.jobs import request_from_job, run

    return run(request_from_job({"kind": "synth_poses", "data": str(data), "world_from_data": root, "views": views,
                                 "seed": seed, "elevation": elevation, "allow_extrapolation": allow}))


def assert_posed_as(cameras: list[dict], result: dict, root: np.ndarray) -> None:
    """Each camera object is the core's view: its world matrix is root @ cam_to_data (the dataset cameras'
    placement), i.e. at the view's world position with the view's axes (scaled by the root's scale)."""
    assert [c["view"] for c in cameras] == [v["index"] for v in result["views"]]
    scale = np.cbrt(np.linalg.det(root[:3, :3]))
    for camera, view in zip(cameras, result["views"]):
        world = np.array(camera["matrix_world"])
        pose = np.array(view["cam_to_world"])
        assert np.allclose(world, root @ np.array(view["cam_to_data"]), atol=1e-5)
        assert np.allclose(world[:3, 3], pose[:3, 3], atol=1e-5)
        assert np.allclose(world[:3, :3] / scale, pose[:3, :3], atol=1e-5)
        assert camera["bin"] == view["bin"] and camera["extrapolated"] == view["extrapolated"]
        assert camera["parent"] == "NeuralLabel Scene"


def test_show_and_bake_synthetic_views(tmp_path):
    scene = tmp_path / "orbit"
    scene.mkdir()
    write_orbit_scene(scene)
    root = np.diag([2.0, 2.0, 2.0, 1.0])
    root[:3, 3] = [1.0, -0.5, 0.25]
    out_dir = tmp_path / "synth_out"
    args = {"data": str(scene / "transforms.json"), "field": str(scene / "field.pt"), "mesh": str(scene / "ball.ply"),
            "root": root.tolist(), "out": str(out_dir)}
    result = run_bpy(SCRIPT, args, tmp_path / "bpy", timeout=600)

    assert result["show_poll_empty"] is False  # no dataset yet
    assert result["bake_poll_no_field"] is False and result["bake_poll"] is True
    # The first run: 6 cameras exactly where the core draws them, in the world frame of the moved root.
    first = poses_job(scene / "transforms.json", root.tolist(), 6, 3, "0.0:60.0:2")
    assert len(result["first"]) == 6
    assert_posed_as(result["first"], first, root)
    assert result["parent_collection"] == ["NeuralLabel Scene"]  # beside the dataset cameras
    assert not any(c["extrapolated"] for c in result["first"])  # clamped to the training hull
    # A second run replaces them (objects and camera data), never piles up.
    second = poses_job(scene / "transforms.json", root.tolist(), 4, 5, "0.0:60.0:2")
    assert len(result["second"]) == 4 and result["synth_camera_data"] == 4
    assert_posed_as(result["second"], second, root)
    # Extrapolation allowed beyond the training elevations (20..40 deg): those cameras are red, apart.
    third = poses_job(scene / "transforms.json", root.tolist(), 12, 1, "0.0:60.0:3", allow=True)
    assert_posed_as(result["extrapolated"], third, root)
    flags = [c["extrapolated"] for c in result["extrapolated"]]
    assert 0 < sum(flags) < 12
    for camera in result["extrapolated"]:
        red = camera["extrapolated"]
        assert (camera["colour"][0] > 0.9 and camera["colour"][2] < 0.2) == red
        assert camera["collection"] == ("NeuralLabel Synthetic Views: extrapolated" if red
                                        else "NeuralLabel Synthetic Views")
    assert result["dataset_cameras"] == 8  # the synthetic cameras are not dataset cameras
    assert "Synthetic Views > Distance: distance" in result["bad_range"] and "empty bins" in result["bad_range"]
    assert "Synthetic Views > Output: no output folder" in result["no_output"]

    # The bake: a normal bake output of 3 synthetic views plus synth/.
    assert result["job_running"] is False
    assert (out_dir / "spec.json").is_file()
    coco = json.loads((out_dir / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and all(i["synthetic"] and (i["width"], i["height"]) == (32, 24)
                                            for i in coco["images"])
    gt = json.loads((out_dir / "bop" / "train" / "000001" / "scene_gt.json").read_text())
    assert sorted(gt) == ["0", "1", "2"]
    assert (out_dir / "bop" / "camera.json").is_file() and (out_dir / "raw" / "labels.json").is_file()
    transforms = json.loads((out_dir / "synth" / "transforms.json").read_text())
    assert len(transforms["frames"]) == 3 and all(f["baked"] for f in transforms["frames"])
    assert (out_dir / "synth" / "psi.json").is_file()
