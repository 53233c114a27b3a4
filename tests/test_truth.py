"""core.truth: reading a generated scene's ground truth, and clear errors on bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.data.truth import load_scene_truth


def test_load_small_scene(small_scene):
    truth = load_scene_truth(small_scene)
    assert truth.path == small_scene and truth.units == "m"
    assert [o.instance_id for o in truth.objects] == [1, 2, 3, 4, 5]
    assert not any(o.transparent for o in truth.objects)
    for obj in truth.objects:
        assert obj.mesh_path.is_file()
        assert obj.object_to_world.shape == (4, 4) and obj.box_size.shape == (3,)
        corners = obj.box_corners()
        assert corners.shape == (8, 3)
        # The mesh lies within its box corners' bounds.
        vertices = obj.world_vertices()
        assert np.all(vertices.min(0) >= corners.min(0) - 1e-6) and np.all(vertices.max(0) <= corners.max(0) + 1e-6)
    assert truth.object(3).instance_id == 3
    depth = truth.z_depth(0)
    ids = truth.instance_ids(0)
    assert depth.dtype == np.float32 and depth.shape == (120, 160)
    assert ids.dtype == np.uint16 and ids.shape == (120, 160)
    assert np.isfinite(depth[ids > 0]).all()


def _write(tmp_path, objects_json) -> None:
    (tmp_path / "gt").mkdir(exist_ok=True)
    text = objects_json if isinstance(objects_json, str) else json.dumps(objects_json)
    (tmp_path / "gt" / "objects.json").write_text(text)


GOOD_OBJECT = {"name": "cube_1", "category": "cube", "category_id": 1, "instance_id": 1,
               "mesh": "gt/meshes/cube_1.ply", "pose": np.eye(4).tolist(),
               "box": {"pose": np.eye(4).tolist(), "size": [0.1, 0.1, 0.1]}, "transparent": False}


@pytest.mark.parametrize("content, message", [
    (None, "file does not exist"),
    ("{not json", "not valid JSON"),
    ({"units": "m"}, "'objects' list"),
    ({"objects": [{k: v for k, v in GOOD_OBJECT.items() if k != "pose"}]}, "object 0 lacks pose"),
    ({"objects": [{**GOOD_OBJECT, "pose": [[1, 0], [0, 1]]}]}, "'pose' must be a finite 4x4 matrix"),
    ({"objects": [{**GOOD_OBJECT, "box": {**GOOD_OBJECT["box"], "size": [0.1, -1, 0.1]}}]}, "box size"),
    ({"objects": [GOOD_OBJECT, GOOD_OBJECT]}, "instance ids must be unique"),
])
def test_bad_objects_json(tmp_path, content, message):
    if content is not None:
        _write(tmp_path, content)
    with pytest.raises(NeuralLabelError) as err:
        load_scene_truth(tmp_path)
    assert message in str(err.value)
    assert "objects.json" in str(err.value)


def test_missing_frame_maps(tmp_path):
    _write(tmp_path, {"units": "m", "objects": [GOOD_OBJECT]})
    truth = load_scene_truth(tmp_path)
    with pytest.raises(NeuralLabelError, match="000003.npy"):
        truth.z_depth(3)
    with pytest.raises(NeuralLabelError, match="000003.png"):
        truth.instance_ids(3)
    with pytest.raises(NeuralLabelError, match="no object with instance id 9"):
        truth.object(9)


def test_object_mesh_loads_through_the_shared_loader(tmp_path):
    """A truth mesh with no triangles (or not a file at all) is one clear error, not an empty mesh."""
    _write(tmp_path, {"units": "m", "objects": [{**GOOD_OBJECT, "mesh": "gt/meshes/empty.obj"}]})
    (tmp_path / "gt" / "meshes").mkdir()
    (tmp_path / "gt" / "meshes" / "empty.obj").write_text("# no faces\nv 0 0 0\n")
    obj = load_scene_truth(tmp_path).objects[0]
    with pytest.raises(NeuralLabelError, match=r"object 'cube_1': mesh .*empty.obj: the mesh is empty"):
        obj.load_mesh()
    (tmp_path / "gt" / "meshes" / "empty.obj").unlink()
    (tmp_path / "gt" / "meshes" / "empty.obj").mkdir()
    with pytest.raises(NeuralLabelError, match=r"empty.obj is not a regular file \(a directory\)"):
        obj.world_vertices()
