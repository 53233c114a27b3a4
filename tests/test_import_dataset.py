"""neurallabel.import_dataset through the installed extension: Blender cameras project like the dataset.

For every imported camera, world points are projected by Blender itself (``world_to_camera_view`` with
the camera's resolution / pixel aspect, and ``calc_matrix_camera``) and compared with the dataset's pinhole
projection ``core.cameras.project_points(..., apply_distortion=False)``: <= 0.01 px. The root empty is
then given a similarity transform: points mapped by it must project to the same pixels.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from bpy_helpers import INSTALL_PRELUDE, build_extension_zip, run_bpy
from neurallabel.core.geometry.cameras import Intrinsics, camera_rays, project_points
from neurallabel.core.data.dataset import load_transforms

pytestmark = pytest.mark.bpy

MAX_PIXEL_ERROR = 0.01

PROJECT_SCRIPT = INSTALL_PRELUDE + '''
from mathutils import Matrix, Vector
from bpy_extras.object_utils import world_to_camera_view
scene_io = ext.addon.scene_io

result = bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"])
scene = bpy.context.scene
root = scene.neurallabel.root
root.matrix_world = Matrix(ARGS["root_matrix"])
bpy.context.view_layer.update()
cameras = scene_io.dataset_cameras(root)
out = {"result": sorted(result), "cameras": {}, "root_name": root.name, "scene_camera": scene.camera.name,
       "render": [scene.render.resolution_x, scene.render.resolution_y]}
for cam in cameras:
    frame = int(cam[scene_io.PROP_FRAME])
    settings = scene_io.camera_settings_of(cam)
    # Scrubbing to the frame looks through its camera (timeline marker) at its resolution (handler).
    scene.frame_set(frame)
    synced = [scene.camera == cam, scene.render.resolution_x == settings.resolution_x,
              scene.render.resolution_y == settings.resolution_y,
              abs(scene.render.pixel_aspect_x - settings.pixel_aspect_x) < 1e-6,
              abs(scene.render.pixel_aspect_y - settings.pixel_aspect_y) < 1e-6]
    scene_io.apply_render_settings(scene, settings)  # one resolution per scene: use this camera's
    depsgraph = bpy.context.evaluated_depsgraph_get()
    w, h = settings.resolution_x, settings.resolution_y
    projection = cam.calc_matrix_camera(depsgraph, x=w, y=h, scale_x=settings.pixel_aspect_x,
                                        scale_y=settings.pixel_aspect_y)
    view = cam.matrix_world.inverted()
    via_view, via_matrix = [], []
    for p in ARGS["points"][str(frame)]:
        world = root.matrix_world @ Vector(p)  # the point in the dataset frame, moved with the root
        ndc = world_to_camera_view(scene, cam, world)
        via_view.append([ndc.x * w, (1.0 - ndc.y) * h])
        clip = projection @ view @ world.to_4d()
        via_matrix.append([(clip.x / clip.w + 1.0) * 0.5 * w, (1.0 - clip.y / clip.w) * 0.5 * h])
    out["cameras"][str(frame)] = {
        "name": cam.name, "parent": cam.parent.name, "image": cam[scene_io.PROP_IMAGE],
        "model": cam[scene_io.PROP_MODEL], "distortion": list(cam[scene_io.PROP_DISTORTION]),
        "background": cam.data.background_images[0].image.filepath if cam.data.background_images else None,
        "show_background": cam.data.show_background_images,
        "via_view": via_view, "via_matrix": via_matrix, "synced": synced}
emit(out)
'''


def _similarity() -> np.ndarray:
    """A rotation about a tilted axis, a translation and a uniform scale (what an artist sets on the root)."""
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    angle = 0.7
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    m = np.eye(4)
    m[:3, :3] = 1.7 * rotation
    m[:3, 3] = [0.4, -1.2, 0.25]
    return m


def _points_for(frame, rng: np.random.Generator, depth_scale: float) -> np.ndarray:
    """World points (dataset frame) seen by ``frame``: through the image corners, edges and random pixels."""
    intr: Intrinsics = frame.intrinsics
    pinhole = Intrinsics(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy)
    w, h = intr.width, intr.height
    pixels = np.array([[0, 0], [w, 0], [0, h], [w, h], [w / 2, h / 2], [intr.cx, intr.cy], [0.5, h - 0.5]]
                      + list(rng.uniform([0, 0], [w, h], size=(13, 2))))
    origins, directions, z_per_distance = camera_rays(pinhole, frame.cam_to_data, pixels)
    z_depth = depth_scale * rng.uniform(0.5, 2.0, size=len(pixels))
    return origins + directions * (z_depth / z_per_distance)[:, None]


def _check_projection(data: Path, tmp_path: Path, depth_scale: float) -> dict:
    dataset = load_transforms(data)
    rng = np.random.default_rng(0)
    points = {str(f.index): _points_for(f, rng, depth_scale) for f in dataset.frames}
    zip_path = build_extension_zip(tmp_path / "dist")
    root_matrix = _similarity()
    out = run_bpy(PROJECT_SCRIPT, {"zip": str(zip_path), "data": str(data), "root_matrix": root_matrix.tolist(),
                                   "points": {k: v.tolist() for k, v in points.items()}}, tmp_path)
    assert out["result"] == ["FINISHED"]
    assert out["root_name"] == "NeuralLabel Scene"
    assert len(out["cameras"]) == len(dataset.frames)
    first = dataset.frames[0].intrinsics
    assert out["render"] == [first.width, first.height]
    worst = 0.0
    for frame in dataset.frames:
        cam = out["cameras"][str(frame.index)]
        assert cam["parent"] == "NeuralLabel Scene"
        assert Path(cam["image"]) == frame.image_path
        assert cam["show_background"] and Path(cam["background"]) == frame.image_path
        assert cam["model"] == frame.intrinsics.model
        assert all(cam["synced"]), (frame.index, cam["synced"])
        assert cam["distortion"] == pytest.approx(list(frame.intrinsics.distortion), abs=0)
        expected, z = project_points(frame.intrinsics, frame.cam_to_data, points[str(frame.index)],
                                     apply_distortion=False)
        assert np.all(z > 0)
        for key in ("via_view", "via_matrix"):
            error = np.abs(np.array(cam[key]) - expected).max()
            worst = max(worst, float(error))
            assert error <= MAX_PIXEL_ERROR, f"frame {frame.index} {key}: {error:.4f} px"
    return {"worst_px": worst, "frames": len(dataset.frames)}


def test_projection_matches_dataset_on_generated_scene(small_scene: Path, tmp_path: Path) -> None:
    stats = _check_projection(small_scene / "transforms.json", tmp_path, depth_scale=2.0)
    print(json.dumps(stats))


def test_projection_matches_dataset_on_fox(shared_data: Path, tmp_path: Path) -> None:
    # Real photos: portrait 1080x1920 (vertical sensor fit), fx != fy, off-centre principal point,
    # OPENCV distortion recorded as properties; 67 frames listed, 50 images exist.
    stats = _check_projection(shared_data / "fox" / "transforms.json", tmp_path, depth_scale=2.0)
    print(json.dumps(stats))


def _write_transforms(folder: Path, frames: list[dict], **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "transforms.json"
    path.write_text(json.dumps({**top, "frames": frames}))
    return path


def test_per_frame_intrinsics_and_landscape_portrait(tmp_path: Path, small_scene: Path) -> None:
    """Frames with their own sizes and intrinsics (a landscape and a portrait camera, fx > fy and fx < fy)."""
    image = next((small_scene / "images").glob("*.png"))
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (200, 120)).save(data / "images" / "a.png")
    Image.new("RGB", (90, 160)).save(data / "images" / "b.png")
    shutil.copy(image, data / "images" / "c.png")
    w, h = Image.open(image).size
    pose_a = np.eye(4)
    pose_b = np.array([[0, 0, 1, 2.0], [1, 0, 0, 0.5], [0, 1, 0, 0.3], [0, 0, 0, 1]], dtype=float)
    pose_c = np.array([[1, 0, 0, 0.0], [0, 0, -1, -3.0], [0, 1, 0, 0.5], [0, 0, 0, 1]], dtype=float)
    frames = [
        {"file_path": "images/a.png", "transform_matrix": pose_a.tolist(), "w": 200, "h": 120,
         "fl_x": 180.0, "fl_y": 150.0, "cx": 90.0, "cy": 70.0},
        {"file_path": "images/b.png", "transform_matrix": pose_b.tolist(), "w": 90, "h": 160,
         "fl_x": 100.0, "fl_y": 130.0, "cx": 50.5, "cy": 70.25, "camera_model": "OPENCV", "k1": 0.1, "k2": -0.01,
         "p1": 0.001, "p2": 0.002},
        {"file_path": "images/c.png", "transform_matrix": pose_c.tolist(), "w": w, "h": h,
         "fl_x": 0.9 * w, "fl_y": 0.9 * w, "cx": 0.5 * w, "cy": 0.5 * h},
    ]
    path = _write_transforms(data, frames)
    stats = _check_projection(path, tmp_path / "run", depth_scale=3.0)
    assert stats["frames"] == 3


BAD_INPUT_SCRIPT = INSTALL_PRELUDE + '''
out = {}
for label, path in ARGS["paths"].items():
    before = (len(bpy.data.objects), len(bpy.data.cameras), len(bpy.data.collections), len(bpy.data.images),
              len(bpy.context.scene.timeline_markers))
    try:
        result = sorted(bpy.ops.neurallabel.import_dataset(filepath=path))
        error = None
    except RuntimeError as exc:  # bpy.ops raises with the operator's ERROR report
        result, error = ["CANCELLED"], str(exc)
    after = (len(bpy.data.objects), len(bpy.data.cameras), len(bpy.data.collections), len(bpy.data.images),
             len(bpy.context.scene.timeline_markers))
    out[label] = {"result": result, "error": error, "unchanged": before == after,
                  "root": bpy.context.scene.neurallabel.root is not None}
emit(out)
'''


def test_bad_input_reports_and_changes_nothing(tmp_path: Path, small_scene: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "transforms.json").write_text('{"frames": [ {"file_path": ')
    no_frames = _write_transforms(tmp_path / "no_frames", [{"file_path": "x.png"}], fl_x=100.0, w=10, h=10)
    all_missing = _write_transforms(tmp_path / "missing", [
        {"file_path": "images/nope.png", "transform_matrix": np.eye(4).tolist()}], fl_x=100.0, w=10, h=10)
    # Some images missing: imported with a warning naming how many were skipped.
    partial = json.loads((small_scene / "transforms.json").read_text())
    partial["frames"][1]["file_path"] = "images/does_not_exist.png"
    partial["frames"][2]["file_path"] = "images/neither.png"
    for frame in partial["frames"]:
        if "does_not" not in frame["file_path"] and "neither" not in frame["file_path"]:
            frame["file_path"] = str(small_scene / frame["file_path"])
    partial_path = _write_transforms(tmp_path / "partial", partial["frames"],
                                     **{k: v for k, v in partial.items() if k != "frames"})
    zip_path = build_extension_zip(tmp_path / "dist")
    out, proc = run_bpy(BAD_INPUT_SCRIPT, {"zip": str(zip_path), "paths": {
        "nonexistent": str(tmp_path / "nowhere" / "transforms.json"),
        "malformed": str(broken / "transforms.json"),
        "bad_frame": str(no_frames),
        "all_missing": str(all_missing),
        "partial": str(partial_path)}}, tmp_path, output=True)
    for label in ("nonexistent", "malformed", "bad_frame", "all_missing"):
        case = out[label]
        assert case["result"] == ["CANCELLED"], (label, case)
        assert case["unchanged"] and not case["root"], (label, case)
        assert "transforms.json" in case["error"] or "nowhere" in case["error"], (label, case)
    assert "not valid JSON" in out["malformed"]["error"]
    assert out["partial"]["result"] == ["FINISHED"] and out["partial"]["root"]
    n = len(partial["frames"])
    assert f"Skipped 2 of {n} frames whose image is missing" in proc.stdout + proc.stderr
