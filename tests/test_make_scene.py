"""The ground-truth generator: Cycles' passes checked against geometry we compute independently.

- the Z pass is z-depth along the optical axis (not distance along the ray), at the pixel centre;
- instance ids and depth agree with a ray cast (trimesh) of the exported meshes at every pixel centre,
  glass included (its pixels carry its id and its surface depth);
- objects.json poses are rigid, boxes enclose the meshes, objects stand on the floor;
- transforms.json loads through core.dataset with the right split; a seed fixes the scene;
- bad arguments: one line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.geometry.cameras import camera_rays, project_points
from neurallabel.core.data.dataset import load_transforms
from neurallabel.core.data.truth import load_scene_truth

REPO = Path(__file__).resolve().parents[1]
MAKE_SCENE = REPO / "scripts" / "make_scene.py"

pytestmark = pytest.mark.bpy


def run_make_scene(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_SCENE), *args], capture_output=True, text=True, timeout=600)


def ray_cast_truth(truth, frame) -> tuple[np.ndarray, np.ndarray]:
    """Instance id and z-depth at every pixel centre from a ray cast of the objects' exported meshes."""
    import trimesh

    meshes, face_ids = [], []
    for obj in truth.objects:
        mesh = obj.load_mesh().copy()
        mesh.apply_transform(obj.object_to_world)
        meshes.append(mesh)
        face_ids.append(np.full(len(mesh.faces), obj.instance_id, dtype=np.uint16))
    scene_mesh = trimesh.util.concatenate(meshes)
    face_ids = np.concatenate(face_ids)
    intr = frame.intrinsics
    origins, directions, z_per_distance = camera_rays(intr, frame.cam_to_data)
    locations, ray_index, tri_index = scene_mesh.ray.intersects_location(origins, directions, multiple_hits=False)
    ids = np.zeros(len(origins), dtype=np.uint16)
    z_depth = np.full(len(origins), np.inf)
    ids[ray_index] = face_ids[tri_index]
    distance = np.linalg.norm(locations - origins[ray_index], axis=1)
    z_depth[ray_index] = distance * z_per_distance[ray_index]
    return ids.reshape(intr.height, intr.width), z_depth.reshape(intr.height, intr.width)


def test_z_pass_is_z_depth_at_pixel_centres(small_scene):
    """Where the floor (z = 0) is visible, Cycles' depth equals the analytic z-depth of the pixel-centre ray."""
    dataset = load_transforms(small_scene)
    truth = load_scene_truth(small_scene)
    half = truth.extra["background"]["floor_half_size"]
    checked = 0
    for frame in dataset.frames:
        depth = truth.z_depth(frame.index).astype(np.float64).ravel()
        ids = truth.instance_ids(frame.index).ravel()
        origins, directions, z_per_distance = camera_rays(frame.intrinsics, frame.cam_to_data)
        t = -origins[:, 2] / directions[:, 2]  # distance along the ray to the floor plane
        hit = origins + t[:, None] * directions
        floor = (ids == 0) & (t > 0) & (np.abs(hit[:, 0]) < half - 0.01) & (np.abs(hit[:, 1]) < half - 0.01)
        assert floor.sum() > 0.2 * len(ids), "the floor should fill a good part of every view"
        z_analytic = t * z_per_distance
        error = np.abs(depth[floor] - z_analytic[floor])
        # float32 depth: ~1e-7 relative; a sample 0.5 px off the centre would be ~1e-3 m off here.
        assert error.max() < 2e-5 * z_analytic[floor].max() + 1e-6, f"frame {frame.index}: {error.max()}"
        # ... and it is not the distance along the ray, which differs measurably off the axis.
        assert np.median(np.abs(depth[floor] - t[floor])) > 1e-3
        checked += int(floor.sum())
    assert checked > 10000


