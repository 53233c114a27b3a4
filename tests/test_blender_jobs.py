"""Run SfM, Train Field and Export Field Points from Blender: the jobs the operators build, and real runs
(the worker synchronously, as under ``blender -b``): SfM on 9 fox photos, 2 training steps on the small
scene, the trained field's cloud written as a PLY."""

from __future__ import annotations

import numpy as np
import pytest

from bpy_helpers import DEV_PRELUDE, SHARED_DATA, run_bpy
from test_sfm import FOX_SUBSET, link_images

JOBS_SCRIPT = DEV_PRELUDE + '''
from types import SimpleNamespace as NS
from neurallabel.operators import field_jobs as J
scene = bpy.context.scene
out = {}

def failure(call):
    try:
        call()
    except RuntimeError as exc:
        return str(exc)

# The jobs as built from the operators' settings and the scene (no worker).
sfm = J.NEURALLABEL_OT_run_sfm.build_job(NS(images=ARGS["photos"] + "/", out_dir="", downscale=4.0), bpy.context)
out["sfm_job"] = sfm
out["sfm_missing"] = failure(lambda: bpy.ops.neurallabel.run_sfm(images=ARGS["tmp"] + "/nope"))
out["train_poll_empty"] = bpy.ops.neurallabel.train_field.poll()

assert bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"]) == {"FINISHED"}
op = NS(filepath="", steps=0, minutes=1.5)
out["train_job"] = J.NEURALLABEL_OT_train_field.build_job(op, bpy.context)
out["export_poll_no_field"] = bpy.ops.neurallabel.export_field_points.poll()

# Real runs: 2 steps, then the field's cloud as a PLY.
assert bpy.ops.neurallabel.train_field(filepath=ARGS["field"], steps=2) == {"FINISHED"}
out["field_path"] = scene.neurallabel.field_path
scene.neurallabel.field_path = ARGS["voxels"]  # 2 steps see no surface yet: a field of the true cube
out["export"] = sorted(bpy.ops.neurallabel.export_field_points(filepath=ARGS["ply"], views=2))
if ARGS.get("fox"):
    result = bpy.ops.neurallabel.run_sfm(images=ARGS["fox"], downscale=4.0)
    out["sfm"] = sorted(result)
    out["sfm_dataset"] = scene.neurallabel.dataset_path
    out["sfm_cameras"] = len([c for c in scene.neurallabel.root.children if c.type == "CAMERA"])
emit(out)
'''


def test_field_jobs_build_run_and_export(small_scene, tmp_path):
    fox = None  # SfM runs where the shared fox photos are (../shared/data), the rest everywhere
    if (SHARED_DATA / "fox" / "images").is_dir():
        fox = link_images(FOX_SUBSET, SHARED_DATA / "fox" / "images", tmp_path / "fox" / "images")
    (tmp_path / "photos").mkdir()
    from test_icp import write_voxel_field
    from neurallabel.core.data.truth import load_scene_truth

    cube = next(o for o in load_scene_truth(small_scene).objects if o.name == "cube_1")
    placed = cube.load_mesh().copy().apply_transform(cube.object_to_world)
    roi = np.array([placed.bounds[0] - 0.05, placed.bounds[1] + 0.05])
    roi[0, 2] = -0.02  # with the floor under the cube
    write_voxel_field(tmp_path / "voxels.pt", [placed], roi, resolution=32)
    args = {"data": str(small_scene / "transforms.json"), "field": str(tmp_path / "field.pt"),
            "ply": str(tmp_path / "cloud.ply"),
            "voxels": str(tmp_path / "voxels.pt"), "photos": str(tmp_path / "photos"), "fox": fox and str(fox)}
    result = run_bpy(JOBS_SCRIPT, args, tmp_path / "bpy", timeout=600)

    assert result["sfm_job"] == {"kind": "sfm", "images": str(tmp_path / "photos"), "out": str(tmp_path),
                                 "downscale": 4.0}  # the dataset goes beside the photos, as the CLI's
    assert "choose a folder of photos" in result["sfm_missing"]
    assert result["train_poll_empty"] is False  # no dataset imported yet
    # No field in the scene yet: the checkpoint goes beside the dataset; minutes instead of steps.
    assert result["train_job"] == {"kind": "train", "data": str(small_scene / "transforms.json"),
                                   "out": str(small_scene / "field.pt"), "steps": None, "minutes": 1.5}
    assert result["export_poll_no_field"] is False
    assert result["field_path"] == str(tmp_path / "field.pt") and (tmp_path / "field.pt").exists()
    assert result["export"] == ["FINISHED"]
    import trimesh

    cloud = trimesh.load(tmp_path / "cloud.ply")
    assert len(cloud.vertices) > 20  # on the cube and the floor under it, in the dataset frame
    assert np.all(cloud.vertices >= roi[0] - 1e-4) and np.all(cloud.vertices <= roi[1] + 1e-4)
    if fox is None:
        pytest.skip("no shared fox photos: SfM not run")
    assert result["sfm"] == ["FINISHED"] and result["sfm_cameras"] == len(FOX_SUBSET)
    assert result["sfm_dataset"].startswith(str(tmp_path / "fox"))
