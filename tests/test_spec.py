"""Label spec v1: strict validation, one clear error per problem, relative paths, world_from_data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.spec import load_spec, write_spec


def rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return m


@pytest.fixture()
def spec_dir(tmp_path: Path) -> Path:
    """A folder with a 3-frame transforms.json, a cube mesh and a valid spec (relative paths)."""
    (tmp_path / "images").mkdir()
    frames = []
    for i in range(3):
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "images" / f"{i:06d}.png")
        c2w = np.eye(4)
        c2w[:3, 3] = [0.1 * i, 0.0, 1.0]
        frames.append({"file_path": f"images/{i:06d}.png", "transform_matrix": c2w.tolist()})
    (tmp_path / "data").mkdir()
    for f in frames:
        f["file_path"] = "../" + f["file_path"]
    (tmp_path / "data" / "transforms.json").write_text(json.dumps(
        {"w": 64, "h": 48, "fl_x": 60.0, "fl_y": 60.0, "cx": 32.0, "cy": 24.0, "frames": frames}))
    (tmp_path / "meshes").mkdir()
    trimesh.creation.box([0.2, 0.2, 0.2]).export(tmp_path / "meshes" / "cube.ply")
    pose = rot_z(30)
    pose[:3, 3] = [0.01, 0.02, 0.03]
    spec = {"neurallabel_spec": 1, "data": "data/transforms.json", "units_to_mm": 1000.0, "frames": None,
            "objects": [
                {"name": "cube-1", "category": "cube", "category_id": 1, "instance_id": 1, "kind": "mesh",
                 "mesh": "meshes/cube.ply", "pose": pose.tolist(), "transparent": False},
                {"name": "mug-2", "category": "mug", "category_id": 2, "instance_id": 2, "kind": "box",
                 "pose": np.eye(4).tolist(), "size": [0.1, 0.1, 0.12]}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path


def write(spec_dir: Path, mutate) -> Path:
    spec = json.loads((spec_dir / "spec.json").read_text())
    mutate(spec)
    path = spec_dir / "bad.json"
    path.write_text(json.dumps(spec))
    return path


def test_valid_spec_resolves_relative_paths(spec_dir: Path, tmp_path_factory) -> None:
    spec = load_spec(spec_dir / "spec.json")
    assert spec.data_path.resolve() == (spec_dir / "data" / "transforms.json").resolve()
    cube, mug = spec.objects
    assert cube.mesh_path.resolve() == (spec_dir / "meshes" / "cube.ply").resolve()
    assert len(cube.mesh.faces) == 12
    assert mug.kind == "box" and np.allclose(mug.size, [0.1, 0.1, 0.12])
    assert spec.field_path is None and spec.frames is None
    assert spec.categories() == {1: "cube", 2: "mug"}
    # Written elsewhere, paths stay right and the fingerprint (contents, not paths) is unchanged.
    other = tmp_path_factory.mktemp("elsewhere") / "copy.json"
    write_spec(spec, other)
    again = load_spec(other)
    assert again.objects[0].mesh_path.resolve() == cube.mesh_path.resolve()
    assert again.fingerprint() == spec.fingerprint()


def test_world_from_data_similarity_maps_cameras(spec_dir: Path) -> None:
    w = rot_z(90) * 2.0  # rotation + uniform scale 2, then a shift
    w[3, 3] = 1.0
    w[:3, 3] = [1.0, 2.0, 3.0]
    path = write(spec_dir, lambda s: s.update(world_from_data=w.tolist()))
    spec = load_spec(path)
    assert spec.data_scale == pytest.approx(2.0)
    cam_data = np.eye(4)
    cam_data[:3, 3] = [0.5, 0.0, 1.0]
    cam_world = spec.data_to_world.rigid_pose(cam_data)
    assert np.allclose(cam_world[:3, :3], rot_z(90)[:3, :3])  # rigid: the scale moved only the centre
    assert np.allclose(cam_world[:3, 3], w[:3, :3] @ [0.5, 0.0, 1.0] + w[:3, 3])


CASES = [
    ("unknown top key", lambda s: s.update(colour="red"), "unknown key 'colour'"),
    ("unknown object key", lambda s: s["objects"][0].update(scale=2), "unknown key 'scale'"),
    ("newer version", lambda s: s.update(neurallabel_spec=2), "newer than this NeuralLabel reads"),
    ("not a spec", lambda s: s.pop("neurallabel_spec"), "missing 'neurallabel_spec'"),
    ("missing data", lambda s: s.update(data="nowhere/transforms.json"), "does not exist"),
    ("missing mesh", lambda s: s["objects"][0].update(mesh="meshes/none.ply"), "mesh file"),
    ("scaled pose", lambda s: s["objects"][0].update(pose=(np.diag([1.5, 1.5, 1.5, 1.0])).tolist()),
     "scale or shear"),
    ("sheared pose", lambda s: s["objects"][0].update(pose=[[1, 0.1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                            [0, 0, 0, 1]]), "scale or shear"),
    ("reflection", lambda s: s["objects"][0].update(pose=np.diag([1.0, 1.0, -1.0, 1.0]).tolist()), "reflection"),
    ("bad matrix", lambda s: s["objects"][0].update(pose=[[1, 0, 0], [0, 1, 0]]), "4x4"),
    ("duplicate instance", lambda s: s["objects"][1].update(instance_id=1), "duplicate instance_id 1"),
    ("category id clash", lambda s: s["objects"][1].update(category_id=1), "category_id 1 is named both"),
    ("category name clash", lambda s: s["objects"][1].update(category="cube"), "category 'cube' has two ids"),
    ("bad kind", lambda s: s["objects"][0].update(kind="cloud"), "'kind' must be"),
    ("box without size", lambda s: s["objects"][1].pop("size"), "needs 'size'"),
    ("negative size", lambda s: s["objects"][1].update(size=[0.1, -0.1, 0.1]), "three positive numbers"),
    ("instance 0", lambda s: s["objects"][0].update(instance_id=0), "1..65535"),
    ("frame out of range", lambda s: s.update(frames=[0, 3]), "frame index 3 is out of range"),
    ("non-similarity", lambda s: s.update(world_from_data=np.diag([1.0, 2.0, 1.0, 1.0]).tolist()),
     "not a similarity"),
    ("no objects", lambda s: s.update(objects=[]), "non-empty list"),
]


@pytest.mark.parametrize("name,mutate,message", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_gives_one_clear_error(spec_dir: Path, name: str, mutate, message: str) -> None:
    path = write(spec_dir, mutate)
    with pytest.raises(NeuralLabelError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_spec(path)
    assert str(path) in str(info.value)  # the message names the file


def test_mesh_that_does_not_load_or_is_empty(spec_dir: Path) -> None:
    (spec_dir / "meshes" / "garbage.ply").write_bytes(b"ply\nformat nonsense\n\x00\x01")
    path = write(spec_dir, lambda s: s["objects"][0].update(mesh="meshes/garbage.ply"))
    with pytest.raises(NeuralLabelError, match="does not load|empty"):
        load_spec(path)
    (spec_dir / "meshes" / "empty.obj").write_text("# no faces\nv 0 0 0\n")
    path = write(spec_dir, lambda s: s["objects"][0].update(mesh="meshes/empty.obj"))
    with pytest.raises(NeuralLabelError, match="empty"):
        load_spec(path)


def test_pose_within_float_tolerance_is_accepted(spec_dir: Path) -> None:
    pose = rot_z(33).astype(np.float32).astype(np.float64)  # what a float32 round trip gives
    path = write(spec_dir, lambda s: s["objects"][0].update(pose=pose.tolist()))
    assert np.allclose(load_spec(path).objects[0].pose, pose)


def test_not_json_and_not_an_object(spec_dir: Path) -> None:
    (spec_dir / "broken.json").write_text("{ nope")
    with pytest.raises(NeuralLabelError, match="not valid JSON"):
        load_spec(spec_dir / "broken.json")
    mutated = copy.deepcopy(json.loads((spec_dir / "spec.json").read_text()))
    mutated["objects"][0] = "cube"
    (spec_dir / "broken.json").write_text(json.dumps(mutated))
    with pytest.raises(NeuralLabelError, match=r"objects\[0\] must be a JSON object"):
        load_spec(spec_dir / "broken.json")


def test_write_spec_is_atomic(spec_dir: Path) -> None:
    """A reader holding the old spec keeps reading the whole old file: the new one is renamed over it."""
    spec = load_spec(spec_dir / "spec.json")
    target = spec_dir / "out.json"
    target.write_text("old")
    with open(target) as reader:
        write_spec(spec, target)
        assert reader.read() == "old"
    assert load_spec(target).fingerprint() == spec.fingerprint()
    assert [p.name for p in spec_dir.iterdir() if p.name.startswith(".out.json")] == []  # no temp file left


def test_spec_poses_use_the_shared_tolerance(spec_dir: Path) -> None:
    """One rigidity tolerance everywhere (core.geometry.transforms): a float32 Blender pose that is off by
    1e-5 passes, as it does for cameras and for world_from_data."""
    pose = rot_z(10)
    pose[:3, :3] *= 1 + 1e-5
    path = write(spec_dir, lambda s: s["objects"][0].update(pose=pose.tolist()))
    assert np.allclose(load_spec(path).objects[0].pose, pose)


def test_fingerprint_with_file_digests_read_once_is_the_same(spec_dir: Path) -> None:
    """``file_digests`` reads each input file once; the fingerprint made from them is the fingerprint, and a
    changed file changes both."""
    from neurallabel.core.spec import load_spec

    spec = load_spec(spec_dir / "spec.json")
    digests = spec.file_digests()
    mesh = spec_dir / "meshes" / "cube.ply"
    assert set(digests) == {str(spec_dir / "data" / "transforms.json"), str(mesh)}
    assert spec.fingerprint(digests) == spec.fingerprint()
    mesh.write_bytes(mesh.read_bytes() + b"\n")
    assert spec.fingerprint() != spec.fingerprint(digests)
    assert spec.fingerprint(spec.file_digests()) == spec.fingerprint()
