"""The BOP output as bop_toolkit reads it: a reader written here from bop_toolkit's documented format
(docs/bop_datasets_format.md) and its projection (misc.project_pts: x = K (R X + t), divided by z), since
bop_toolkit itself is not installable here.

On a camera with lens distortion every model vertex projected with BOP's pinhole convention lands in the
object's ``mask/``; the old writer (the photo's own K with the lens-space masks, still in ``raw/full/``) misses
by the distortion. Also: rgb suffixes, PLY normals, models_eval and scene_gt_coco.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from PIL import Image

from neurallabel.core.pipeline.bake import bake
from neurallabel.core.spec import load_spec

W, H, F = 160, 120, 120.0
DISTORTION = {"camera_model": "OPENCV", "k1": -0.15, "k2": 0.05, "p1": 0.001, "p2": 0.001}
#: a strong barrel lens: about 20 px of distortion at the corners of a 160x120 image
STRONG = {"camera_model": "OPENCV", "k1": -0.4, "k2": 0.15, "p1": 0.003, "p2": -0.002}
FISHEYE = {"camera_model": "OPENCV_FISHEYE", "k1": 0.05, "k2": -0.02, "k3": 0.01, "k4": 0.0}


def _pose(x: float, y: float, z: float, angle: float = 0.0) -> list:
    c, s = np.cos(angle), np.sin(angle)
    return [[c, -s, 0.0, x], [s, c, 0.0, y], [0.0, 0.0, 1.0, z], [0.0, 0.0, 0.0, 1.0]]


def make_scene(root: Path, lens: dict, photos: tuple[str, ...] = ("000000.png", "000001.png")) -> Path:
    """A mesh-only scene: a cube and a sphere off the image centre (where the lens bends most), one camera
    per photo (the second one moved sideways). The photos only need the right size."""
    (root / "images").mkdir(parents=True)
    frames = []
    for n, name in enumerate(photos):
        image = np.random.default_rng(n).integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / name, format="JPEG" if ".jp" in name.lower() else None)
        cam = np.eye(4)
        cam[0, 3] = 0.05 * n
        frames.append({"file_path": f"images/{name}", "transform_matrix": cam.tolist()})
    (root / "transforms.json").write_text(json.dumps(
        {"w": W, "h": H, "fl_x": F, "fl_y": F, "cx": W / 2, "cy": H / 2, **lens, "frames": frames}))
    trimesh.creation.box([0.3, 0.3, 0.3]).export(root / "cube.ply")
    trimesh.creation.icosphere(subdivisions=2, radius=0.15).export(root / "ball.ply")
    objects = [{"name": "cube", "category": "cube", "category_id": 1, "instance_id": 1, "kind": "mesh",
                "mesh": "cube.ply", "pose": _pose(0.4, 0.25, -1.1, 0.5)},
               {"name": "ball", "category": "ball", "category_id": 2, "instance_id": 2, "kind": "mesh",
                "mesh": "ball.ply", "pose": _pose(-0.45, -0.3, -1.0)}]
    (root / "spec.json").write_text(json.dumps({"neurallabel_spec": 1, "data": "transforms.json",
                                                "units_to_mm": 1000.0, "objects": objects}))
    out = root / "out"
    bake(load_spec(root / "spec.json"), out, formats=("bop", "raw"))
    return out


# --- a bop_toolkit-style reader ------------------------------------------------------------------------------


def load_bop_scene(scene: Path) -> tuple[dict, dict]:
    """scene_camera (cam_K 3x3, depth_scale) and scene_gt (cam_R_m2c 3x3, cam_t_m2c (3, 1) mm) by im_id."""
    cameras = {int(k): {"cam_K": np.array(v["cam_K"], float).reshape(3, 3), "depth_scale": float(v["depth_scale"])}
               for k, v in json.loads((scene / "scene_camera.json").read_text()).items()}
    gts = {int(k): [{"obj_id": g["obj_id"], "cam_R_m2c": np.array(g["cam_R_m2c"], float).reshape(3, 3),
                     "cam_t_m2c": np.array(g["cam_t_m2c"], float).reshape(3, 1)} for g in v]
           for k, v in json.loads((scene / "scene_gt.json").read_text()).items()}
    return cameras, gts


def project_pts(pts: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """bop_toolkit misc.project_pts."""
    P = K @ np.hstack([R, t])
    x = P @ np.hstack([pts, np.ones((len(pts), 1))]).T
    return (x[:2] / x[2]).T


def vertices_outside_mask(K: np.ndarray, gt: dict, model: trimesh.Trimesh, mask: np.ndarray) -> tuple[int, int]:
    """(vertices in the image, of those how many fall outside the mask dilated by 1 px)."""
    uv = np.round(project_pts(np.asarray(model.vertices), K, gt["cam_R_m2c"], gt["cam_t_m2c"])).astype(int)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < mask.shape[1]) & (uv[:, 1] >= 0) & (uv[:, 1] < mask.shape[0])
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    uv = uv[inside]
    return int(inside.sum()), int((~grown[uv[:, 1], uv[:, 0]]).sum())


def worst_vertex_distance(K: np.ndarray, gt: dict, vertices: np.ndarray, mask: np.ndarray) -> float:
    """The largest distance (px, L-infinity) from a model vertex's projection in the image to the nearest pixel
    of ``mask`` (the pixel's square, so a vertex inside a mask pixel is at 0): 1 px = the dilated-mask test."""
    from scipy.spatial import cKDTree

    uv = project_pts(np.asarray(vertices), K, gt["cam_R_m2c"], gt["cam_t_m2c"])
    h, w = mask.shape
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < h - 0.5)
    rows, cols = np.nonzero(mask)
    distance, _ = cKDTree(np.stack([cols, rows], axis=1)).query(uv[inside], p=np.inf)
    return float(np.maximum(distance - 0.5, 0.0).max())


