"""Snap-to-field ICP: a mesh displaced by up to 2 cm and 10 degrees converges back to within 2 mm / 1 degree.

Surface points come from depth maps: here ray-cast with trimesh/embree (an independent renderer) over a
bunny on a floor, and in ``test_icp_on_generated_scene`` from Cycles' true depth of a generated scene,
through the worker's ``snap`` job exactly as the Blender operator runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from neurallabel.addon.worker_client import run_job_sync
from neurallabel.core.geometry.cameras import Intrinsics, camera_rays
from neurallabel.core.data.dataset import Frame
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.geometry.icp import icp_point_to_plane, pose_error, sample_mesh_surface
from neurallabel.core.geometry.box import Box
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View
from neurallabel.core.scene.queries import DepthMapQuery
from neurallabel.core.scene.surface import surface_points

REPO = Path(__file__).resolve().parents[1]
BUNNY = REPO.parent / "shared" / "data" / "meshes" / "bunny.obj"


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world looking from ``eye`` at ``target`` with +z world up."""
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, np.cross(z, x), z, eye
    return pose


def object_mesh() -> trimesh.Trimesh:
    """The Stanford bunny 15 cm wide, or (without ../shared) an asymmetric union of boxes."""
    if BUNNY.is_file():
        mesh = trimesh.load(BUNNY, force="mesh", process=False)
        mesh.apply_translation(-mesh.bounds.mean(axis=0))
        mesh.apply_scale(0.15 / mesh.extents.max())
        return mesh
    parts = [trimesh.creation.box([0.15, 0.08, 0.05]),
             trimesh.creation.box([0.04, 0.04, 0.12]).apply_translation([0.05, 0.02, 0.08]),
             trimesh.creation.box([0.03, 0.09, 0.03]).apply_translation([-0.05, 0.05, 0.03])]
    return trimesh.util.concatenate(parts)


@pytest.fixture(scope="module")
def raycast_scene():
    """The object on a floor, 12 views around it (160x120), z-depth maps ray-cast by embree."""
    mesh = object_mesh()
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", [90, 0, 30], degrees=True).as_matrix()
    lowest = (mesh.vertices @ pose[:3, :3].T)[:, 2].min()
    pose[:3, 3] = [0.05, -0.02, -lowest]  # resting on the floor z = 0
    placed = mesh.copy().apply_transform(pose)
    floor = trimesh.creation.box([2.0, 2.0, 0.01]).apply_translation([0.0, 0.0, -0.005])
    world = trimesh.util.concatenate([placed, floor])
    intrinsics = Intrinsics(160, 120, 150.0, 150.0, 80.0, 60.0)
    frames, depths = [], {}
    for i, angle in enumerate(np.linspace(0.0, 2.0 * np.pi, 12, endpoint=False)):
        eye = np.array([0.5 * np.cos(angle), 0.5 * np.sin(angle), 0.35])
        cam_to_world = look_at(eye, pose[:3, 3])
        origins, directions, z_per_distance = camera_rays(intrinsics, cam_to_world)
        hits, ray_index, _ = world.ray.intersects_location(origins, directions, multiple_hits=False)
        distance = np.full(len(origins), np.nan)
        distance[ray_index] = np.linalg.norm(hits - origins[ray_index], axis=1)
        depths[i] = (distance * z_per_distance).reshape(120, 160)
        frames.append(View.from_frame(Frame(i, Path(f"{i:06d}.png"), cam_to_world, intrinsics), Similarity.identity()))
    return mesh, pose, frames, depths


def displaced(pose: np.ndarray, rng: np.random.Generator, shift: float, degrees: float) -> np.ndarray:
    axis, direction = rng.normal(size=3), rng.normal(size=3)
    out = pose.copy()
    out[:3, :3] = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(degrees)).as_matrix() @ pose[:3, :3]
    out[:3, 3] += direction / np.linalg.norm(direction) * shift
    return out


def test_icp_converges_from_2cm_10deg(raycast_scene):
    mesh, truth, frames, depths = raycast_scene
    model_points, model_normals = sample_mesh_surface(mesh.vertices, mesh.faces, 20000)
    scene = DepthMapQuery(lambda view: depths[view.index])
    rng = np.random.default_rng(7)
    errors = []
    for _ in range(4):
        start = displaced(truth, rng, 0.02, 10.0)
        assert pose_error(start, truth)[0] == pytest.approx(0.02)
        box = Box(start, mesh.extents)  # the mesh is centred: its bounds box sits at its origin
        surface = surface_points(frames, box, scene, margin=0.03)
        assert surface.view_count == 12 and len(surface.points) > 1000
        result = icp_point_to_plane(model_points, model_normals, surface.points, start, max_distance=0.05)
        translation, rotation = pose_error(result.pose, truth)
        errors.append((translation, rotation))
        assert result.converged
        assert np.allclose(result.pose[:3, :3].T @ result.pose[:3, :3], np.eye(3), atol=1e-9)  # rigid
    worst_t, worst_r = max(e[0] for e in errors), max(e[1] for e in errors)
    assert worst_t <= 0.002 and worst_r <= 1.0, errors


