"""raw/transforms.json against nerfstudio's dataparser rules (nerfstudio_dataparser.py, as documented):
intrinsics keys top level or per frame, camera_model one it knows, distortion as k1.. p1 p2, paths resolved
against the json's folder (an absolute one stays as it is), masks single-channel with 0 = ignore, depth a
uint16 image scaled by depth_unit_scale_factor, transform_matrix a 4x4 camera-to-world (OpenGL)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from PIL import Image

from neurallabel.core.pipeline.bake import bake
from neurallabel.core.scene.queries import TruthQuery
from neurallabel.core.spec import load_spec, spec_from_scene

NERFSTUDIO_CAMERA_MODELS = {"SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE",
                            "EQUIRECTANGULAR"}
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


def _camera(meta: dict, frame: dict) -> dict:
    """The frame's intrinsics as nerfstudio reads them: the top-level keys when present, else the frame's."""
    return {k: meta[k] if k in meta else frame[k] for k in INTRINSIC_KEYS}


def check_nerfstudio(folder: Path) -> dict:
    """Every rule of nerfstudio's dataparser that the file can break; returns the parsed file."""
    meta = json.loads((folder / "transforms.json").read_text())
    assert meta["camera_model"] in NERFSTUDIO_CAMERA_MODELS
    assert meta["depth_unit_scale_factor"] > 0 and meta["frames"]
    for frame in meta["frames"]:
        camera = _camera(meta, frame)
        image = folder / frame["file_path"]  # nerfstudio: data_dir / file_path
        mask, depth = folder / frame["mask_path"], folder / frame["depth_file_path"]
        assert image.is_file() and mask.is_file() and depth.is_file()
        w, h = Image.open(image).size
        assert (w, h) == (camera["w"], camera["h"])
        mask_array = np.array(Image.open(mask))
        assert mask_array.ndim == 2 and mask_array.shape == (h, w) and set(np.unique(mask_array)) <= {0, 255}
        depth_array = cv2.imread(str(depth), cv2.IMREAD_ANYDEPTH)
        assert depth_array.dtype == np.uint16 and depth_array.shape == (h, w)
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
        assert m.shape == (4, 4) and np.allclose(m[3], [0, 0, 0, 1])
        assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-6) and np.linalg.det(m[:3, :3]) > 0
    return meta


def test_raw_transforms_json_is_a_nerfstudio_dataset(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    bake(spec, out, formats=("raw",), depth_source=TruthQuery(small_scene))
    raw = out / "raw"
    meta = check_nerfstudio(raw)
    assert meta["depth_unit_scale_factor"] == pytest.approx(1.0 / spec.units_to_mm)
    source = json.loads(spec.data_path.read_text())
    assert len(meta["frames"]) == len(source["frames"]) == 12
    for key in INTRINSIC_KEYS:  # the dataset's own intrinsics (the photos are the dataset's)
        assert meta[key] == pytest.approx(source[key])
    world_from_data = np.asarray(spec.world_from_data, dtype=np.float64)
    for i, (frame, src) in enumerate(zip(meta["frames"], source["frames"])):
        n = f"{i:06d}"
        assert Path(frame["file_path"]) == (spec.data_path.parent / src["file_path"]).resolve()
        expected = world_from_data @ np.asarray(src["transform_matrix"])
        assert np.allclose(frame["transform_matrix"], expected, atol=1e-6)  # world frame, OpenGL axes
        instance = np.array(Image.open(raw / "instance" / f"{n}.png"))
        assert np.array_equal(np.array(Image.open(raw / frame["mask_path"])) == 255, instance > 0)
        depth_m = np.load(raw / "depth" / f"{n}.npy")
        depth_mm = cv2.imread(str(raw / frame["depth_file_path"]), cv2.IMREAD_ANYDEPTH)
        assert (~np.isnan(depth_m)).any()
        assert (depth_mm[np.isnan(depth_m)] == 0).all()
        assert np.array_equal(depth_mm[~np.isnan(depth_m)],
                              np.round(depth_m[~np.isnan(depth_m)].astype(np.float64) * spec.units_to_mm).astype(np.uint16))


def test_distortion_keys_and_per_frame_intrinsics(tmp_path: Path) -> None:
    """Two photos of different sizes with OPENCV distortion: the intrinsics go per frame, with k1 k2 p1 p2;
    depth beyond 65.535 m is 0 (no depth), never wrapped around."""
    (tmp_path / "images").mkdir()
    frames = []
    for i, (w, h) in enumerate([(64, 48), (80, 60)]):
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": np.eye(4).tolist(), "w": w, "h": h,
                       "fl_x": 90.0, "fl_y": 91.0, "cx": w / 2, "cy": h / 2, "k1": 0.01, "k2": -0.002,
                       "p1": 0.0005, "p2": 0.0})
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_model": "OPENCV", "frames": frames}))
    trimesh.creation.box([20.0, 20.0, 20.0]).export(tmp_path / "cube.ply")
    pose = np.eye(4)
    pose[2, 3] = -80.0  # its front face 70 m in front: beyond uint16 millimetres
    spec = {"neurallabel_spec": 1, "data": "transforms.json", "units_to_mm": 1000.0,
            "objects": [{"name": "cube", "category": "cube", "category_id": 1, "instance_id": 1, "kind": "mesh",
                         "mesh": "cube.ply", "pose": pose.tolist()}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    bake(load_spec(tmp_path / "spec.json"), tmp_path / "out", formats=("raw",))
    meta = check_nerfstudio(tmp_path / "out" / "raw")
    assert meta["camera_model"] == "OPENCV" and "fl_x" not in meta
    for frame, src in zip(meta["frames"], frames):
        assert {k: frame[k] for k in (*INTRINSIC_KEYS, "k1", "k2", "p1", "p2")} == pytest.approx(
            {k: src[k] for k in (*INTRINSIC_KEYS, "k1", "k2", "p1", "p2")})
    raw = tmp_path / "out" / "raw"
    depth_m = np.load(raw / "depth" / "000000.npy")
    assert np.nanmin(depth_m) == pytest.approx(70.0) and np.isnan(depth_m).any()  # the cube, and no surface
    assert not cv2.imread(str(raw / "depth_mm" / "000000.png"), cv2.IMREAD_ANYDEPTH).any()