def worst_in_bake(bop: Path) -> tuple[float, int]:
    """(worst vertex distance over every instance of every frame of scene 0, instances checked)."""
    scene = bop / "train" / "000000"
    cameras, gts = load_bop_scene(scene)
    worst, checked = 0.0, 0
    for im_id, gt_list in gts.items():
        for gt_id, gt in enumerate(gt_list):
            model = trimesh.load(bop / "models" / f"obj_{gt['obj_id']:06d}.ply", process=False)
            mask = _mask(scene / "mask" / f"{im_id:06d}_{gt_id:06d}.png")
            worst = max(worst, worst_vertex_distance(cameras[im_id]["cam_K"], gt, model.vertices, mask))
            checked += 1
    return worst, checked


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


@pytest.fixture(scope="module", params=[DISTORTION, FISHEYE], ids=["opencv", "fisheye"])
def distorted(request, tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("distorted"), request.param)


def test_models_project_into_their_masks_with_bops_pinhole_convention(distorted: Path) -> None:
    scene = distorted / "bop" / "train" / "000000"
    cameras, gts = load_bop_scene(scene)
    checked = 0
    for im_id, gt_list in gts.items():
        K = cameras[im_id]["cam_K"]
        assert not np.allclose(K, [[F, 0, W / 2 - 0.5], [0, F, H / 2 - 0.5], [0, 0, 1]])  # the new pinhole K
        for gt_id, gt in enumerate(gt_list):
            model = trimesh.load(distorted / "bop" / "models" / f"obj_{gt['obj_id']:06d}.ply", process=False)
            mask = _mask(scene / "mask" / f"{im_id:06d}_{gt_id:06d}.png")
            n_in, n_out = vertices_outside_mask(K, gt, model, mask)
            assert n_in >= 8 and n_out == 0, (im_id, gt_id, n_in, n_out)
            checked += 1
            # The old writer: the photo's own K with the lens-space silhouette misses by the distortion.
            old_K = np.array([[F, 0, W / 2 - 0.5], [0, F, H / 2 - 0.5], [0, 0, 1]])
            old_mask = _mask(distorted / "raw" / "full" / f"{im_id:06d}_{gt_id + 1:06d}.png")
            assert vertices_outside_mask(old_K, gt, model, old_mask)[1] > 0
    assert checked == 4


def test_undistorted_images_line_up_with_their_masks(distorted: Path) -> None:
    """rgb, depth and masks share the pinhole grid: depth is there exactly where a visible mask is, and its
    z-depth matches the pose (the cube's centre is 1.1 m in front of camera 0)."""
    scene = distorted / "bop" / "train" / "000000"
    cameras, gts = load_bop_scene(scene)
    depth = np.asarray(Image.open(scene / "depth" / "000000.png")).astype(float) * cameras[0]["depth_scale"]
    visible = _mask(scene / "mask_visib" / "000000_000000.png") | _mask(scene / "mask_visib" / "000000_000001.png")
    assert np.array_equal(depth > 0, visible)
    cube = _mask(scene / "mask_visib" / "000000_000000.png")
    assert 900 < np.median(depth[cube]) < 1100 and gts[0][0]["cam_t_m2c"][2, 0] == pytest.approx(1100.0)
    rgb = np.asarray(Image.open(scene / "rgb" / "000000.png"))
    assert rgb.shape == (H, W, 3) and rgb.std() > 10  # the photo, resampled (not blank)
    info = json.loads((scene / "scene_gt_info.json").read_text())["0"][0]
    assert info["px_count_visib"] == int(cube.sum())


def test_pinhole_cameras_keep_the_photo_and_suffixes_are_bops(tmp_path: Path) -> None:
    out = make_scene(tmp_path, {}, photos=("a.JPEG", "b.bmp"))
    rgb = out / "bop" / "train" / "000000" / "rgb"
    assert sorted(p.name for p in rgb.iterdir()) == ["000000.jpg", "000001.png"]
    assert (rgb / "000000.jpg").read_bytes() == (tmp_path / "images" / "a.JPEG").read_bytes()
    assert np.array_equal(np.asarray(Image.open(rgb / "000001.png")), np.asarray(Image.open(tmp_path / "images" / "b.bmp")))
    camera = json.loads((out / "bop" / "train" / "000000" / "scene_camera.json").read_text())["0"]
    assert camera["cam_K"] == [F, 0.0, W / 2 - 0.5, 0.0, F, H / 2 - 0.5, 0.0, 0.0, 1.0]


