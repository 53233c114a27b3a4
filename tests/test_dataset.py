"""Dataset forms (tiny files made here), COLMAP models via pycolmap, image loading, splits and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from neurallabel.core.geometry.cameras import Intrinsics, distort, project_points
from neurallabel.core.data.colmap import intrinsics_from_colmap
from neurallabel.core.data.dataset import load_colmap, load_dataset, load_sparse_points, load_transforms
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.io.images import load_image


def pose(i: int) -> list[list[float]]:
    """A camera-to-world pose on a circle, looking at the origin (OpenGL axes)."""
    angle = 0.4 * i
    eye = np.array([3 * math.cos(angle), 3 * math.sin(angle), 1.0])
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


def write_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- transforms.json forms ---------------------------------------------------------------------------------


def test_instant_ngp_form_top_level_opencv_lens_aabb_scale_and_every_8th_frame_held_out(tmp_path):
    frames = []
    for i in range(10):
        write_image(tmp_path / "images" / f"{i:04d}.jpg", 40, 30, seed=i)
        frames.append({"file_path": f"images/{i:04d}.jpg", "sharpness": 30.0, "transform_matrix": pose(i)})
    # instant-ngp writes k1 k2 p1 p2 without naming the model.
    write_json(tmp_path / "transforms.json", {"fl_x": 35.0, "fl_y": 36.0, "cx": 20.5, "cy": 14.5, "w": 40, "h": 30,
                                              "k1": 0.05, "k2": -0.08, "p1": -0.001, "p2": 0.0002,
                                              "aabb_scale": 4, "scale": 0.33, "frames": frames})
    dataset = load_dataset(tmp_path)
    assert dataset.form == "transforms" and dataset.aabb_scale == 4.0 and len(dataset.frames) == 10
    intrinsics = dataset.frames[0].intrinsics
    assert intrinsics == Intrinsics(40, 30, 35.0, 36.0, 20.5, 14.5, "OPENCV", (0.05, -0.08, -0.001, 0.0002))
    assert [f.split for f in dataset.frames] == ["test"] + ["train"] * 7 + ["test", "train"]
    assert [f.index for f in dataset.frames] == list(range(10))
    np.testing.assert_allclose(dataset.frames[3].cam_to_data, pose(3))
    assert dataset.extra["scale"] == 0.33 and "fl_x" not in dataset.extra
    # load_transforms on the file itself reads the same thing.
    same = load_transforms(tmp_path / "transforms.json")
    assert [f.image_path for f in same.frames] == [f.image_path for f in dataset.frames]


def test_nerfstudio_form_per_frame_intrinsics_fisheye_and_split_keys(tmp_path):
    frames = []
    for i in range(4):
        size = (48, 32) if i < 2 else (64, 40)  # two cameras of different sizes, each frame declares its own
        write_image(tmp_path / "images" / f"frame_{i:05d}.png", *size, seed=i)
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": pose(i)[:3],  # 3x4 is fine
                       "camera_model": "OPENCV_FISHEYE", "fl_x": 30.0 + i, "fl_y": 31.0 + i,
                       "cx": size[0] / 2, "cy": size[1] / 2, "w": size[0], "h": size[1],
                       "k1": 0.01 * i, "k2": -0.002, "k3": 0.0005, "k4": -0.0001,
                       "split": ["train", "val", "test", "train"][i]})
    write_json(tmp_path / "transforms.json", {"frames": frames, "applied_transform": np.eye(4)[:3].tolist()})
    dataset = load_dataset(tmp_path / "transforms.json")
    assert [f.split for f in dataset.frames] == ["train", "val", "test", "train"]
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]
    third = dataset.frames[2].intrinsics
    assert (third.width, third.height, third.fx, third.model) == (64, 40, 32.0, "OPENCV_FISHEYE")
    assert third.distortion == (0.02, -0.002, 0.0005, -0.0001)
    np.testing.assert_allclose(dataset.frames[1].cam_to_data, pose(1))


def test_nerfstudio_split_filename_lists(tmp_path):
    frames = []
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.png", 20, 10, seed=i)
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": pose(i)})
    write_json(tmp_path / "transforms.json", {"fl_x": 20.0, "w": 20, "h": 10, "frames": frames,
                                              "train_filenames": ["images/0.png", "images/2.png"],
                                              "test_filenames": ["./images/1.png"]})
    assert [f.split for f in load_dataset(tmp_path).frames] == ["train", "test", "train"]


def test_instant_ngp_is_fisheye_flag(tmp_path):
    write_image(tmp_path / "a.png", 20, 10)
    write_json(tmp_path / "transforms.json", {"fl_x": 10.0, "fl_y": 10.0, "w": 20, "h": 10, "is_fisheye": True,
                                              "k1": 0.1, "k2": 0.01, "k3": 0.0, "k4": 0.0,
                                              "frames": [{"file_path": "a.png", "transform_matrix": pose(0)}]})
    intrinsics = load_dataset(tmp_path).frames[0].intrinsics
    assert intrinsics.model == "OPENCV_FISHEYE" and intrinsics.distortion == (0.1, 0.01, 0.0, 0.0)


def test_nerf_synthetic_split_files_camera_angle_x_extensionless_paths_and_rgba(tmp_path):
    angle = 0.6911112070083618
    index = 0
    rgba = {}
    for split, count in (("train", 3), ("val", 1), ("test", 2)):
        frames = []
        for i in range(count):
            rgba[(split, i)] = write_image(tmp_path / split / f"r_{i}.png", 16, 16, "RGBA", seed=index)
            frames.append({"file_path": f"./{split}/r_{i}", "rotation": 0.012, "transform_matrix": pose(index)})
            index += 1
        write_json(tmp_path / f"transforms_{split}.json", {"camera_angle_x": angle, "frames": frames})
    dataset = load_dataset(tmp_path)
    assert dataset.form == "transforms_splits"
    assert [f.split for f in dataset.frames] == ["train"] * 3 + ["val"] + ["test"] * 2
    assert [f.index for f in dataset.frames] == list(range(6))
    frame = dataset.frames[4]
    assert frame.image_path == tmp_path / "test" / "r_0.png"
    assert frame.intrinsics.fx == pytest.approx(8.0 / math.tan(angle / 2))
    assert (frame.intrinsics.cx, frame.intrinsics.cy) == (8.0, 8.0)
    # RGBA is composited on white by default; background=None keeps the alpha channel.
    pixels = rgba[("test", 0)].astype(np.float32) / 255.0
    alpha = pixels[..., 3:]
    np.testing.assert_allclose(load_image(frame), pixels[..., :3] * alpha + (1 - alpha), atol=1e-6)
    np.testing.assert_allclose(load_image(frame, background=None), pixels, atol=1e-6)
    np.testing.assert_allclose(load_image(frame, background=(0.0, 0.0, 0.0)), pixels[..., :3] * alpha, atol=1e-6)


# --- downscaling and images --------------------------------------------------------------------------------


def test_downscale_on_load_scales_intrinsics_and_area_averages_images(tmp_path):
    # 2x2 blocks of one colour each: a 1/2 downscale must give exactly the block colours.
    blocks = np.random.default_rng(5).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    Image.fromarray(np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)).save(tmp_path / "a.png")
    write_json(tmp_path / "transforms.json", {"fl_x": 15.0, "cx": 10.0, "cy": 6.0, "w": 20, "h": 12,
                                              "frames": [{"file_path": "a.png", "transform_matrix": pose(0)}]})
    dataset = load_dataset(tmp_path, downscale=2)
    frame = dataset.frames[0]
    assert frame.intrinsics == Intrinsics(10, 6, 7.5, 7.5, 5.0, 3.0)
    assert frame.source_size == (20, 12) and frame.downscale == 2.0
    image = load_image(frame)
    assert image.shape == (6, 10, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, blocks / 255.0, atol=1e-6)
    # Relative to the file: downscale=1 gives the full image, 4 a quarter (rounded) size.
    assert load_image(frame, downscale=1).shape == (12, 20, 3)
    assert load_image(frame, downscale=4).shape == (3, 5, 3)
    full = load_image(load_dataset(tmp_path).frames[0])
    np.testing.assert_allclose(full.reshape(6, 2, 10, 2, 3).mean(axis=(1, 3)), image, atol=1e-6)
    with pytest.raises(NeuralLabelError, match="downscale"):
        load_dataset(tmp_path, downscale=0.5)


def test_greyscale_images_become_grey_rgb_with_their_precision(tmp_path):
    grey16 = np.random.default_rng(7).integers(0, 65536, (10, 20), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "a.png")
    Image.fromarray((grey16 >> 8).astype(np.uint8), "L").save(tmp_path / "b.png")
    write_json(tmp_path / "transforms.json", {"fl_x": 10.0, "frames": [
        {"file_path": "a.png", "transform_matrix": pose(0)}, {"file_path": "b.png", "transform_matrix": pose(1)}]})
    a, b = (load_image(f) for f in load_dataset(tmp_path).frames)
    assert a.shape == b.shape == (10, 20, 3)
    np.testing.assert_allclose(a[..., 1], grey16 / 65535.0, atol=1e-7)
    np.testing.assert_allclose(b[..., 2], (grey16 >> 8) / 255.0, atol=1e-7)


def test_load_image_refuses_a_file_that_changed_size(tmp_path):
    write_image(tmp_path / "a.png", 20, 10)
    write_json(tmp_path / "transforms.json", {"fl_x": 10.0, "frames": [{"file_path": "a.png",
                                                                         "transform_matrix": pose(0)}]})
    frame = load_dataset(tmp_path).frames[0]
    write_image(tmp_path / "a.png", 22, 10)
    with pytest.raises(NeuralLabelError, match=r"a.png: image is 22x10 but its camera expects 20x10"):
        load_image(frame)


# --- missing images, bad input ------------------------------------------------------------------------------


def test_missing_images_are_skipped_and_listed_or_refused_with_strict(tmp_path):
    frames = []
    for i in range(5):
        if i != 2:
            write_image(tmp_path / f"{i}.png", 20, 10, seed=i)
        frames.append({"file_path": f"{i}.png", "transform_matrix": pose(i)})
    write_json(tmp_path / "transforms.json", {"fl_x": 10.0, "w": 20, "h": 10, "frames": frames})
    dataset = load_dataset(tmp_path)
    assert dataset.skipped == ["2.png"]
    assert [f.image_path.name for f in dataset.frames] == ["0.png", "1.png", "3.png", "4.png"]
    # A frame's index is its position in transforms.json, photo or not: spec frame 3 is still 3.png.
    assert [f.index for f in dataset.frames] == [0, 1, 3, 4]
    assert dataset.frame_count == 5 and dataset.frame(3).image_path.name == "3.png"
    assert dataset.by_index[4].image_path.name == "4.png" and not dataset.has_frame(2)
    with pytest.raises(NeuralLabelError, match=r"frame 2 is not loaded: its photo .*2.png does not exist"):
        dataset.frame(2)
    with pytest.raises(NeuralLabelError, match=r"frame 5 is not loaded: its frame does not exist"):
        dataset.frame(5)
    assert dataset.skipped_summary() == (f"{tmp_path / 'transforms.json'}: skipped 1 of 5 frames whose image is "
                                         f"missing or unreadable ({tmp_path / '2.png'} does not exist)")
    assert load_dataset(tmp_path / "transforms.json").frames[0].file_path == "0.png"
    with pytest.raises(NeuralLabelError, match=r"frame 2: image .*2.png does not exist"):
        load_dataset(tmp_path, strict=True)


def test_fox_lists_67_frames_of_which_50_photos_exist(shared_data):
    dataset = load_dataset(shared_data / "fox", downscale=4)
    assert len(dataset.frames) == 50 and len(dataset.skipped) == 17
    assert "skipped 17 of 67 frames" in dataset.skipped_summary()
    assert dataset.aabb_scale == 4.0
    frame = dataset.frames[0]
    assert frame.intrinsics.model == "OPENCV" and len(frame.intrinsics.distortion) == 4
    assert (frame.intrinsics.width, frame.intrinsics.height) == (270, 480) and frame.source_size == (1080, 1920)
    assert load_image(frame).shape == (480, 270, 3)
    # Every 8th listed frame is held out; frames keep their listed index whether or not their photo exists.
    assert all((f.split == "test") == (f.index % 8 == 0) for f in dataset.frames)
    assert dataset.frame_count == 67 and sorted(dataset.by_index) == [f.index for f in dataset.frames]
    with pytest.raises(NeuralLabelError, match="does not exist"):
        load_dataset(shared_data / "fox", strict=True)


@pytest.mark.parametrize("content, message", [
    ('{"frames": [', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"fl_x": 10}', "missing the 'frames' list"),
    ('{"fl_x": 10, "frames": []}', "0 usable frames"),
    ('{"fl_x": 10, "frames": [{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}]}', "4x4"),
    ('{"frames": [{"file_path": "a.png", "transform_matrix": %s}]}' % json.dumps(pose(0)), "no focal length"),
    ('{"fl_x": 10, "camera_model": "FOV", "frames": [{"file_path": "a.png", "transform_matrix": %s}]}'
     % json.dumps(pose(0)), "not supported"),
    ('{"fl_x": 10, "w": 30, "h": 10, "frames": [{"file_path": "a.png", "transform_matrix": %s}]}'
     % json.dumps(pose(0)), "image is 20x10 but the camera says 30x10"),
], ids=["malformed", "not_object", "no_frames", "zero_frames", "bad_matrix", "no_focal", "bad_model",
        "size_mismatch"])
def test_bad_transforms_give_one_clear_error_naming_the_file(tmp_path, content, message):
    write_image(tmp_path / "a.png", 20, 10)
    (tmp_path / "transforms.json").write_text(content)
    with pytest.raises(NeuralLabelError, match=message) as info:
        load_dataset(tmp_path)
    assert str(tmp_path / "transforms.json") in str(info.value) and "\n" not in str(info.value)


def test_images_of_mixed_sizes_sharing_one_camera_are_refused(tmp_path):
    write_image(tmp_path / "a.png", 20, 10)
    write_image(tmp_path / "b.png", 24, 10)
    write_json(tmp_path / "transforms.json", {"camera_angle_x": 0.8, "frames": [
        {"file_path": "a.png", "transform_matrix": pose(0)}, {"file_path": "b.png", "transform_matrix": pose(1)}]})
    with pytest.raises(NeuralLabelError, match=r"images of mixed sizes \(20x10, 24x10\)"):
        load_dataset(tmp_path)


def test_paths_that_hold_no_dataset(tmp_path):
    with pytest.raises(NeuralLabelError, match="does not exist"):
        load_dataset(tmp_path / "nothing")
    with pytest.raises(NeuralLabelError, match="no dataset here"):
        load_dataset(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NeuralLabelError, match="not a transforms.json"):
        load_dataset(tmp_path / "notes.txt")


# --- sparse points from transforms.json ----------------------------------------------------------------------


def test_sparse_points_npz_maps_onto_loaded_frames_and_downscaled_pixels(tmp_path):
    frames = []
    for i in range(3):
        if i != 1:
            write_image(tmp_path / f"{i}.png", 40, 20, seed=i)
        frames.append({"file_path": f"{i}.png", "transform_matrix": pose(i)})
    write_json(tmp_path / "transforms.json", {"fl_x": 30.0, "w": 40, "h": 20, "frames": frames,
                                              "sparse_points": "sparse_points.npz"})
    np.savez(tmp_path / "sparse_points.npz", points=np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]]),
             colors=np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8), errors=np.array([0.5, 0.7]),
             obs_point=np.array([0, 0, 1, 1]), obs_frame=np.array([0, 1, 1, 2]),
             obs_pixel=np.array([[10.0, 4.0], [12.0, 6.0], [30.0, 8.0], [39.5, 19.5]]),
             frame_names=np.array(["0.png", "1.png", "2.png"]))
    dataset = load_dataset(tmp_path, downscale=2)  # frame "1.png" is missing: its observations go
    sparse = load_sparse_points(dataset)
    assert len(sparse) == 2 and sparse.colors.dtype == np.uint8
    np.testing.assert_array_equal(sparse.obs_point, [0, 1])
    np.testing.assert_array_equal(sparse.obs_frame, [0, 2])  # "2.png" stays Frame.index 2 with "1.png" skipped
    np.testing.assert_allclose(sparse.obs_pixel, [[5.0, 2.0], [19.75, 9.75]])
    write_json(tmp_path / "transforms.json", {"fl_x": 30.0, "w": 40, "h": 20, "frames": frames})
    assert load_sparse_points(load_dataset(tmp_path)) is None


# --- COLMAP models -------------------------------------------------------------------------------------------


COLMAP_CAMERAS = {
    "SIMPLE_PINHOLE": [80.0, 48.0, 32.0],
    "PINHOLE": [80.0, 82.0, 48.5, 31.5],
    "SIMPLE_RADIAL": [80.0, 48.0, 32.0, 0.05],
    "RADIAL": [80.0, 48.0, 32.0, 0.05, -0.02],
    "OPENCV": [80.0, 82.0, 48.3, 31.7, 0.05, -0.08, -0.001, 0.0015],
    "FULL_OPENCV": [80.0, 82.0, 48.3, 31.7, 0.05, -0.08, -0.001, 0.0015, 0.01, 0.0, 0.0, 0.0],
    "OPENCV_FISHEYE": [70.0, 72.0, 48.3, 31.7, 0.02, -0.01, 0.003, -0.001],
    "SIMPLE_RADIAL_FISHEYE": [70.0, 48.3, 31.7, 0.02],
    "RADIAL_FISHEYE": [70.0, 48.3, 31.7, 0.02, -0.01],
}


@pytest.mark.parametrize("model", list(COLMAP_CAMERAS))
def test_colmap_camera_models_project_like_colmap(model):
    camera = pycolmap.Camera(model=model, width=96, height=64, params=COLMAP_CAMERAS[model])
    intrinsics = intrinsics_from_colmap(camera)
    rng = np.random.default_rng(0)
    cam_points = np.concatenate([rng.uniform(-0.6, 0.6, (200, 2)), np.ones((200, 1))], axis=1)
    cam_points *= rng.uniform(0.5, 4.0, (200, 1))
    theirs = camera.img_from_cam(cam_points)
    xy = distort(intrinsics, cam_points[:, :2] / cam_points[:, 2:])
    ours = xy * [intrinsics.fx, intrinsics.fy] + [intrinsics.cx, intrinsics.cy]
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_unsupported_colmap_camera_model_is_refused():
    camera = pycolmap.Camera(model="FOV", width=96, height=64, params=[80.0, 48.0, 32.0, 0.1])
    with pytest.raises(NeuralLabelError, match="FOV"):
        intrinsics_from_colmap(camera)


def synthetic_colmap_scene(root: Path, model: str, text: bool) -> pycolmap.Reconstruction:
    """A COLMAP project made by pycolmap's synthesizer: ``root/sparse/0`` + ``root/images``."""
    options = pycolmap.SyntheticDatasetOptions()
    options.num_rigs, options.num_cameras_per_rig, options.num_frames_per_rig = 2, 1, 4
    options.num_points3D = 60
    options.camera_width, options.camera_height = 96, 64
    options.camera_model_id = getattr(pycolmap.CameraModelId, model)
    options.camera_params = COLMAP_CAMERAS[model]
    reconstruction = pycolmap.synthesize_dataset(options)
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (reconstruction.write_text if text else reconstruction.write_binary)(str(model_dir))
    for image in reconstruction.images.values():
        write_image(root / "images" / image.name, 96, 64, seed=image.image_id)
    return reconstruction


