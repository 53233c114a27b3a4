"""Writers: BOP values computed by hand for one cube at a known pose; COCO read back by pycocotools; depth
scales that cannot overflow."""

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
from neurallabel.core.export.bop import depth_png, depth_scale_for
from neurallabel.core.spec import load_spec, spec_from_scene

W, H, F = 64, 48, 90.0


@pytest.fixture()
def cube_scene(tmp_path: Path) -> Path:
    """One camera at the origin looking down -z (OpenGL), principal point on the left image border.

    A 0.2 m cube, turned 90 degrees about z, centred 1 m in front: its front face (z = 0.9 m) spans
    x, y in [-0.1, 0.1] -> u = cx + 90 * x / 0.9 in [-10, 10], v = 24 + 90 * y / 0.9 in [14, 34] (continuous
    coordinates, pixel centres at col + 0.5). The camera (x = y = 0) lies inside the x and y extent of the
    cube, so it sees no side face: the silhouette is the front face alone, half of it left of the image.
    """
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(tmp_path / "images" / "000000.png")
    frames = [{"file_path": "images/000000.png", "transform_matrix": np.eye(4).tolist()}]
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"w": W, "h": H, "fl_x": F, "fl_y": F, "cx": 0.0, "cy": 24.0, "frames": frames}))
    trimesh.creation.box([0.2, 0.2, 0.2]).export(tmp_path / "cube.ply")
    pose = np.array([[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 1.0]])
    spec = {"neurallabel_spec": 1, "data": "transforms.json", "units_to_mm": 1000.0,
            "objects": [{"name": "cube", "category": "cube", "category_id": 5, "instance_id": 9, "kind": "mesh",
                         "mesh": "cube.ply", "pose": pose.tolist()}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path


def test_bop_values_for_one_cube_by_hand(cube_scene: Path) -> None:
    out = cube_scene / "out"
    bake(load_spec(cube_scene / "spec.json"), out)
    bop = out / "bop"
    scene = bop / "train" / "000000"

    camera = json.loads((scene / "scene_camera.json").read_text())["0"]
    # OpenCV pixel convention: cx - 0.5, cy - 0.5.
    assert camera["cam_K"] == [90.0, 0.0, -0.5, 0.0, 90.0, 23.5, 0.0, 0.0, 1.0]
    # World -> OpenCV camera for an OpenGL camera at the origin: flip y and z.
    assert camera["cam_R_w2c"] == [1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0]
    assert camera["cam_t_w2c"] == [0.0, 0.0, 0.0]

    gt = json.loads((scene / "scene_gt.json").read_text())["0"]
    assert len(gt) == 1 and gt[0]["obj_id"] == 5 and gt[0]["instance_id"] == 9
    # m2c = diag(1, -1, -1) @ Rz(90): rows (0, -1, 0), (-1, 0, 0), (0, 0, -1); t = (0, 0, 1 m) = 1000 mm.
    assert np.allclose(gt[0]["cam_R_m2c"], [0, -1, 0, -1, 0, 0, 0, 0, -1])
    assert np.allclose(gt[0]["cam_t_m2c"], [0, 0, 1000.0])

    info = json.loads((scene / "scene_gt_info.json").read_text())["0"][0]
    # Full face: pixel centres col + 0.5 in [-10, 10] -> cols -10..9 (20), rows 14..33 (20): 400 pixels, of
    # which cols 0..9 (10 x 20 = 200) lie inside the image.
    assert info["px_count_all"] == 400
    assert info["px_count_visib"] == 200
    assert info["px_count_valid"] == 200
    assert info["visib_fract"] == pytest.approx(0.5)
    assert info["bbox_obj"] == [-10, 14, 19, 19]  # BOP: w = xmax - xmin, including the truncated part
    assert info["bbox_visib"] == [0, 14, 9, 19]

    mask = cv2.imread(str(scene / "mask_visib" / "000000_000000.png"), cv2.IMREAD_UNCHANGED)
    expected = np.zeros((H, W), np.uint8)
    expected[14:34, 0:10] = 255
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    assert np.array_equal(cv2.imread(str(scene / "mask" / "000000_000000.png"), cv2.IMREAD_UNCHANGED), expected)

    # Depth: uint16 * depth_scale = mm; the face is at 900 mm, nothing else -> 0.
    depth = cv2.imread(str(scene / "depth" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16
    mm = depth.astype(np.float64) * camera["depth_scale"]
    assert np.allclose(mm[expected > 0], 900.0, atol=camera["depth_scale"] / 2)
    assert np.all(depth[expected == 0] == 0)

    # Model in mm with models_info (diameter of a 200 mm cube = 200 sqrt(3)).
    model = trimesh.load(bop / "models" / "obj_000005.ply", process=False)
    assert np.allclose(model.bounds, [[-100, -100, -100], [100, 100, 100]])
    models_info = json.loads((bop / "models" / "models_info.json").read_text())["5"]
    assert models_info["diameter"] == pytest.approx(200 * np.sqrt(3))
    assert models_info["min_x"] == pytest.approx(-100) and models_info["size_z"] == pytest.approx(200)
    assert (scene / "rgb" / "000000.png").read_bytes() == (cube_scene / "images" / "000000.png").read_bytes()
    cam = json.loads((bop / "camera.json").read_text())
    assert (cam["fx"], cam["cx"], cam["cy"], cam["width"], cam["height"]) == (90.0, -0.5, 23.5, 64, 48)

    # Raw: projected 3D box corners (OpenCV pixels) and the pose in world units.
    raw = json.loads((out / "raw" / "labels.json").read_text())["frames"][0]["instances"][0]
    corners = np.array(raw["corners_px"])
    # Front corners at z = 0.9: u - 0.5 = -0.5 +- 10; back corners at z = 1.1: -0.5 +- 90 * 0.1 / 1.1.
    us = sorted(set(np.round(corners[:, 0], 6)))
    assert us == pytest.approx(sorted({-10.5, 9.5, -0.5 - 90 * 0.1 / 1.1, -0.5 + 90 * 0.1 / 1.1}))
    assert raw["bbox_visib_coco"] == [0, 14, 10, 20]  # COCO: w = xmax - xmin + 1
    assert np.allclose(raw["t_m2c"], [0, 0, 1.0])


def test_coco_rle_decodes_to_the_raw_visible_masks(small_scene: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    spec = spec_from_scene(small_scene)
    bake(spec, tmp_path / "out", formats=("coco", "raw"), depth_source=TruthQuery(small_scene))
    coco = COCO(str(tmp_path / "out" / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == 12 and len(coco.getCatIds()) == len(spec.categories())
    checked = 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
        instance = np.array(Image.open(tmp_path / "out" / "raw" / "instance" / f"{ann['image_id']:06d}.png"))
        raw_mask = instance == ann["instance_id"]
        decoded = coco.annToMask(ann).astype(bool)
        assert np.array_equal(decoded, raw_mask)
        assert ann["area"] == int(raw_mask.sum())
        rows, cols = np.nonzero(raw_mask)
        assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        name = {o.instance_id: o.name for o in spec.objects}[ann["instance_id"]]
        assert ann["name"] == name and coco.loadCats(ann["category_id"])[0]["name"] == \
            {o.instance_id: o.category for o in spec.objects}[ann["instance_id"]]
        checked += 1
    assert checked >= 30


def test_depth_scale_never_overflows() -> None:
    for max_mm in (0.0, 1.0, 655.0, 900.0, 3276.7, 65535.0, 1e5, 1e6, 3e7):
        scale = depth_scale_for(max_mm)
        assert max_mm / scale <= 65535
        depth = np.array([[max_mm, np.nan]])
        stored = depth_png(depth, scale)
        assert stored[0, 1] == 0
        assert abs(stored[0, 0] * scale - max_mm) <= scale / 2 + 1e-9
    assert depth_scale_for(3000.0) == 0.05  # 3 m at 0.05 mm steps


def test_writers_label_a_synthetic_view_without_a_photo(cube_scene: Path) -> None:
    """A synthetic view (no image file) goes through every writer: numbered by ``view.index``, posed by
    ``view.cam_to_world``; BOP writes no rgb, COCO marks the image synthetic."""
    from neurallabel.core.geometry.transforms import Similarity
    from neurallabel.core.geometry.view import View
    from neurallabel.core.pipeline.bake import label_view, prepare

    job = prepare(load_spec(cube_scene / "spec.json"), cube_scene / "out")
    photo = job.views[0]
    cam_to_world = np.eye(4)
    cam_to_world[:3, 3] = [0.0, 0.0, 0.1]  # 10 cm back from the photo's camera: the cube looks smaller
    view = View.synthetic(7, photo.intrinsics, cam_to_world, Similarity.identity())
    labels = label_view(job, view)
    assert labels.instances and labels.instances[0].px_count_visib < 200  # the photo's camera sees 200 pixels
    files = {}
    fragments = {}
    for writer in job.writers:
        files.update(writer.frame_files(job.ctx, view, labels))
        fragments[writer.name] = writer.fragment(job.ctx, view, labels)
    assert not any("/rgb/" in path for path in files)
    assert "bop/train/000000/depth/000007.png" in files and "raw/instance/000007.png" in files
    assert fragments["bop"]["camera"]["cam_t_w2c"] == pytest.approx([0.0, 0.0, 100.0])
    assert fragments["coco"]["image"] == {"id": 7, "file_name": "view_000007", "width": W, "height": H,
                                          "synthetic": True, "camera": {  # issue 17: its camera goes with it
                                              "K": photo.intrinsics.K_opencv.tolist(),
                                              "cam_to_world": cam_to_world.tolist()}}
    assert fragments["raw"]["image"] == "view_000007" and fragments["raw"]["cam_to_world"] == cam_to_world.tolist()


def test_writer_registry_is_the_one_list_of_formats() -> None:
    from neurallabel.core.errors import NeuralLabelError
    from neurallabel.core.export import FORMATS, WRITERS, get_writer

    assert FORMATS == ("bop", "coco", "raw")
    assert all(get_writer(name) is WRITERS[name] and WRITERS[name].name == name for name in FORMATS)
    with pytest.raises(NeuralLabelError, match="unknown format 'voc'") as error:
        get_writer("voc")
    assert error.value.field == "formats"


def test_bake_refuses_no_format_naming_the_field(cube_scene: Path) -> None:
    from neurallabel.core.errors import NeuralLabelError

    with pytest.raises(NeuralLabelError, match="no format") as error:
        bake(load_spec(cube_scene / "spec.json"), cube_scene / "out", formats=" , ")
    assert error.value.field == "formats" and not (cube_scene / "out").exists()


@pytest.mark.parametrize("model, distortion", [("OPENCV", (-0.15, 0.05, 0.001, 0.002, 0.01)),
                                               ("OPENCV_FISHEYE", (0.05, -0.02, 0.01, 0.003))])
def test_bop_undistortion_follows_the_projects_lens_model(model: str, distortion: tuple) -> None:
    """The cv2 maps (cv2_distortion: the one mapping of our lens parameters) send each pinhole pixel to where
    the project's own ``distort`` puts its ray in the photo; alpha 0 keeps every pinhole pixel on the photo."""
    from neurallabel.core.export.undistort import pinhole_maps, remap
    from neurallabel.core.geometry.cameras import Intrinsics, distort

    intr = Intrinsics(160, 120, 120.0, 118.0, 81.0, 59.5, model, distortion)
    maps = pinhole_maps(intr)
    rows, cols = np.mgrid[0:120:7, 0:160:9]
    xy = np.stack([(cols.ravel() - maps.K[0, 2]) / maps.K[0, 0], (rows.ravel() - maps.K[1, 2]) / maps.K[1, 1]], -1)
    xy_d = distort(intr, xy)
    K = intr.K_opencv
    expected = np.stack([K[0, 0] * xy_d[:, 0] + K[0, 2], K[1, 1] * xy_d[:, 1] + K[1, 2]], -1)
    got = np.stack([maps.map_x[rows, cols].ravel(), maps.map_y[rows, cols].ravel()], -1)
    assert np.abs(got - expected).max() < 1e-2
    assert got.min() > -1.0 and got[:, 0].max() < 160 and got[:, 1].max() < 120
    # Masks stay masks (nearest), a constant photo stays constant inside.
    assert remap(np.ones((120, 160), bool), maps, nearest=True)[10:-10, 10:-10].all()


def test_bop_refuses_a_fragment_from_before_scene_gt_coco(cube_scene: Path) -> None:
    from neurallabel.core.errors import NeuralLabelError
    from neurallabel.core.export.bop import BOP
    from neurallabel.core.pipeline.bake import label_view, prepare

    job = prepare(load_spec(cube_scene / "spec.json"), cube_scene / "out")
    fragment = BOP.fragment(job.ctx, job.views[0], label_view(job, job.views[0]))
    assert "scene_gt_coco.json" in {Path(p).name for p in BOP.assemble(job.ctx, [(0, fragment)])}
    del fragment["coco"]
    with pytest.raises(NeuralLabelError, match="frame 0 was baked before") as error:
        BOP.assemble(job.ctx, [(0, fragment)])
    assert error.value.field == "out"