def test_models_have_normals_and_eval_copies(distorted: Path) -> None:
    bop = distorted / "bop"
    for folder in ("models", "models_eval"):
        ply = (bop / folder / "obj_000002.ply").read_bytes()
        header = ply[:ply.index(b"end_header")].decode("ascii")
        assert "property float nx" in header and "property float nz" in header
        mesh = trimesh.load(bop / folder / "obj_000002.ply", process=False)
        radii = np.linalg.norm(mesh.vertices, axis=1)
        assert radii == pytest.approx(150.0, rel=1e-3)  # mm
        # A sphere's vertex normal points along its radius.
        assert np.einsum("ij,ij->i", mesh.vertex_normals, mesh.vertices / radii[:, None]) == pytest.approx(1.0, abs=0.05)
    assert (bop / "models_eval" / "models_info.json").read_bytes() == (bop / "models" / "models_info.json").read_bytes()


def test_scene_gt_coco_loads_in_pycocotools(distorted: Path) -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    scene = distorted / "bop" / "train" / "000000"
    coco = COCO(str(scene / "scene_gt_coco.json"))
    assert sorted(coco.getImgIds()) == [0, 1] and sorted(coco.getCatIds()) == [1, 2]
    assert coco.loadImgs(0)[0]["file_name"] == "rgb/000000.png"
    gt_info = json.loads((scene / "scene_gt_info.json").read_text())
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[0])):
        gt_id = ann["category_id"] - 1  # instances sorted by instance_id = category_id here
        visib = _mask(scene / "mask_visib" / f"000000_{gt_id:06d}.png")
        assert np.array_equal(mask_utils.decode(ann["segmentation"]) > 0, visib)
        assert ann["bbox"] == gt_info["0"][gt_id]["bbox_obj"]
        assert ann["ignore"] is (gt_info["0"][gt_id]["visib_fract"] < 0.1)


def test_every_vertex_lands_in_its_mask_within_a_pixel_on_a_strong_lens(tmp_path: Path) -> None:
    """The masks are labelled in the pinhole camera itself (no resampling of lens-space masks), so even a strong
    lens leaves every vertex within 1 px of its mask: about half a pixel, the pixel grid's own error."""
    worst, checked = worst_in_bake(make_scene(tmp_path, STRONG) / "bop")
    assert checked == 4 and worst <= 1.0, worst


def test_real_fox_photos_with_a_scanned_mesh_project_into_their_masks(shared_data: Path, tmp_path: Path) -> None:
    """Three real fox photos (OPENCV lens, 1080x1920) with the Stanford bunny placed three times in front of the
    first camera: at the centre and towards two corners, where the lens bends most."""
    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.geometry.cameras import OPENGL_TO_OPENCV

    fox = shared_data / "fox" / "transforms.json"
    dataset = load_dataset(fox)
    frames = [f.index for f in dataset.frames[:3]]
    first = dataset.by_index[frames[0]]
    intr = first.intrinsics
    assert intr.has_distortion
    bunny = trimesh.load(shared_data / "meshes" / "bunny.obj", force="mesh")
    bunny.apply_translation(-bunny.bounds.mean(axis=0))
    bunny.apply_scale(8.0)  # about 1.2 fox units wide
    bunny.export(tmp_path / "bunny.ply")
    c2w = np.asarray(first.cam_to_data) @ OPENGL_TO_OPENCV
    objects = []
    for n, (u, v) in enumerate([(0.5, 0.5), (0.18, 0.12), (0.8, 0.88)]):  # fractions of the image, 5 units away
        ray = np.array([(u * intr.width - intr.cx) / intr.fx, (v * intr.height - intr.cy) / intr.fy, 1.0])
        pose = np.eye(4)
        pose[:3, 3] = c2w[:3, :3] @ (5.0 * ray) + c2w[:3, 3]
        objects.append({"name": f"bunny{n}", "category": "bunny", "category_id": 1, "instance_id": n + 1,
                        "kind": "mesh", "mesh": "bunny.ply", "pose": pose.tolist()})
    (tmp_path / "spec.json").write_text(json.dumps({"neurallabel_spec": 1, "data": str(fox), "units_to_mm": 100.0,
                                                    "frames": frames, "objects": objects}))
    bake(load_spec(tmp_path / "spec.json"), tmp_path / "out", formats=("bop",))
    worst, checked = worst_in_bake(tmp_path / "out" / "bop")
    assert checked == 9 and worst <= 1.0, worst  # resampled lens-space masks: 1.1 px on these frames
