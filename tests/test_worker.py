"""The worker process and its client: the JSON-lines protocol, clear errors (missing torch, bad jobs, a missing
Python), a job's ``sys_path`` cannot plant code, COLMAP datasets work in every job, and cancelling a bake
(SIGTERM) leaves only whole frames, identical to those of an uncancelled bake."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from neurallabel.addon.worker_client import WORKER_SCRIPT, WorkerJob, run_job_sync
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.data.truth import load_scene_truth


def write_truth_spec(scene_dir: Path, path: Path, field: Path | None = None) -> Path:
    """A label spec of the generated scene's meshes at their true poses (no field: mesh-only labels)."""
    truth = load_scene_truth(scene_dir)
    spec = {"neurallabel_spec": 1, "data": str(truth.transforms_path), "field": field and str(field), "objects": [
        {"name": o.name, "category": o.category, "category_id": o.category_id, "instance_id": o.instance_id,
         "kind": "mesh", "mesh": str(o.mesh_path), "pose": o.object_to_world.tolist(), "transparent": False}
        for o in truth.objects]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def slow_truth_spec(scene_dir: Path, tmp_path: Path) -> Path:
    """The truth spec plus a field over all the objects (a voxelised-truth field), so every frame renders the
    field's depth. Cancel tests add the ``slow_frames`` fixture so that a cancel lands mid-bake."""
    import numpy as np

    from test_icp import write_voxel_field

    placed = [o.load_mesh().copy().apply_transform(o.object_to_world) for o in load_scene_truth(scene_dir).objects]
    roi = np.array([np.min([m.bounds[0] for m in placed], axis=0) - 0.04,
                    np.max([m.bounds[1] for m in placed], axis=0) + 0.04])
    roi[0, 2] = -0.02
    write_voxel_field(tmp_path / "field.pt", placed, roi, resolution=48, steps_per_roi=384)
    return write_truth_spec(scene_dir, tmp_path / "slow" / "spec.json", tmp_path / "field.pt")


def run_worker(job: dict, tmp_path: Path, env=None) -> tuple[int, list[dict], str]:
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(WORKER_SCRIPT), str(job_path)], capture_output=True, text=True,
                          timeout=120, env=env)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()], proc.stderr


def test_the_worker_script_runs_the_package_as_neurallabel_whatever_its_folder_is_called(tmp_path):
    # Run by path, the worker loads the extension folder as a package. Named after the folder (a clone in
    # "main"), the numba caches its kernels wrote next to their source named a module that every `neurallabel`
    # command then failed to import ("No module named 'main'").
    code, events, err = run_worker({"kind": "check", "device": "cpu"}, tmp_path)
    assert code == 0, err
    result = events[-1]
    repo = Path(__file__).resolve().parents[1]
    assert result["event"] == "result" and result["package"] == f"neurallabel ({repo})", (result, repo.name)


def test_bad_jobs_give_one_error_event_naming_the_field(tmp_path):
    code, events, _ = run_worker({"kind": "paint"}, tmp_path)
    assert code == 2 and events == [{"event": "error", "message": events[0]["message"], "field": "kind"}]
    assert "unknown job kind 'paint'" in events[0]["message"]
    code, events, _ = run_worker({"kind": "bake", "spec": str(tmp_path / "nope.json"), "out": str(tmp_path)},
                                 tmp_path)
    assert code == 2 and "nope.json" in events[-1]["message"] and "does not exist" in events[-1]["message"]
    assert events[-1]["field"] == "spec"
    code, events, _ = run_worker({"kind": "bake", "spec": "s.json", "out": str(tmp_path), "device": "gpu"},
                                 tmp_path)
    assert code == 2 and events[-1]["field"] == "device" and "'gpu'" in events[-1]["message"]
    code, events, _ = run_worker({"kind": "bake", "spec": "s.json", "out": str(tmp_path), "frmes": "0:1"},
                                 tmp_path)
    assert code == 2 and events[-1]["field"] == "frmes" and "unknown key 'frmes'" in events[-1]["message"]


def test_bake_job_protocol(small_scene, tmp_path):
    spec = write_truth_spec(small_scene, tmp_path / "spec.json")
    code, events, stderr = run_worker({"kind": "bake", "spec": str(spec), "out": str(tmp_path / "out"),
                                       "formats": ["raw"], "frames": "0:3"}, tmp_path)
    assert code == 0, stderr
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 3
    assert set(progress[-1]) == {"event", "done", "total", "stage", "eta_s"}
    assert events[-1]["event"] == "result" and events[-1]["summary"]["frames"] == 3
    assert sorted(p.name for p in (tmp_path / "out" / "raw" / "instance").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]