def test_icp_ignores_outliers(raycast_scene):
    mesh, truth, frames, depths = raycast_scene
    model_points, model_normals = sample_mesh_surface(mesh.vertices, mesh.faces, 20000)
    surface = surface_points(frames, Box(truth, mesh.extents), DepthMapQuery(lambda v: depths[v.index]),
                             margin=0.03)
    rng = np.random.default_rng(3)
    clutter = truth[:3, 3] + rng.uniform(-0.1, 0.1, size=(len(surface.points) // 3, 3))  # 25 % junk
    start = displaced(truth, rng, 0.015, 8.0)
    result = icp_point_to_plane(model_points, model_normals, np.concatenate([surface.points, clutter]), start,
                                max_distance=0.05)
    translation, rotation = pose_error(result.pose, truth)
    assert translation <= 0.002 and rotation <= 1.0
    assert result.fitness < 0.9  # the clutter was not matched


def test_icp_refuses_too_few_points(raycast_scene):
    mesh, truth, _, _ = raycast_scene
    model_points, model_normals = sample_mesh_surface(mesh.vertices, mesh.faces, 2000)
    with pytest.raises(NeuralLabelError, match="surface points"):
        icp_point_to_plane(model_points, model_normals, np.zeros((3, 3)), truth, max_distance=0.05)


def test_snap_job_in_worker_with_true_depth(tmp_path, raycast_scene):
    """The worker's ``snap`` job (what neurallabel.snap_to_field runs) on depth maps written to disk."""
    mesh, truth, frames, depths = raycast_scene
    data = {"w": 160, "h": 120, "fl_x": 150.0, "fl_y": 150.0, "cx": 80.0, "cy": 60.0, "frames": []}
    (tmp_path / "images").mkdir()
    (tmp_path / "depth").mkdir()
    from PIL import Image

    for frame in frames:
        Image.new("RGB", (160, 120)).save(tmp_path / "images" / frame.image_path.name)
        np.save(tmp_path / "depth" / f"{frame.image_path.stem}.npy", depths[frame.index].astype(np.float32))
        data["frames"].append({"file_path": f"images/{frame.image_path.name}",
                               "transform_matrix": frame.cam_to_data.tolist()})
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    # A world that is the data frame scaled by 2 and moved: the job works in the world (the root empty's).
    world_from_data = np.diag([2.0, 2.0, 2.0, 1.0])
    world_from_data[:3, 3] = [1.0, -0.5, 0.25]
    truth_world = world_from_data @ truth
    truth_world[:3, :3] /= 2.0
    mesh_world = mesh.copy().apply_scale(2.0)
    mesh_world.export(tmp_path / "mesh.ply")
    start = displaced(truth_world, np.random.default_rng(11), 0.02, 10.0)
    job = {"kind": "snap", "data": str(tmp_path / "transforms.json"), "depth_dir": str(tmp_path / "depth"),
           "world_from_data": world_from_data.tolist(), "mesh": str(tmp_path / "mesh.ply"),
           "pose": start.tolist()}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(REPO / "core" / "worker.py"), str(tmp_path / "job.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "result" and any(e["event"] == "progress" for e in events)
    translation, rotation = pose_error(np.array(events[-1]["pose"]), truth_world)
    assert translation <= 0.004 and rotation <= 1.0  # 2 mm in the data frame = 4 mm in this world

    # A snap that would move the mesh farther than the search distance is refused (the mesh stays put).
    job.update(pose=displaced(truth_world, np.random.default_rng(12), 0.05, 5.0).tolist(), max_distance=0.04)
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(REPO / "core" / "worker.py"), str(tmp_path / "job.json")],
                          capture_output=True, text=True, timeout=120)
    last = json.loads(proc.stdout.splitlines()[-1])
    assert proc.returncode == 2 and last["event"] == "error" and "stays where it was" in last["message"], last


def write_voxel_field(path: Path, meshes: list[trimesh.Trimesh], roi: np.ndarray, resolution: int = 64,
                      steps_per_roi: int = 1024) -> None:
    """A field checkpoint whose density grid is the voxelised truth: opaque inside ``meshes`` and below the
    floor (z < 0), empty elsewhere. Its rendered depth is the truth up to the voxel size."""
    import torch

    from neurallabel.core.field.checkpoint import save_checkpoint
    from neurallabel.core.field.model import Field, FieldConfig

    field = Field(FieldConfig(roi_aabb=roi.tolist(), density_resolution=resolution, plane_resolutions=(4,),
                              plane_features=2, hidden=8, occupancy_resolution=32, steps_per_roi=steps_per_roi))
    axes = [np.linspace(roi[0, i], roi[1, i], resolution) for i in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # grid[i, j, k] = (x, y, z)
    inside = points[:, 2] < 0.0
    for mesh in meshes:
        inside |= mesh.contains(points)
    grid = np.where(inside, 12.0, -12.0).reshape(1, 1, resolution, resolution, resolution)
    with torch.no_grad():
        field.density_grid.copy_(torch.from_numpy(grid).float())
        field.update_occupancy(threshold=0.01, samples_per_cell=2)
    save_checkpoint(path, field)


def test_snap_job_with_a_field(small_scene, tmp_path):
    """The worker's snap job on a field's rendered depth (the path neurallabel.snap_to_field takes)."""
    from neurallabel.core.data.truth import load_scene_truth

    truth = load_scene_truth(small_scene)
    cube = next(o for o in truth.objects if o.name == "cube_1")
    placed = cube.load_mesh().copy().apply_transform(cube.object_to_world)
    centre = placed.bounds.mean(axis=0)
    roi = np.array([centre - 0.07, centre + 0.07])
    roi[0, 2] = -0.02  # the floor under it
    write_voxel_field(tmp_path / "field.pt", [placed], roi, resolution=80)
    start = displaced(cube.object_to_world, np.random.default_rng(2), 0.02, 10.0)
    job = {"kind": "snap", "data": str(truth.transforms_path), "field": str(tmp_path / "field.pt"),
           "mesh": str(cube.mesh_path), "pose": start.tolist(), "device": "cpu", "max_views": 6}
    result = run_job_sync(job)
    translation, rotation = pose_error(np.array(result["pose"]), cube.object_to_world)
    assert result["views"] == 6 and result["scene_points"] > 500
    assert translation <= 0.002 and rotation <= 1.0, (translation, rotation)
