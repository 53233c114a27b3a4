"""neurallabel.add_box / neurallabel.add_mesh through the installed extension.

Boxes: placed at the cursor or around the selection, scale = size, rigid pose; a box set to a generated
object's true box gives back that pose and size (<= 1e-6). Meshes: PLY / OBJ / STL / GLB keep the file's
frame (local vertices = the file's vertices, as trimesh reads them). Duplicates keep the category and get a
new instance id. A file Blender cannot read leaves the scene unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from bpy_helpers import INSTALL_PRELUDE, SHARED_DATA, build_extension_zip, run_bpy

pytestmark = pytest.mark.bpy

COUNTS = '''
def counts():
    return {name: len(getattr(bpy.data, name)) for name in ("objects", "meshes", "materials", "collections",
                                                          "images", "textures", "node_groups", "actions")}
'''

BOX_SCRIPT = INSTALL_PRELUDE + COUNTS + '''
from mathutils import Matrix, Vector, Euler
ann = ext.addon.annotations
scene = bpy.context.scene
out = {}

# 1. Nothing selected: at the 3D cursor (location and rotation), default or given size.
scene.cursor.location = (0.3, -0.2, 0.5)
scene.cursor.rotation_euler = Euler((0.1, 0.2, 0.3))
bpy.ops.object.select_all(action="DESELECT")
bpy.ops.neurallabel.add_box(size=(0.1, 0.2, 0.3), category="mug")
box = bpy.context.active_object
pose, size = ann.box_pose_and_size(box)
out["cursor_box"] = {"name": box.name, "collections": [c.name for c in box.users_collection],
    "role": box.neurallabel.role, "category": box.neurallabel.category, "category_id": box.neurallabel.category_id,
    "instance_id": box.neurallabel.instance_id, "scale": list(box.scale), "pose": pose.tolist(),
    "size": size.tolist(), "cursor": [list(r) for r in scene.cursor.matrix]}

# 2. Around the selection: two mesh objects -> a box enclosing both (world axis-aligned).
bpy.ops.mesh.primitive_cube_add(size=0.5, location=(1.0, 1.0, 0.25))
a = bpy.context.active_object
bpy.ops.mesh.primitive_uv_sphere_add(radius=0.2, location=(1.6, 0.8, 0.6))
b = bpy.context.active_object
a.select_set(True)
bpy.ops.neurallabel.add_box(category="mug")
sel_box = bpy.context.active_object
pose, size = ann.box_pose_and_size(sel_box)
corners = [list(o.matrix_world @ Vector(c)) for o in (a, b) for c in o.bound_box]
out["selection_box"] = {"pose": pose.tolist(), "size": size.tolist(), "corners": corners,
                        "category_id": sel_box.neurallabel.category_id, "instance_id": sel_box.neurallabel.instance_id}
bpy.ops.neurallabel.add_box(category="cup")
out["cup_category_id"] = bpy.context.active_object.neurallabel.category_id

# 3. Boxes set to the generated scene's true boxes give those poses and sizes back.
truth = []
for i, obj in enumerate(ARGS["objects"]):
    bpy.ops.object.select_all(action="DESELECT")
    bpy.ops.neurallabel.add_box(category=obj["category"])
    box = bpy.context.active_object
    box.matrix_world = Matrix(obj["box"]["pose"]) @ Matrix.Diagonal(Vector(obj["box"]["size"])).to_4x4()
    bpy.context.view_layer.update()
    pose, size = ann.box_pose_and_size(box)
    truth.append({"pose": pose.tolist(), "size": size.tolist()})
out["truth_boxes"] = truth

# 4. Duplicates (Shift+D, and a Python copy) keep the category and get new unique instance ids.
bpy.ops.object.select_all(action="DESELECT")
bpy.ops.neurallabel.add_box(category="bowl")
original = bpy.context.active_object
original_id = original.neurallabel.instance_id
bpy.ops.object.duplicate()
bpy.context.view_layer.update()
dup = bpy.context.active_object
copy = original.copy()
original.users_collection[0].objects.link(copy)
bpy.context.view_layer.update()
ids = [o.neurallabel.instance_id for o in ann.annotation_objects(scene)]
out["duplicate"] = {"original_name": original.name, "dup_name": dup.name, "original_id": original_id,
    "original_id_after": original.neurallabel.instance_id, "dup_id": dup.neurallabel.instance_id,
    "copy_id": copy.neurallabel.instance_id, "dup_category": dup.neurallabel.category,
    "dup_category_id": dup.neurallabel.category_id, "original_category_id": original.neurallabel.category_id,
    "ids": ids}
# A clash typed in by hand is resolved too: the object that had the id keeps it.
dup.neurallabel.instance_id = original_id
bpy.context.view_layer.update()
out["typed_clash"] = [original.neurallabel.instance_id, dup.neurallabel.instance_id]
# And in a saved file loaded again (load_post), ids stay unique.
path = ARGS["tmp"] + "/boxes.blend"
bpy.ops.wm.save_as_mainfile(filepath=path)
bpy.ops.wm.open_mainfile(filepath=path)
ids_loaded = [o.neurallabel.instance_id for o in ext.addon.annotations.annotation_objects(bpy.context.scene)]
out["ids_after_load"] = ids_loaded
emit(out)
'''


def _true_objects(small_scene: Path) -> list[dict]:
    return json.loads((small_scene / "gt" / "objects.json").read_text())["objects"]


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_extension_zip(tmp_path_factory.mktemp("dist"))


def test_add_box(small_scene: Path, extension_zip: Path, tmp_path: Path) -> None:
    objects = _true_objects(small_scene)
    out = run_bpy(BOX_SCRIPT, {"zip": str(extension_zip), "objects": objects}, tmp_path)
    box = out["cursor_box"]
    assert box["collections"] == ["NeuralLabel Annotations"]
    assert (box["role"], box["category"], box["category_id"], box["instance_id"]) == ("BOX", "mug", 1, 1)
    assert box["scale"] == pytest.approx([0.1, 0.2, 0.3], abs=1e-7)
    pose, cursor = np.array(box["pose"]), np.array(box["cursor"])
    assert np.allclose(pose, cursor, atol=1e-6)  # at the cursor, the cursor's rotation, no scale in the pose
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
    assert box["size"] == pytest.approx([0.1, 0.2, 0.3], abs=1e-6)

    sel = out["selection_box"]
    corners = np.array(sel["corners"])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    assert np.allclose(np.array(sel["pose"])[:3, 3], (lo + hi) / 2, atol=1e-6)
    assert np.allclose(np.array(sel["pose"])[:3, :3], np.eye(3), atol=1e-7)
    assert sel["size"] == pytest.approx((hi - lo).tolist(), abs=1e-6)
    assert (sel["category_id"], sel["instance_id"]) == (1, 2)  # same category, same id; new instance
    assert out["cup_category_id"] == 2

    for obj, got in zip(objects, out["truth_boxes"]):
        assert np.abs(np.array(got["pose"]) - np.array(obj["box"]["pose"])).max() <= 1e-6, obj["name"]
        assert np.abs(np.array(got["size"]) - np.array(obj["box"]["size"])).max() <= 1e-6, obj["name"]

    dup = out["duplicate"]
    assert dup["original_id_after"] == dup["original_id"]
    assert dup["dup_category"] == "bowl" and dup["dup_category_id"] == dup["original_category_id"]
    assert len({dup["original_id"], dup["dup_id"], dup["copy_id"]}) == 3
    assert len(dup["ids"]) == len(set(dup["ids"])) and 0 not in dup["ids"]
    assert out["typed_clash"][0] == dup["original_id"] and out["typed_clash"][1] != dup["original_id"]
    assert sorted(out["ids_after_load"]) == sorted(set(out["ids_after_load"]))
    assert len(out["ids_after_load"]) == len(dup["ids"])


MESH_SCRIPT = INSTALL_PRELUDE + COUNTS + '''
import numpy as np
from mathutils import Matrix
ann = ext.addon.annotations
scene = bpy.context.scene
scene.cursor.location = (0.5, 0.25, -0.1)
out = {"meshes": {}, "bad": {}}
for label, path in ARGS["good"].items():
    before = counts()
    result = sorted(bpy.ops.neurallabel.add_mesh(filepath=path))
    obj = bpy.context.active_object
    verts = np.array([list(v.co) for v in obj.data.vertices])
    np.save(ARGS["tmp"] + f"/{label}.npy", verts)
    pose, scale = ann.mesh_pose(obj)
    after = counts()
    out["meshes"][label] = {"result": result, "name": obj.name, "role": obj.neurallabel.role,
        "mesh_path": obj.neurallabel.mesh_path, "category": obj.neurallabel.category,
        "instance_id": obj.neurallabel.instance_id, "collections": [c.name for c in obj.users_collection],
        "pose": pose.tolist(), "scale": scale.tolist(), "new_objects": after["objects"] - before["objects"],
        "new_meshes": after["meshes"] - before["meshes"], "new_collections": after["collections"] - before["collections"]}
# Mesh annotations set to the generated scene's true poses give those poses back.
true_poses = []
for obj_truth in ARGS["objects"]:
    bpy.ops.neurallabel.add_mesh(filepath=obj_truth["mesh_path"], category=obj_truth["category"])
    obj = bpy.context.active_object
    obj.matrix_world = Matrix(obj_truth["pose"])
    bpy.context.view_layer.update()
    pose, scale = ann.mesh_pose(obj)
    true_poses.append({"pose": pose.tolist(), "scale": scale.tolist(), "category_id": obj.neurallabel.category_id})
out["true_poses"] = true_poses
for label, path in ARGS["bad"].items():
    before = counts()
    names_before = sorted(o.name for o in bpy.data.objects)
    active_before = bpy.context.active_object.name if bpy.context.active_object else None
    try:
        result, error = sorted(bpy.ops.neurallabel.add_mesh(filepath=path)), None
    except RuntimeError as exc:
        result, error = ["CANCELLED"], str(exc)
    out["bad"][label] = {"result": result, "error": error, "unchanged": counts() == before
                         and sorted(o.name for o in bpy.data.objects) == names_before,
                         "active": (bpy.context.active_object.name if bpy.context.active_object else None) == active_before}
emit(out)
'''


def _assert_same_points(got: np.ndarray, expected: np.ndarray, tol: float = 1e-5) -> None:
    assert got.shape[1] == 3 and len(got) > 0
    d_got, _ = cKDTree(expected).query(got)
    d_exp, _ = cKDTree(got).query(expected)
    assert max(d_got.max(), d_exp.max()) <= tol, (d_got.max(), d_exp.max())


def test_add_mesh_keeps_file_frame_and_rejects_bad_files(small_scene: Path, extension_zip: Path,
                                                         tmp_path: Path) -> None:
    truth = _true_objects(small_scene)
    ply = small_scene / truth[0]["mesh"]
    source = trimesh.load(ply, force="mesh", process=False)
    # An asymmetric copy, so a wrong axis conversion cannot hide behind symmetry.
    skew = source.copy()
    skew.vertices = skew.vertices * [1.0, 2.0, 3.0] + [0.1, 0.2, 0.3]
    files = tmp_path / "files"
    files.mkdir()
    good = {"ply": str(ply)}
    for suffix in ("stl", "glb", "obj"):
        path = files / f"skew.{suffix}"
        skew.export(path)
        good[suffix] = str(path)
    bunny = SHARED_DATA / "meshes" / "bunny.obj"
    if bunny.is_file():
        good["bunny"] = str(bunny)
    bad = {}
    (files / "garbage.ply").write_bytes(b"ply\nformat nonsense\n\x00\x01garbage")
    bad["garbage_ply"] = str(files / "garbage.ply")
    (files / "garbage.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage" * 3)
    bad["garbage_glb"] = str(files / "garbage.glb")
    (files / "empty.obj").write_text("# no geometry\n")
    bad["empty_obj"] = str(files / "empty.obj")
    (files / "model.fbx").write_text("not supported")
    bad["unsupported"] = str(files / "model.fbx")
    bad["missing"] = str(files / "nope.ply")

    objects = [{**o, "mesh_path": str(small_scene / o["mesh"])} for o in truth]
    out = run_bpy(MESH_SCRIPT, {"zip": str(extension_zip), "good": good, "bad": bad, "objects": objects},
                  tmp_path)
    for label, path in good.items():
        mesh = out["meshes"][label]
        assert mesh["result"] == ["FINISHED"], label
        assert mesh["role"] == "MESH" and mesh["mesh_path"] == path and mesh["category"] == Path(path).stem
        assert mesh["collections"] == ["NeuralLabel Annotations"]
        assert (mesh["new_objects"], mesh["new_meshes"]) == (1, 1), (label, mesh)  # no helper empties left
        pose = np.array(mesh["pose"])
        assert np.allclose(pose[:3, 3], [0.5, 0.25, -0.1], atol=1e-6)  # placed at the 3D cursor
        assert mesh["scale"] == pytest.approx([1, 1, 1], abs=1e-6)
        expected = trimesh.load(path, force="mesh", process=False).vertices
        _assert_same_points(np.load(tmp_path / f"{label}.npy"), np.asarray(expected))
    ids = [m["instance_id"] for m in out["meshes"].values()]
    assert len(set(ids)) == len(ids)
    # glTF is Y-up: shown Z-up (as Blender's importer does) while the local frame stays the file's.
    assert np.allclose(np.array(out["meshes"]["glb"]["pose"])[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    for obj, got in zip(truth, out["true_poses"]):
        assert np.abs(np.array(got["pose"]) - np.array(obj["pose"])).max() <= 1e-6, obj["name"]
        assert got["scale"] == pytest.approx([1, 1, 1], abs=1e-6)
    by_category = {}
    for obj, got in zip(truth, out["true_poses"]):  # one id per category, distinct across categories
        by_category.setdefault(obj["category"], set()).add(got["category_id"])
    assert all(len(ids) == 1 for ids in by_category.values())
    assert len({next(iter(ids)) for ids in by_category.values()}) == len(by_category)
    for label, case in out["bad"].items():
        assert case["result"] == ["CANCELLED"], (label, case)
        assert case["unchanged"] and case["active"], (label, case)
        assert Path(bad[label]).name in case["error"], (label, case)