def test_ids_and_depth_match_ray_cast_of_meshes(labels_scene):
    """Every pixel centre: Cycles' Object Index and Z pass against a ray cast of the exported meshes."""
    dataset = load_transforms(labels_scene)
    truth = load_scene_truth(labels_scene)
    glass = [o for o in truth.objects if o.transparent]
    assert len(glass) == 1 and glass[0].category == "glass"
    glass_pixels = 0
    for frame in dataset.frames[:4]:
        ids = truth.instance_ids(frame.index)
        depth = truth.z_depth(frame.index)
        cast_ids, cast_depth = ray_cast_truth(truth, frame)
        agree = ids == cast_ids
        # Disagreement only where a pixel-centre ray grazes a silhouette (float32 precision in both tracers).
        assert agree.mean() > 0.998, f"frame {frame.index}: {1 - agree.mean():.4%} of ids differ"
        on_object = agree & (ids > 0)
        error = np.abs(depth[on_object] - cast_depth[on_object])
        assert np.percentile(error, 99) < 1e-4 and error.max() < 5e-3, f"frame {frame.index}: {error.max()}"
        glass_mask = ids == glass[0].instance_id
        glass_pixels += int(glass_mask.sum())
        # Glass carries its own id and the depth of its surface, not of what is seen through it.
        np.testing.assert_allclose(depth[glass_mask & agree], cast_depth[glass_mask & agree], atol=1e-4)
    assert glass_pixels > 100


def test_projected_vertices_land_on_their_ids(small_scene):
    """A mesh's visible vertices project onto pixels that carry its id (allowing a 1-pixel edge)."""
    dataset = load_transforms(small_scene)
    truth = load_scene_truth(small_scene)
    frame = dataset.frames[1]
    ids = truth.instance_ids(frame.index)
    depth = truth.z_depth(frame.index)
    h, w = ids.shape
    for obj in truth.objects:
        pixels, z = project_points(frame.intrinsics, frame.cam_to_data, obj.world_vertices())
        cols, rows = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
        inside = (cols >= 1) & (cols < w - 1) & (rows >= 1) & (rows < h - 1) & (z > 0)
        cols, rows, z = cols[inside], rows[inside], z[inside]
        visible = z <= depth[rows, cols] + 2e-3  # not hidden behind something nearer
        if visible.sum() < 5:
            continue
        cols, rows = cols[visible], rows[visible]
        near = np.zeros(len(cols), dtype=bool)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                near |= ids[rows + dr, cols + dc] == obj.instance_id
        assert near.mean() > 0.97, f"{obj.name}: {near.mean():.2%} of visible vertices on its id"


def test_objects_json_poses_boxes_and_meshes(labels_scene):
    truth = load_scene_truth(labels_scene)
    assert truth.units == "m"
    assert len(truth.objects) == 5
    for obj in truth.objects:
        for pose in (obj.object_to_world, obj.box_to_world):
            rotation = pose[:3, :3]
            np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
            assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-6)
            np.testing.assert_allclose(pose[3], [0, 0, 0, 1])
        vertices = obj.world_vertices()
        assert len(obj.load_mesh().faces) > 0
        # The box encloses the mesh (and is tight: the mesh touches every face of it).
        local = (vertices - obj.box_to_world[:3, 3]) @ obj.box_to_world[:3, :3]
        np.testing.assert_allclose(np.abs(local).max(axis=0), obj.box_size / 2, atol=1e-5)
        # Objects stand on the floor, are 4-16 cm in size, and lie on the table.
        assert vertices[:, 2].min() == pytest.approx(0.0, abs=1e-5)
        assert 0.02 <= obj.box_size.max() <= 0.16
        assert np.abs(vertices[:, :2]).max() < 0.5
    names = [o.name for o in truth.objects]
    assert len(set(names)) == len(names)
    if (REPO.parent / "shared" / "data" / "meshes" / "bunny.obj").is_file():
        assert {"bunny", "armadillo"} <= {o.category for o in truth.objects}


def test_transforms_json_loads_with_split(small_scene):
    dataset = load_transforms(small_scene, strict=True)
    assert len(dataset.frames) == 12
    assert [f.split for f in dataset.frames] == ["test" if i % 8 == 0 else "train" for i in range(12)]
    intr = dataset.frames[0].intrinsics
    assert (intr.width, intr.height, intr.model) == (160, 120, "PINHOLE")
    assert (intr.cx, intr.cy) == (80.0, 60.0)
    assert intr.fx == pytest.approx(80.0 / math.tan(math.radians(55.0) / 2))
    for frame in dataset.frames:
        assert frame.image_path.is_file()
        rotation = frame.cam_to_data[:3, :3]
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
        # The camera looks at the table centre: the optical axis (-z) passes near the origin.
        eye, forward = frame.cam_to_data[:3, 3], -rotation[:, 2]
        closest = eye + forward * np.dot(-eye, forward)
        assert np.linalg.norm(closest) < 0.1
    truth = load_scene_truth(small_scene)
    ids = truth.instance_ids(0)
    assert ids.dtype == np.uint16 and ids.shape == (120, 160)
    assert set(np.unique(ids)) <= {0} | {o.instance_id for o in truth.objects}
    assert len(np.unique(ids)) >= 3


