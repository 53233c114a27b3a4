"""neurallabel.export_spec: a generated scene's objects placed through the operators at their true poses export
with every pose within 1e-6 of the truth; bad input gives a report that names the problem and changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from bpy_helpers import DEV_PRELUDE, run_bpy
from neurallabel.core.spec import load_spec
from neurallabel.core.data.truth import load_scene_truth

pytestmark = pytest.mark.bpy

# Places every truth object twice: as a mesh annotation (add_mesh with the truth PLY) at its pose, and as a
# box annotation (add_box) at its box pose and size. Then exports; then moves the root empty by a similarity
# and the annotations with it, and exports again.
PLACE_SCRIPT = DEV_PRELUDE + '''
from mathutils import Matrix
scene = bpy.context.scene
assert bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"]) == {"FINISHED"}
for o in ARGS["objects"]:
    bpy.ops.object.select_all(action="DESELECT")
    assert bpy.ops.neurallabel.add_mesh(filepath=o["mesh"], category=o["category"]) == {"FINISHED"}
    obj = bpy.context.active_object
    obj.name = o["name"]
    obj.matrix_world = Matrix(o["pose"])
    obj.neurallabel.category_id = o["category_id"]
    obj.neurallabel.instance_id = o["instance_id"]
    bpy.ops.object.select_all(action="DESELECT")
    assert bpy.ops.neurallabel.add_box(category=o["category"]) == {"FINISHED"}
    box = bpy.context.active_object
    box.name = o["name"] + "-box"
    box.matrix_world = Matrix(o["box_pose"])
    box.scale = o["box_size"]
    box.neurallabel.category_id = o["category_id"]
    box.neurallabel.instance_id = 100 + o["instance_id"]
bpy.context.view_layer.update()
assert bpy.ops.neurallabel.export_spec(filepath=ARGS["spec"]) == {"FINISHED"}
# A similarity on the root (scale 2): the annotations move with the world.
W = Matrix(ARGS["world_from_data"])
scene.neurallabel.root.matrix_world = W
for obj in scene.objects:
    if obj.neurallabel.role in {"MESH", "BOX"}:
        obj.matrix_world = W @ obj.matrix_world
bpy.context.view_layer.update()
assert bpy.ops.neurallabel.export_spec(filepath=ARGS["spec2"]) == {"FINISHED"}
emit({"ok": True})
'''


def truth_objects(scene_dir):
    truth = load_scene_truth(scene_dir)
    return truth, [{"name": o.name, "category": o.category, "category_id": o.category_id,
                    "instance_id": o.instance_id, "mesh": str(o.mesh_path), "pose": o.object_to_world.tolist(),
                    "box_pose": o.box_to_world.tolist(), "box_size": o.box_size.tolist()} for o in truth.objects]


def similarity() -> np.ndarray:
    c, s = np.cos(0.3), np.sin(0.3)
    w = np.array([[c, -s, 0, 0.5], [s, c, 0, -0.25], [0, 0, 1, 0.1], [0, 0, 0, 1.0]])
    w[:3, :3] *= 2.0
    return w


def test_export_matches_truth(small_scene, tmp_path):
    truth, objects = truth_objects(small_scene)
    spec_path, spec2_path = tmp_path / "out" / "spec.json", tmp_path / "out2" / "spec.json"
    run_bpy(PLACE_SCRIPT, {"data": str(small_scene / "transforms.json"), "objects": objects,
                           "spec": str(spec_path), "spec2": str(spec2_path),
                           "world_from_data": similarity().tolist()}, tmp_path / "bpy")
    spec = load_spec(spec_path)  # the bake's own reader accepts it (meshes load, frames check)
    assert spec.units_to_mm == 1000.0 and spec.field_path is None
    assert np.abs(spec.world_from_data - np.eye(4)).max() <= 1e-6
    by_name = {o.name: o for o in spec.objects}
    assert len(by_name) == 2 * len(truth.objects)
    for t in truth.objects:
        mesh, box = by_name[t.name], by_name[t.name + "-box"]
        assert mesh.kind == "mesh" and box.kind == "box"
        assert (mesh.category, mesh.category_id, mesh.instance_id) == (t.category, t.category_id, t.instance_id)
        assert np.abs(mesh.pose - t.object_to_world).max() <= 1e-6, t.name
        assert np.abs(box.pose - t.box_to_world).max() <= 1e-6, t.name
        assert np.abs(box.size - t.box_size).max() <= 1e-6, t.name
        truth_vertices = np.asarray(t.load_mesh().vertices)
        assert np.abs(np.asarray(mesh.mesh.vertices) - truth_vertices).max() <= 1e-6

    # Under a similarity root: world_from_data is the root's matrix; poses stay rigid, meshes scale.
    w = similarity()
    spec2 = load_spec(spec2_path)
    assert np.abs(spec2.world_from_data - w).max() <= 1e-6
    for t in truth.objects:
        expected = w @ t.object_to_world
        expected[:3, :3] /= 2.0
        mesh = next(o for o in spec2.objects if o.name == t.name)
        assert np.abs(mesh.pose - expected).max() <= 1e-6, t.name
        assert np.abs(np.asarray(mesh.mesh.vertices) - 2.0 * np.asarray(t.load_mesh().vertices)).max() <= 2e-6
        box = next(o for o in spec2.objects if o.name == t.name + "-box")
        expected_box = w @ t.box_to_world
        expected_box[:3, :3] /= 2.0
        assert np.abs(box.pose - expected_box).max() <= 1e-6 and np.abs(box.size - 2 * t.box_size).max() <= 2e-6


BAD_INPUT_SCRIPT = DEV_PRELUDE + '''
scene = bpy.context.scene

def state():
    return json.dumps({o.name: [[round(v, 9) for v in row] for row in o.matrix_world] + [
        o.neurallabel.role, o.neurallabel.category, o.neurallabel.instance_id] for o in bpy.data.objects},
        sort_keys=True)

def export(path):
    before = state()
    try:
        bpy.ops.neurallabel.export_spec(filepath=path)
        message = None
    except RuntimeError as exc:
        message = str(exc)
    return {"message": message, "unchanged": state() == before}

out = {}
out["no_dataset"] = export(ARGS["tmp"] + "/a/spec.json") if bpy.ops.neurallabel.export_spec.poll() else {
    "message": "poll: " + "no dataset", "unchanged": True}
bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"])
out["no_annotations"] = export(ARGS["tmp"] + "/b/spec.json")
bpy.ops.object.select_all(action="DESELECT")
bpy.ops.neurallabel.add_box()
first = bpy.context.active_object
out["no_category"] = export(ARGS["tmp"] + "/c/spec.json")
first.neurallabel.category = "mug"
bpy.ops.object.select_all(action="DESELECT")
bpy.ops.neurallabel.add_box(category="mug")
second = bpy.context.active_object
# Typing a taken id in the panel is resolved at once (addon.annotations); a script writing the raw property
# bypasses that, and the export still refuses the clash.
second.neurallabel["instance_id"] = first.neurallabel.instance_id
second.neurallabel.instance_owner = second.name
out["duplicate_id"] = export(ARGS["tmp"] + "/d/spec.json")
second.neurallabel.instance_id = first.neurallabel.instance_id + 7
scene.neurallabel.root.scale = (1.0, 2.0, 1.0)
bpy.context.view_layer.update()
out["sheared_root"] = export(ARGS["tmp"] + "/f/spec.json")
scene.neurallabel.root.scale = (1.0, 1.0, 1.0)
bpy.context.view_layer.update()
scene.neurallabel.dataset_path = ARGS["tmp"] + "/missing/transforms.json"
out["missing_dataset"] = export(ARGS["tmp"] + "/e/spec.json")
emit(out)
'''


def test_bad_input_reports_and_changes_nothing(small_scene, tmp_path):
    out = run_bpy(BAD_INPUT_SCRIPT, {"data": str(small_scene / "transforms.json")}, tmp_path)
    assert out["no_dataset"]["message"].startswith("poll")  # the button is greyed out: no dataset
    assert "no annotations" in out["no_annotations"]["message"]
    assert "has no category" in out["no_category"]["message"] and "'Box'" in out["no_category"]["message"]
    message = out["duplicate_id"]["message"]
    assert "duplicate instance_id" in message and "mug" in message  # core's id rules (parse_spec)
    assert "does not exist" in out["missing_dataset"]["message"]
    assert "root empty 'NeuralLabel Scene'" in out["sheared_root"]["message"]
    assert [name for name, case in out.items() if not case["unchanged"]] == []
    assert not any((tmp_path / d / "spec.json").exists() for d in "abcdef")
