"""scripts/bake.py under plain Python with the bpy module, on a saved .blend: DIR/spec.json plus labels equal
to ``neurallabel bake`` on that spec; bad input exits non-zero with the problem on stderr.

(``blender -b scene.blend -P scripts/bake.py -- ...`` runs the same ``bake_blend``; there is no Blender
binary on the test machine, only the bpy module.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bpy_helpers import DEV_PRELUDE, REPO_ROOT, bpy_environment, run_bpy
from test_bake_operator import ANNOTATE, assert_same_bake, cli_bake, truth_objects

pytestmark = pytest.mark.bpy

SAVE_SCRIPT = DEV_PRELUDE + ANNOTATE + '''
# A field, and a box annotation around the cube (its pixels and mesh come from the field).
scene.neurallabel.field_path = ARGS["field"]
bpy.ops.object.select_all(action="DESELECT")
bpy.data.objects["cube_1"].select_set(True)
assert bpy.ops.neurallabel.add_box(category="cube-box") == {"FINISHED"}
bpy.ops.wm.save_as_mainfile(filepath=ARGS["blend"])
obj = bpy.data.objects[ARGS["objects"][0]["name"]]
obj.neurallabel.category = ""  # a second file with an annotation that has no category
bpy.ops.wm.save_as_mainfile(filepath=ARGS["bad_blend"])
bpy.ops.wm.read_homefile(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=ARGS["empty_blend"])
emit({"ok": True})
'''


def bake_script(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bake.py"), *args], capture_output=True,
                          text=True, timeout=300, env=bpy_environment(tmp), cwd=str(tmp))


def test_headless_bake_matches_cli(small_scene, tmp_path):
    import numpy as np

    from neurallabel.core.data.truth import load_scene_truth
    from test_icp import write_voxel_field

    cube = next(o for o in load_scene_truth(small_scene).objects if o.name == "cube_1")
    placed = cube.load_mesh().copy().apply_transform(cube.object_to_world)
    roi = np.array([placed.bounds[0] - 0.04, placed.bounds[1] + 0.04])
    roi[0, 2] = -0.02
    write_voxel_field(tmp_path / "field.pt", [placed], roi, resolution=48)
    blend, bad_blend, empty_blend = tmp_path / "scene.blend", tmp_path / "bad.blend", tmp_path / "empty.blend"
    run_bpy(SAVE_SCRIPT, {"data": str(small_scene / "transforms.json"), "objects": truth_objects(small_scene),
                          "field": str(tmp_path / "field.pt"), "blend": str(blend), "bad_blend": str(bad_blend),
                          "empty_blend": str(empty_blend)}, tmp_path / "bpy")

    out = tmp_path / "labels"
    proc = bake_script(tmp_path, str(blend), "--out", str(out), "--frames", "1:4", "--formats", "coco,raw")
    assert proc.returncode == 0, proc.stderr
    assert (out / "spec.json").is_file() and not (out / "bop").exists()
    assert sorted(p.name for p in (out / "raw" / "depth").iterdir()) == ["000001.npy", "000002.npy", "000003.npy"]
    cli_out = tmp_path / "cli"
    cli_bake(out / "spec.json", cli_out, "--formats", "coco,raw", "--frames", "1:4")
    assert_same_bake(out, cli_out)
    spec = json.loads((out / "spec.json").read_text())
    assert spec["field"] == str(tmp_path / "field.pt") and {o["kind"] for o in spec["objects"]} == {"mesh", "box"}
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert {a["name"] for a in coco["annotations"]} >= {"cube-box", "cube_1"}  # the box got pixels from the field

    # Another range into the same folder adds to the same dataset (the spec does not list frames).
    proc = bake_script(tmp_path, str(blend), "--out", str(out), "--frames", "4:6", "--formats", "coco,raw")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "raw" / "depth").iterdir())) == 5

    # Bad input: non-zero exit and one clear line naming the problem.
    proc = bake_script(tmp_path, str(tmp_path / "missing.blend"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "missing.blend does not exist" in proc.stderr
    proc = bake_script(tmp_path, str(empty_blend), "--out", str(tmp_path / "y"))
    assert proc.returncode == 2 and "has no NeuralLabel scene" in proc.stderr
    proc = bake_script(tmp_path, str(bad_blend), "--out", str(tmp_path / "z"))
    assert proc.returncode == 2 and "has no category" in proc.stderr, proc.stderr
    assert not (tmp_path / "z" / "spec.json").exists()