def test_same_seed_same_scene(tmp_path):
    args = ["--views", "3", "--width", "48", "--height", "36", "--objects", "4", "--glass", "--samples", "2"]
    outs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        result = run_make_scene("--out", str(tmp_path / name), "--seed", seed, *args)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["event"] == "result"
        outs.append(tmp_path / name)
    a, b, c = outs
    for rel in ("transforms.json", "gt/objects.json"):
        assert (a / rel).read_text() == (b / rel).read_text()
    assert (a / "gt/objects.json").read_text() != (c / "gt/objects.json").read_text()
    ta, tb = load_scene_truth(a), load_scene_truth(b)
    for i in range(3):
        np.testing.assert_array_equal(ta.z_depth(i), tb.z_depth(i))
        np.testing.assert_array_equal(ta.instance_ids(i), tb.instance_ids(i))
    for obj in ta.objects:
        assert obj.mesh_path.read_bytes() == (b / "gt" / "meshes" / obj.mesh_path.name).read_bytes()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no staging folder is left behind"


@pytest.mark.parametrize("args, message", [
    (["--objects", "9"], "--objects must be 4..7"),
    (["--views", "0"], "--views must be at least 1"),
    (["--meshes", "/nonexistent/meshes"], "/nonexistent/meshes: folder does not exist"),
    (["--views", "many"], "invalid int value"),
])
def test_bad_arguments_exit_2(tmp_path, args, message):
    out = tmp_path / "scene"
    result = run_make_scene("--out", str(out), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_make_scene("--out", str(out), "--views", "1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "already exists" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_arguments_after_double_dash_as_under_blender(tmp_path):
    """Under `blender -b -P make_scene.py -- ARGS` only ARGS are ours; Blender's own come before `--`."""
    out = tmp_path / "scene"
    result = subprocess.run([sys.executable, str(MAKE_SCENE), "-b", "--", "--out", str(out), "--objects", "3"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--objects must be 4..7" in result.stderr
    assert not out.exists()


def test_terminated_run_leaves_nothing(tmp_path):
    """SIGTERM in the middle of rendering: no output folder and no staging folder remain."""
    import signal

    out = tmp_path / "scene"
    proc = subprocess.Popen([sys.executable, str(MAKE_SCENE), "--out", str(out), "--views", "30", "--width", "64",
                             "--height", "48", "--samples", "4"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        for line in proc.stdout:
            if line.startswith('{"event": "progress"'):
                break
        assert any(p.name.startswith(".scene.partial-") for p in tmp_path.iterdir())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_a_scene(tmp_path):
    out = tmp_path / "not_a_scene"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    result = run_make_scene("--out", str(out), "--views", "1", "--overwrite")
    assert result.returncode == 2 and "is not a generated scene" in result.stderr
    assert (out / "thesis.tex").read_text() == "years of work"


# --- options: transforms.json forms, bounds key, layout, clutter ----------------------------------------


def load_make_scene_module():
    """scripts/make_scene.py as a module (it imports bpy only when rendering)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_scene_under_test", MAKE_SCENE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def transforms_for(*args: str) -> dict:
    make_scene = load_make_scene_module()
    parsed = make_scene.build_parser().parse_args(["--out", "unused", "--views", "9", *args])
    poses = [np.eye(4) for _ in range(parsed.views)]
    return make_scene.transforms_json(parsed, 100.0, poses)


def test_instant_ngp_form_has_no_bounds_key_and_aabb_scale_only_when_asked():
    default = transforms_for()
    assert "scene_aabb" not in default and "aabb_scale" not in default
    assert default["camera_angle_x"] == pytest.approx(math.radians(55.0))
    assert [f["split"] for f in default["frames"]] == ["test"] + ["train"] * 7 + ["test"]
    for scale in (1, 4, 16):
        assert transforms_for("--aabb-scale", str(scale))["aabb_scale"] == scale


def test_nerfstudio_form_keys_and_split_lists():
    data = transforms_for("--format", "nerfstudio", "--test-every", "4")
    assert {"fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model"} <= set(data)
    assert not {"applied_transform", "camera_angle_x", "aabb_scale", "scene_aabb"} & set(data)
    assert all(set(f) == {"file_path", "transform_matrix"} for f in data["frames"])
    files = [f["file_path"] for f in data["frames"]]
    assert data["test_filenames"] == data["val_filenames"] == [files[0], files[4], files[8]]
    assert data["train_filenames"] == [f for i, f in enumerate(files) if i % 4]


@pytest.mark.parametrize("args, message", [
    (["--clutter", "5"], "--clutter must be 0..4"),
    (["--aabb-scale", "3"], "--aabb-scale must be a power of two, 1..128"),
    (["--aabb-scale", "256"], "--aabb-scale must be a power of two, 1..128"),
    (["--aabb-scale", "4", "--format", "nerfstudio"], "--aabb-scale is instant-ngp's key"),
    (["--layout", "garden"], "invalid choice"),
])
def test_bad_option_values_exit_2(tmp_path, args, message):
    result = run_make_scene("--out", str(tmp_path / "scene"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_default_scene_has_no_bounds_key_and_annotated_objects(small_scene):
    data = json.loads((small_scene / "transforms.json").read_text())
    assert "scene_aabb" not in data and "aabb_scale" not in data
    truth = json.loads((small_scene / "gt" / "objects.json").read_text())
    assert truth["background"]["layout"] == "room"
    assert all(o["annotated"] is True for o in truth["objects"])


def test_tabletop_scene_in_nerfstudio_form_loads_with_its_split(clutter_scene):
    dataset = load_transforms(clutter_scene, strict=True)
    assert [f.split for f in dataset.frames] == ["test" if i % 4 == 0 else "train" for i in range(8)]
    data = json.loads((clutter_scene / "transforms.json").read_text())
    assert all("split" not in f for f in data["frames"]) and "scene_aabb" not in data
    truth = load_scene_truth(clutter_scene)
    table = truth.extra["background"]["table"]
    assert truth.extra["background"]["layout"] == "tabletop" and table["top_z"] == pytest.approx(0.75)
    for obj in truth.objects:  # everything stands on the table top, within it
        vertices = obj.world_vertices()
        assert vertices[:, 2].min() == pytest.approx(0.75, abs=1e-5)
        assert np.all(np.abs(vertices[:, 0]) < 0.6) and np.all(np.abs(vertices[:, 1]) < 0.4)
    for frame in dataset.frames:
        # Cameras orbit the table top, looking at its centre.
        eye, forward = frame.cam_to_data[:3, 3], -frame.cam_to_data[:3, 2]
        closest = eye + forward * np.dot(np.array([0.0, 0.0, 0.79]) - eye, forward)
        assert np.linalg.norm(closest - [0.0, 0.0, 0.79]) < 0.1 and eye[2] > 0.8
    # The distant walls (2.5 m from the centre) show in the photos: far background pixels with depth.
    far = [np.count_nonzero(np.isfinite(truth.z_depth(f.index)) & (truth.z_depth(f.index) > 1.8))
           for f in dataset.frames]
    assert sum(n > 500 for n in far) >= 2, far
    ids = truth.instance_ids(0)
    assert np.all(np.isfinite(truth.z_depth(0))) and 0.5 < np.mean(ids == 0) < 0.99


def test_clutter_monkeys_are_unannotated_have_ids_and_occlude(clutter_scene):
    from neurallabel.core.spec import spec_from_scene

    records = json.loads((clutter_scene / "gt" / "objects.json").read_text())["objects"]
    monkeys = [r for r in records if r["category"] == "monkey"]
    assert len(monkeys) == 2 and all(r["annotated"] is False for r in monkeys)
    assert all(r["annotated"] is True for r in records if r["category"] != "monkey")
    truth = load_scene_truth(clutter_scene)
    dataset = load_transforms(clutter_scene)
    # Cycles gave the monkeys their ids: ids and depth agree with a ray cast of all meshes, monkeys included.
    for frame in dataset.frames[:2]:
        cast_ids, cast_depth = ray_cast_truth(truth, frame)
        ids, depth = truth.instance_ids(frame.index), truth.z_depth(frame.index)
        assert np.mean(ids == cast_ids) > 0.995
        on_object = (ids == cast_ids) & (ids > 0)
        assert np.percentile(np.abs(depth[on_object] - cast_depth[on_object]), 99) < 1e-3
    assert all(any(np.any(truth.instance_ids(f.index) == m["instance_id"]) for f in dataset.frames) for m in monkeys)
    # The first monkey stands in front of an annotated object in a test frame and hides most of it there.
    first = next(m for m in monkeys if "in_front_of" in m)
    frame = dataset.frame(first["in_front_in_frame"])
    assert frame.split == "test"
    target = next(o for o in truth.objects if o.name == first["in_front_of"])
    single = type(truth)(truth.path, truth.units, [target])
    alone, _ = ray_cast_truth(single, frame)  # where the target would show with nothing in front of it
    seen = truth.instance_ids(frame.index)[alone == target.instance_id]
    assert np.count_nonzero(seen == first["instance_id"]) > 0.3 * len(seen) > 30
    # A label spec built from the scene leaves the clutter out.
    spec = spec_from_scene(clutter_scene)
    assert [o.name for o in spec.objects] == [r["name"] for r in records if r["annotated"]]


# --- --thin / --metal: the hard variant for correspondences (issue 15) ----------------------------------


def _make_scene_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_scene_under_test", MAKE_SCENE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # bpy is imported only inside the Blender functions
    return module


@pytest.fixture(scope="module")
def thin_scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("thin") / "scene"
    result = run_make_scene("--out", str(out), "--views", "2", "--width", "160", "--height", "120", "--samples", "1",
                            "--objects", "4", "--thin", "--metal", "--seed", "5", "--test-every", "0")
    assert result.returncode == 0, result.stderr
    return out


def test_thin_and_metal_objects_are_in_objects_json_and_the_instance_map(thin_scene):
    records = json.loads((thin_scene / "gt" / "objects.json").read_text())["objects"]
    by_name = {r["name"]: r for r in records}
    assert {"whisk_1", "rod_1", "rod_2"} <= set(by_name)
    assert [by_name[n]["category_id"] for n in ("whisk_1", "rod_1", "rod_2")] == [12, 13, 13]
    assert all(by_name[n]["material"] == "metal" for n in ("whisk_1", "rod_1", "rod_2"))
    # --metal also turns the first primitive metal; the other objects keep their texture (no "material" key)
    metal = [r["name"] for r in records if r.get("material") == "metal"]
    assert metal == [records[0]["name"], "whisk_1", "rod_1", "rod_2"]
    assert [r["instance_id"] for r in records] == list(range(1, len(records) + 1))
    truth = load_scene_truth(thin_scene)
    seen = set()
    for frame in load_transforms(thin_scene).frames:
        seen |= set(np.unique(truth.instance_ids(frame.index)).tolist())
    assert {by_name[n]["instance_id"] for n in ("whisk_1", "rod_1")} <= seen, "wires show in the id pass"
    # the wires are 2-4 mm thick: every rod vertex lies 1-2 mm from the rod's axis (its main direction)
    for rod in (o for o in truth.objects if o.category == "rod"):
        v = np.asarray(rod.load_mesh().vertices, dtype=np.float64)
        v -= v.mean(axis=0)
        axis = np.linalg.svd(v, full_matrices=False)[2][0]
        off_axis = np.linalg.norm(v - np.outer(v @ axis, axis), axis=1)
        assert 0.001 <= off_axis.min() and off_axis.max() <= 0.002 + 1e-6
        assert 0.1 - 1e-6 <= np.ptp(v @ axis) <= 0.16 + 1e-6


def test_wire_tubes_are_closed_and_keep_their_radius():
    """The tube builder (no Blender): every vertex lies ``radius`` from its centre line and every edge joins
    exactly two faces, open rods (capped) and closed loops alike, so the exported mesh is watertight."""
    import trimesh

    module = _make_scene_module()
    size = {"radius": 0.04, "height": 0.12, "loops": 5, "wire": 0.0015}
    for kind, s in (("whisk", size), ("rod", {"length": 0.12, "tilt": 0.5, "wire": 0.0015})):
        paths = module.wire_paths(kind, s)
        verts, faces = module.tube_mesh(paths, s["wire"])
        triangles = [[f[0], f[k], f[k + 1]] for f in faces for k in range(1, len(f) - 1)]
        mesh = trimesh.Trimesh(verts, triangles, process=False)
        assert mesh.is_watertight
        start = 0
        for points, _, _ in paths:
            ring = verts[start:start + len(points) * module.TUBE_SIDES].reshape(len(points), -1, 3)
            np.testing.assert_allclose(np.linalg.norm(ring - points[:, None, :], axis=2), s["wire"], rtol=1e-9)
            start += ring.size // 3
    assert len(module.wire_paths("whisk", size)) == 5 + 2  # meridian loops and two rings


def test_target_views_are_a_scene_of_their_own_in_the_band_and_leave_the_scene_unchanged(tmp_path):
    """--target-views renders a target camera set (Neural-Sim's target distribution) into DIR/target/ with its
    truth, from a random stream of its own: the scene's files are those of the same seed without targets; the
    targets orbit the table centre inside the band, load as a labelled target set and as poses to fit."""
    from neurallabel.core.synth.poses import spherical
    from neurallabel.core.synth.tasks import load_target

    args = ["--views", "2", "--width", "48", "--height", "36", "--objects", "4", "--samples", "1", "--seed", "4",
            "--layout", "tabletop"]
    band = ["--target-views", "5", "--target-azimuth=-170:-100", "--target-elevation", "20:30",
            "--target-distance", "0.5:0.6"]
    with_targets, plain = tmp_path / "with", tmp_path / "plain"
    for out, extra in ((with_targets, band), (plain, [])):
        result = run_make_scene("--out", str(out), *args, *extra)
        assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["target_views"] == 0
    for rel in ("transforms.json", "gt/objects.json"):
        assert (with_targets / rel).read_text() == (plain / rel).read_text()
    truth, plain_truth = load_scene_truth(with_targets), load_scene_truth(plain)
    for i in range(2):
        np.testing.assert_array_equal(truth.instance_ids(i), plain_truth.instance_ids(i))
    assert not (plain / "target").exists()

    target = with_targets / "target"
    data = load_transforms(target / "transforms.json")
    assert len(data.frames) == 5 and len(data.split("test")) == 5 and not data.split("train")
    assert data.frames[0].intrinsics.width == 48
    centre = np.array([0.0, 0.0, 0.79])  # the tabletop's look-at point: table top + TARGET's height
    coords = spherical(centre, np.array([f.cam_to_data[:3, 3] for f in data.frames]))
    assert np.all((coords[:, 0] >= -170 - 1e-6) & (coords[:, 0] <= -100 + 1e-6))
    assert np.all((coords[:, 1] >= 20 - 1e-6) & (coords[:, 1] <= 30 + 1e-6))
    assert np.all((coords[:, 2] >= 0.5 - 1e-6) & (coords[:, 2] <= 0.6 + 1e-6))
    for frame in data.frames:  # each looks at the centre: it projects to the image centre
        uv, _ = project_points(frame.intrinsics, frame.cam_to_data, centre[None])
        np.testing.assert_allclose(uv[0], [24.0, 18.0], atol=1e-6)
    target_truth = load_scene_truth(target)
    assert [o.mesh_path.resolve() for o in target_truth.objects] == [o.mesh_path.resolve() for o in truth.objects]
    seen = set()
    for i in range(5):
        ids = target_truth.instance_ids(i)
        assert ids.shape == (36, 48) and np.isfinite(target_truth.z_depth(i)).any()
        seen |= set(np.unique(ids).tolist())
    assert seen - {0} and seen <= {0} | {o.instance_id for o in truth.objects}
    categories = tuple(sorted({o.category_id for o in truth.objects}))
    task = load_target(target, categories)
    assert len(task) == 5 and task.classes.max() > 0


@pytest.mark.parametrize("args, message", [
    (["--target-views", "-1"], "--target-views must be >= 0"),
    (["--target-views", "2", "--target-distance", "0.9:0.5"], "--target-distance '0.9:0.5': expected"),
    (["--target-views", "2", "--target-azimuth", "west"], "--target-azimuth 'west': expected LOW:HIGH"),
])
def test_bad_target_bands_exit_2(tmp_path, args, message):
    result = run_make_scene("--out", str(tmp_path / "scene"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []
