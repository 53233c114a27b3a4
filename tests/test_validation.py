"""Hostile input: every bad dataset, photo or spec is one NeuralLabelError naming the file, frame and key.

Nothing here may hang (a FIFO given as a file is refused before it is opened) or leak another exception.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.io.images import validate_images
from neurallabel.core.io.jsonfile import read_json
from neurallabel.core.spec import load_spec, parse_spec

from test_spec import spec_dir, write  # noqa: F401  (the fixture: a valid spec with its dataset and mesh)

FRAME_POSE = [[1.0, 0.0, 0.0, 0.1], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]


@contextmanager
def no_hang(seconds: int = 10):
    """Fail the test instead of hanging it (a FIFO opened for reading blocks until a writer comes)."""
    def stop(signum, frame):
        raise AssertionError(f"hung for {seconds} s")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def photos(folder: Path, count: int, size=(20, 10)) -> None:
    for i in range(count):
        Image.fromarray(np.full((size[1], size[0], 3), 10 * i, np.uint8)).save(folder / f"{i:04d}.png")


def transforms(folder: Path, count: int, text: str | None = None, **top) -> Path:
    data = {"fl_x": 10.0, "w": 20, "h": 10, **top,
            "frames": [{"file_path": f"{i:04d}.png", "transform_matrix": FRAME_POSE} for i in range(count)]}
    path = folder / "transforms.json"
    path.write_text(text if text is not None else json.dumps(data))
    return path


# --- item 5: a missing photo keeps every other frame's index ------------------------------------------------


def test_missing_photo_does_not_shift_later_frames(tmp_path):
    photos(tmp_path, 8)
    transforms(tmp_path, 8)
    (tmp_path / "0003.png").unlink()
    dataset = load_dataset(tmp_path)
    assert dataset.frame(5).image_path.name == "0005.png"  # spec frame 5 is photo 0005, not 0006
    assert [f.index for f in dataset.frames] == [0, 1, 2, 4, 5, 6, 7]
    assert all(f.image_path.name == f"{f.index:04d}.png" for f in dataset.frames)
    assert dataset.skipped == ["0003.png"]


@pytest.mark.parametrize("kind", ["device", "directory", "fifo"])
def test_photo_that_is_not_a_regular_file_is_skipped_with_its_reason(tmp_path, kind):
    photos(tmp_path, 3)
    if kind == "device":
        target = "/dev/zero"
    else:
        target = str(tmp_path / "odd.png")
        os.mkdir(target) if kind == "directory" else os.mkfifo(target)
    data = json.loads(transforms(tmp_path, 3).read_text())
    data["frames"][1]["file_path"] = target
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with no_hang():
        dataset = load_dataset(tmp_path)
        assert [f.index for f in dataset.frames] == [0, 2] and dataset.skipped == [target]
        assert "is not a regular file" in dataset.skip_reasons[1]
        assert "is not a regular file" in dataset.skipped_summary()
        with pytest.raises(NeuralLabelError, match=r"frame 1: image .* is not a regular file"):
            load_dataset(tmp_path, strict=True)


def test_spec_frames_naming_a_skipped_frame_are_refused(spec_dir):  # noqa: F811
    (spec_dir / "images" / "000001.png").unlink()
    path = write(spec_dir, lambda s: s.update(frames=[0, 1]))
    with pytest.raises(NeuralLabelError, match=r"'frames': frame 1 of .* was skipped \(its photo .* does not exist\)"):
        load_spec(path)
    assert load_spec(write(spec_dir, lambda s: s.update(frames=[0, 2]))).frames == [0, 2]


# --- item 6: camera values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, message", [
    ("fl_x", "NaN", "'fl_x' must be a finite positive number"),
    ("cx", "NaN", "'cx' must be a finite number"),
    ("fl_x", "Infinity", "'fl_x' must be a finite positive number"),
    ("fl_x", "-5", "'fl_x' must be a finite positive number"),
    ("camera_angle_x", "0", "'camera_angle_x' must be a finite positive number"),
    ("camera_angle_x", "4", "'camera_angle_x' must be a field of view"),
    ("w", "1e400", "'w' must be a finite positive number"),
    ("k1", "NaN", "'k1' must be a finite number"),
    ("fl_x", "true", "'fl_x' must be a finite positive number"),
])
def test_non_finite_intrinsics_name_file_frame_and_key(tmp_path, key, value, message):
    photos(tmp_path, 2)
    text = transforms(tmp_path, 2).read_text()
    top = {"fl_x": "10.0", "w": "20", "h": "10"}
    if key == "camera_angle_x":
        top.pop("fl_x")
    top[key] = value
    head = ", ".join(f'"{k}": {v}' for k, v in top.items())
    path = tmp_path / "transforms.json"
    path.write_text("{" + head + ", " + text[text.index('"frames"'):])
    with pytest.raises(NeuralLabelError, match=message) as info:
        load_dataset(tmp_path)
    assert str(path) in str(info.value) and "frame 0" in str(info.value)


@pytest.mark.parametrize("pose, message", [
    ([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]], "not a rigid transform"),
    ([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 0]], r"last row must be \[0, 0, 0, 1\]"),
    ([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, -1.0, 0], [0, 0, 0, 1]], "reflection"),
    ([[int("9" * 400), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "finite 4x4"),
])
def test_camera_poses_must_be_rigid(tmp_path, pose, message):
    photos(tmp_path, 3)
    data = json.loads(transforms(tmp_path, 3).read_text())
    data["frames"][2]["transform_matrix"] = pose
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(NeuralLabelError, match=message) as info:
        load_dataset(tmp_path)
    assert "frame 2" in str(info.value) and "transforms.json" in str(info.value)


# --- item 7: photos must decode --------------------------------------------------------------------------------


def test_truncated_photo_is_refused_naming_the_frame(tmp_path):
    photos(tmp_path, 3, size=(64, 48))
    transforms(tmp_path, 3, **{"w": 64, "h": 48})
    data = (tmp_path / "0001.png").read_bytes()
    (tmp_path / "0001.png").write_bytes(data[:len(data) // 2])
    dataset = load_dataset(tmp_path)  # the header is intact: the photo loads as a frame
    done = []
    with pytest.raises(NeuralLabelError, match=r"frame 1: photo .*0001.png does not decode"):
        validate_images(dataset.frames, progress=lambda d, t, s: done.append(d))
    assert done == [1]  # frame 0 was checked, frame 1 stopped it
    validate_images([dataset.frame(0), dataset.frame(2)])


# --- item 8: the spec parser and user JSON ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**63, 10**400, 1e308, 1e7, float("nan"), 0, True])
def test_units_to_mm_must_be_a_sane_positive_number(spec_dir, value):  # noqa: F811
    data = json.loads((spec_dir / "spec.json").read_text())
    data["units_to_mm"] = value
    with pytest.raises(NeuralLabelError, match="'units_to_mm' must be a positive number up to 1e"):
        parse_spec(data, spec_dir, source="spec.json", load_meshes=False)


def test_deeply_nested_spec_is_one_error(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(NeuralLabelError, match="nested too deeply"):
        load_spec(path)


def test_duplicate_keys_are_refused_in_specs_and_transforms(spec_dir, tmp_path):  # noqa: F811
    text = (spec_dir / "spec.json").read_text()
    (spec_dir / "dup.json").write_text(text.replace('"units_to_mm": 1000.0', '"units_to_mm": 1000.0, "units_to_mm": 1.0'))
    with pytest.raises(NeuralLabelError, match=r"dup.json: the key 'units_to_mm' appears twice"):
        load_spec(spec_dir / "dup.json")
    photos(tmp_path, 1)
    path = transforms(tmp_path, 1, text='{"fl_x": 10, "fl_x": 12, "frames": []}')
    with pytest.raises(NeuralLabelError, match=r"transforms.json: the key 'fl_x' appears twice"):
        load_dataset(path)
    (tmp_path / "ok.json").write_text('{"a": {"a": 1}}')  # one key in two objects is fine
    assert read_json(tmp_path / "ok.json") == {"a": {"a": 1}}


@pytest.mark.parametrize("kind", ["device", "directory", "fifo"])
def test_spec_mesh_and_transforms_paths_that_are_not_regular_files(spec_dir, tmp_path, kind):  # noqa: F811
    if kind == "device":
        odd = Path("/dev/zero")
    else:
        odd = tmp_path / "odd"
        os.mkdir(odd) if kind == "directory" else os.mkfifo(odd)
    with no_hang():
        with pytest.raises(NeuralLabelError, match=r"label spec file is not a regular file"):
            load_spec(odd)
        with pytest.raises(NeuralLabelError, match=r"mesh file .* is not a regular file"):
            load_spec(write(spec_dir, lambda s: s["objects"][0].update(mesh=str(odd))))
        if kind != "directory":  # 'data' may name a dataset folder
            with pytest.raises(NeuralLabelError, match=r"'data': .* is not a regular file"):
                load_spec(write(spec_dir, lambda s: s.update(data=str(odd))))
            with pytest.raises(NeuralLabelError, match=r"is not a regular file"):
                load_dataset(odd)
        (tmp_path / "ds").mkdir(exist_ok=True)
        link = tmp_path / "ds" / "transforms.json"
        link.unlink(missing_ok=True)
        link.symlink_to(odd)
        with pytest.raises(NeuralLabelError, match=r"transforms.json: is not a regular file"):
            load_dataset(tmp_path / "ds")


def test_bake_with_a_missing_photo_labels_the_right_frames(small_scene, tmp_path):
    """Spec frames are dataset positions: with photo 3 gone, frame 5 is still photo 5 and its im_id is 5."""
    import shutil

    from neurallabel.core.pipeline.bake import bake
    from neurallabel.core.spec import spec_from_scene

    scene = tmp_path / "scene"
    shutil.copytree(small_scene, scene)
    names = [f["file_path"] for f in json.loads((scene / "transforms.json").read_text())["frames"]]
    (scene / names[3]).unlink()
    spec = spec_from_scene(scene)
    spec.frames = [4, 5]
    bake(spec, tmp_path / "out", formats=["coco"])
    images = json.loads((tmp_path / "out" / "coco" / "annotations.json").read_text())["images"]
    assert [(im["id"], im["file_name"]) for im in images] == [(4, names[4]), (5, names[5])]
    spec.frames = [3]
    with pytest.raises(NeuralLabelError, match=r"frame 3 is not loaded: its photo .* does not exist"):
        bake(spec, tmp_path / "out3", formats=["coco"])