@pytest.mark.parametrize("model, text", [("SIMPLE_RADIAL", False), ("OPENCV", True), ("OPENCV_FISHEYE", False)])
def test_colmap_model_loads_with_exact_poses_pixels_and_points(tmp_path, model, text):
    reconstruction = synthetic_colmap_scene(tmp_path, model, text)
    dataset = load_dataset(tmp_path)
    assert dataset.form == "colmap" and len(dataset.frames) == 8
    names = [f.image_path.name for f in dataset.frames]
    assert names == sorted(im.name for im in reconstruction.images.values())
    assert [f.split for f in dataset.frames] == ["test"] + ["train"] * 7
    # Every observation reprojects exactly through our pose and camera: COLMAP's world-to-camera (OpenCV) pose
    # became an OpenGL camera-to-world, and COLMAP's pixel convention is ours (no half-pixel shift).
    by_name = {im.name: im for im in reconstruction.images.values()}
    for frame in dataset.frames:
        image = by_name[frame.image_path.name]
        observed = [(reconstruction.points3D[p.point3D_id].xyz, p.xy) for p in image.points2D if p.has_point3D()]
        pixels, z = project_points(frame.intrinsics, frame.cam_to_data, np.array([o[0] for o in observed]))
        assert np.all(z > 0)
        np.testing.assert_allclose(pixels, np.array([o[1] for o in observed]), atol=1e-6)
        np.testing.assert_allclose(frame.cam_to_data[:3, 3], image.projection_center(), atol=1e-9)
    sparse = load_sparse_points(dataset)
    assert len(sparse) == 60 and len(sparse.obs_point) == reconstruction.compute_num_observations()
    residual = []
    for frame in dataset.frames:
        rows = sparse.obs_frame == frame.index
        pixels, _ = project_points(frame.intrinsics, frame.cam_to_data, sparse.points[sparse.obs_point[rows]])
        residual.append(np.abs(pixels - sparse.obs_pixel[rows]).max())
    assert max(residual) < 1e-6