def test_missing_torch_is_named_with_the_fix(tmp_path):
    # A worker Python without torch: a `torch` that cannot be imported, first on its PYTHONPATH.
    fake = tmp_path / "no_torch"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    field = tmp_path / "field.ckpt"
    field.write_bytes(b"x")
    job = {"kind": "surface_points", "data": str(tmp_path), "field": str(field), "box": None,
           "out": str(tmp_path / "cloud.npy")}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(fake), os.environ.get("PYTHONPATH")) if p)}
    worker = WorkerJob(job, env=env).start()
    worker.wait(120)
    assert worker.returncode == 3
    message = worker.failure_message()
    assert "cannot import 'torch'" in message and "install NeuralLabel's dependencies" in message


def plant_module(folder: Path, marker: Path) -> Path:
    """A folder holding a `trimesh` package that, when imported, leaves ``marker`` behind."""
    (folder / "trimesh").mkdir(parents=True)
    (folder / "trimesh" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


def test_sys_path_cannot_plant_code(tmp_path):
    """A job's sys_path takes only the add-on's own folders, and last: a planted `trimesh` never runs."""
    marker = tmp_path / "planted_code_ran"
    # A snap job imports trimesh first thing (to read the mesh, which here does not exist).
    snap = {"kind": "snap", "data": str(tmp_path), "depth_dir": str(tmp_path), "mesh": str(tmp_path / "no.ply"),
            "pose": np.eye(4).tolist()}
    elsewhere = plant_module(tmp_path / "downloads", marker)
    code, events, _ = run_worker({**snap, "sys_path": [str(elsewhere)]}, tmp_path)
    assert code == 2 and events[-1]["field"] == "sys_path" and str(elsewhere) in events[-1]["message"]
    assert not marker.exists()
    code, events, _ = run_worker({**snap, "sys_path": ["relative/site-packages"]}, tmp_path)
    assert code == 2 and events[-1]["field"] == "sys_path"
    # A dependencies folder is accepted but cannot shadow a package this Python already has.
    site = plant_module(tmp_path / "neurallabel" / "site-packages", marker)
    code, events, _ = run_worker({**snap, "sys_path": [str(site)]}, tmp_path)
    assert code == 2 and events[-1]["field"] == "mesh" and "no.ply" in events[-1]["message"]
    assert not marker.exists()


def test_missing_python_is_reported(tmp_path):
    with pytest.raises(NeuralLabelError, match="does not exist"):
        WorkerJob({"kind": "bake"}, python=str(tmp_path / "bin" / "python")).start()


def test_python_without_numpy_is_reported(tmp_path):
    bare = Path("/usr/bin/python3")
    if not bare.is_file() or subprocess.run([str(bare), "-c", "import numpy"], capture_output=True).returncode == 0:
        pytest.skip("no system Python without numpy here")
    with pytest.raises(NeuralLabelError, match="cannot import 'numpy'"):
        run_job_sync({"kind": "bake", "spec": "x", "out": str(tmp_path)}, python=str(bare))


FRAME_FILE = re.compile(r"^(\d{6})")


def frame_files(out: Path) -> dict[int, set[str]]:
    """Per frame index, the files of that frame (everything whose name starts with the 6-digit frame id)."""
    files: dict[int, set[str]] = {}
    for path in out.rglob("*"):
        if path.is_file() and "models" not in path.parts:
            match = FRAME_FILE.match(path.name)
            if match:
                files.setdefault(int(match.group(1)), set()).add(str(path.relative_to(out)))
    return files


def test_cancel_leaves_only_whole_frames(small_scene, tmp_path, slow_frames):
    spec = slow_truth_spec(small_scene, tmp_path)
    job = {"kind": "bake", "spec": str(spec), "formats": ["raw"], "frames": "0:6"}
    reference = tmp_path / "reference"
    run_job_sync({**job, "out": str(reference)})
    expected = frame_files(reference)
    assert len(expected) == 6

    out = tmp_path / "cancelled"
    worker = WorkerJob({**job, "out": str(out)}).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # cancel as soon as the first frame is done (what Esc does)
        worker.poll()
        if worker.last_progress and worker.last_progress["stage"] == "bake" and worker.last_progress["done"] >= 1:
            break
        time.sleep(0.005)
    worker.cancel()
    assert worker.cancelled and worker.returncode == 130, worker.failure_message()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]
    got = frame_files(out)
    assert 1 <= len(got) < 6  # it stopped early ...
    for index, files in got.items():  # ... and every frame that is there is whole
        assert files == expected[index], index

    for index in got:  # and byte for byte the frames of an uncancelled bake
        for rel in expected[index]:
            assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel


def write_colmap_copy(scene_dir: Path, root: Path) -> Path:
    """The generated scene as a COLMAP text model (``root/sparse/0``, images linked at ``root/images``): what
    importing a COLMAP project in Blender gives the jobs."""
    from neurallabel.core.data.dataset import load_transforms

    dataset = load_transforms(scene_dir)
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (root / "images").symlink_to((scene_dir / "images").resolve())
    k = dataset.frames[0].intrinsics
    (model / "cameras.txt").write_text(f"1 PINHOLE {k.width} {k.height} {k.fx} {k.fy} {k.cx} {k.cy}\n")
    lines = []
    for i, frame in enumerate(dataset.frames):  # COLMAP: world-to-camera, OpenCV axes, quaternion w x y z
        cam_from_world = np.linalg.inv(frame.cam_to_data @ np.diag([1.0, -1.0, -1.0, 1.0]))
        x, y, z, w = Rotation.from_matrix(cam_from_world[:3, :3]).as_quat()
        t = cam_from_world[:3, 3]
        lines += [f"{i + 1} {w!r} {x!r} {y!r} {z!r} {t[0]!r} {t[1]!r} {t[2]!r} 1 {frame.image_path.name}", ""]
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    (model / "points3D.txt").write_text("")
    return root


def test_snap_surface_points_and_preview_read_a_colmap_dataset(small_scene, tmp_path):
    """The jobs Blender runs on an imported scene load it as import and bake do (COLMAP too)."""
    from neurallabel.core.data.dataset import load_dataset

    colmap = write_colmap_copy(small_scene, tmp_path / "colmap")
    dataset = load_dataset(colmap)
    assert dataset.form == "colmap"
    truth = load_scene_truth(small_scene)
    depth_dir = tmp_path / "depth"  # true depth maps, named like the images
    depth_dir.mkdir()
    for frame in dataset.frames:
        np.save(depth_dir / f"{frame.name}.npy", truth.z_depth(frame.index))
    cube = next(o for o in truth.objects if o.name.startswith("cube"))
    placed = cube.load_mesh().copy().apply_transform(cube.object_to_world)

    box = {"pose": np.eye(4).tolist(), "size": (placed.extents + 0.02).tolist()}
    box["pose"][0][3], box["pose"][1][3], box["pose"][2][3] = placed.bounds.mean(axis=0).tolist()
    cloud = run_job_sync({"kind": "surface_points", "data": str(colmap), "depth_dir": str(depth_dir),
                          "box": box, "out": str(tmp_path / "cloud.npy")})
    points = np.load(cloud["points"])
    assert cloud["count"] > 100 and cloud["views"] >= 2
    from scipy.spatial import cKDTree

    surface = placed.sample(20000, seed=0)
    distance, _ = cKDTree(surface).query(points)
    assert np.median(distance) < 0.003  # the cube's own surface (the floor under it is in the box too)

    start = cube.object_to_world.copy()
    start[:3, 3] += [0.004, -0.003, 0.002]
    snap = {"kind": "snap", "depth_dir": str(depth_dir), "mesh": str(cube.mesh_path), "pose": start.tolist()}
    snapped = run_job_sync({**snap, "data": str(colmap)})
    reference = run_job_sync({**snap, "data": str(truth.transforms_path)})  # the same cameras as transforms.json
    assert snapped["scene_points"] > 100 and snapped["iterations"] >= 1
    np.testing.assert_allclose(snapped["pose"], reference["pose"], atol=1e-6)
    assert np.linalg.norm(np.array(snapped["pose"])[:3, 3] - start[:3, 3]) > 0.001  # it moved

    spec = json.loads(write_truth_spec(small_scene, tmp_path / "spec.json").read_text())
    spec["data"] = "colmap"  # relative to the spec file, as Blender's export writes it
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    preview = run_job_sync({"kind": "preview", "spec": str(tmp_path / "spec.json"), "frame": 1,
                            "out": str(tmp_path / "preview"), "device": "cpu"})
    true_ids = sorted(int(i) for i in np.unique(truth.instance_ids(1)) if i > 0)
    assert preview["instance_ids"] == true_ids
    with Image.open(preview["image"]) as image:
        assert image.size == (2 * dataset.frames[1].intrinsics.width, dataset.frames[1].intrinsics.height)


def test_worker_names_skipped_photos_in_a_notice(small_scene, tmp_path):
    data = dataset_with_a_missing_photo(small_scene, tmp_path / "data")
    spec = json.loads(write_truth_spec(small_scene, tmp_path / "spec.json").read_text())
    spec["data"] = str(data)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code, events, stderr = run_worker({"kind": "bake", "spec": str(tmp_path / "spec.json"),
                                       "out": str(tmp_path / "out"), "formats": ["raw"], "frames": "0:1"}, tmp_path)
    assert code == 0, stderr
    notices = [e for e in events if e["event"] == "notice"]
    assert len(notices) == 1 and "skipped 1 of" in notices[0]["message"] and "gone" in notices[0]["message"]
    assert events[-1]["event"] == "result" and events[-1]["summary"]["frames"] == 1


def dataset_with_a_missing_photo(scene_dir: Path, data: Path) -> Path:
    """The scene's transforms.json plus a last frame whose photo is gone (images linked, not copied)."""
    transforms = json.loads((scene_dir / "transforms.json").read_text())
    transforms["frames"].append({**transforms["frames"][-1], "file_path": "images/gone.png"})
    data.mkdir(parents=True)
    (data / "images").symlink_to((scene_dir / "images").resolve())
    (data / "transforms.json").write_text(json.dumps(transforms))
    return data