def test_colmap_model_downscaled_with_missing_image_and_explicit_images_dir(tmp_path):
    synthetic_colmap_scene(tmp_path / "project", "OPENCV", False)
    images = sorted((tmp_path / "project" / "images").iterdir())
    images[3].unlink()
    dataset = load_colmap(tmp_path / "project" / "sparse" / "0", images_dir=tmp_path / "project" / "images",
                          downscale=2)
    assert len(dataset.frames) == 7 and dataset.skipped == [images[3].name]
    assert (dataset.frames[0].intrinsics.width, dataset.frames[0].intrinsics.height) == (48, 32)
    sparse = load_sparse_points(dataset)
    assert set(np.unique(sparse.obs_frame)) == set(range(8)) - {3}  # image 3 skipped, the others keep their index
    assert [f.index for f in dataset.frames] == [0, 1, 2, 4, 5, 6, 7] and dataset.frame_count == 8
    full = load_sparse_points(load_colmap(tmp_path / "project", downscale=1))
    assert len(full.obs_point) == len(sparse.obs_point)  # same frames, skipped ones aside
    np.testing.assert_allclose(sparse.obs_pixel, full.obs_pixel / 2)
    with pytest.raises(NeuralLabelError, match="does not exist"):
        load_colmap(tmp_path / "project", strict=True)
    assert load_image(dataset.frames[0]).shape == (32, 48, 3)


def test_colmap_bad_input(tmp_path):
    synthetic_colmap_scene(tmp_path / "p", "OPENCV", False)
    (tmp_path / "p" / "sparse" / "0" / "images.bin").write_bytes(b"\x07garbage")
    with pytest.raises(NeuralLabelError, match="not a readable COLMAP sparse model"):
        load_dataset(tmp_path / "p")
    synthetic_colmap_scene(tmp_path / "q", "OPENCV", False)
    for image in (tmp_path / "q" / "images").iterdir():
        image.rename(tmp_path / "q" / image.name.replace(".png", ".jpg"))
    (tmp_path / "q" / "images").rmdir()
    with pytest.raises(NeuralLabelError, match="cannot find the model's images"):
        load_dataset(tmp_path / "q")
