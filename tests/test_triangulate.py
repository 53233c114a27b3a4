"""`neurallabel sfm --known-poses`: points triangulated from photos with the dataset's own cameras held fixed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.cli import main
from neurallabel.core.data.dataset import load_dataset, load_sparse_points
from neurallabel.core.data.triangulate import triangulate_known_poses
from neurallabel.core.data.truth import load_scene_truth
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.geometry.cameras import Intrinsics, project_points


def posed_copy(scene: Path, target: Path, missing: tuple[int, ...] = ()) -> Path:
    """A transforms.json in ``target`` naming the scene's photos by absolute path, frames ``missing`` pointing at
    photos that are not there."""
    data = json.loads((scene / "transforms.json").read_text())
    for i, frame in enumerate(data["frames"]):
        frame["file_path"] = str((scene / frame["file_path"]).resolve())
        if i in missing:
            frame["file_path"] = str(scene / "images" / f"gone_{i}.png")
    target.mkdir(parents=True, exist_ok=True)
    (target / "transforms.json").write_text(json.dumps(data))
    return target / "transforms.json"


@pytest.fixture(scope="module")
def triangulated(posed_scene, tmp_path_factory) -> tuple[Path, Path, dict]:
    """``sfm --known-poses`` on the posed scene (frame 3's photo missing): the given transforms.json, the output
    folder and the command's JSON result."""
    import contextlib
    import io

    tmp_path = tmp_path_factory.mktemp("triangulated")
    given_path = posed_copy(posed_scene, tmp_path / "given", missing=(3,))
    out = tmp_path / "data"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["sfm", str(posed_scene / "images"), "--out", str(out), "--known-poses", str(given_path),
                     "--json"])
    lines = [json.loads(line) for line in printed.getvalue().strip().splitlines()]
    assert code == 0, lines[-1]
    return given_path, out, lines[-1]


def test_points_of_a_generated_scene_lie_on_its_true_surfaces_and_the_cameras_stay(posed_scene, triangulated):
    given_path, out, result = triangulated
    assert result["points"] > 100 and result["unregistered"] and result["known_poses"] == str(given_path)

    given, made = load_dataset(given_path), load_dataset(out)
    # the same frames, poses, intrinsics and splits; the frame without a photo stays listed (its index too)
    assert [f.index for f in made.frames] == [f.index for f in given.frames] and 3 not in made.by_index
    assert made.frame_count == given.frame_count and len(made.skipped) == 1
    for a, b in zip(made.frames, given.frames):
        assert a.image_path.resolve() == b.image_path.resolve() and a.split == b.split
        assert a.intrinsics == b.intrinsics and np.allclose(a.cam_to_data, b.cam_to_data, atol=1e-12)
    assert not any(Path(f["file_path"]).is_absolute()
                   for f in json.loads((out / "transforms.json").read_text())["frames"])

    # Each observed point sits on the surface Cycles saw at its pixel (measured: median 0.3 %, 83 % within 1 %;
    # the rest are mostly points on a depth edge, where the pixel's truth is the surface behind).
    sparse = load_sparse_points(made)
    truth = load_scene_truth(posed_scene)
    relative = []
    for frame in made.frames:
        rows = sparse.obs_frame == frame.index
        pixels, z = project_points(frame.intrinsics, frame.cam_to_data, sparse.points[sparse.obs_point[rows]])
        assert np.median(np.linalg.norm(pixels - sparse.obs_pixel[rows], axis=1)) < 1.0
        depth = truth.z_depth(frame.index)
        col = np.clip(sparse.obs_pixel[rows, 0].astype(int), 0, depth.shape[1] - 1)
        row = np.clip(sparse.obs_pixel[rows, 1].astype(int), 0, depth.shape[0] - 1)
        relative.append(np.abs(z - depth[row, col]) / depth[row, col])
    relative = np.concatenate(relative)
    assert np.median(relative) < 0.005 and np.mean(relative < 0.01) > 0.75, np.percentile(relative, [50, 90])


def test_depth_supervision_trains_on_the_triangulated_points_and_needs_them(posed_scene, triangulated, tmp_path,
                                                                            capsys):
    _, out, _ = triangulated
    for form in ("kl", "mse"):
        code = main(["train", str(out), "--out", str(tmp_path / form / "field.pt"), "--steps", "20", "--downscale",
                     "4", "--device", "cpu", "--depth-supervision", "--depth-loss", form])
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    # the generated scene's own transforms.json has no points: refused in one line, naming the option
    code = main(["train", str(posed_scene), "--out", str(tmp_path / "none" / "field.pt"), "--steps", "5",
                 "--depth-supervision"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "--known-poses" in errors[0], errors


def test_fox_points_with_the_published_poses_reproject(shared_data, tmp_path):
    fox = shared_data / "fox"
    data = json.loads((fox / "transforms.json").read_text())
    data["frames"] = [f for f in data["frames"] if (fox / f["file_path"]).is_file()][:8]
    given = tmp_path / "fox"
    (given / "images").mkdir(parents=True)
    for frame in data["frames"]:
        (given / frame["file_path"]).symlink_to(fox / frame["file_path"])
    (given / "transforms.json").write_text(json.dumps(data))

    result = triangulate_known_poses(given / "images", tmp_path / "out", given, downscale=4)
    assert result.num_points > 300 and result.num_registered == 8
    made = load_dataset(tmp_path / "out")
    sparse = load_sparse_points(made)
    residuals = []
    for frame in made.frames:  # through our lens model (the fox's distortion), at full size
        rows = sparse.obs_frame == frame.index
        pixels, z = project_points(frame.intrinsics, frame.cam_to_data, sparse.points[sparse.obs_point[rows]])
        assert np.all(z > 0)
        residuals.append(np.linalg.norm(pixels - sparse.obs_pixel[rows], axis=1))
    assert np.median(np.concatenate(residuals)) < 2.0  # COLMAP's SIFT on quarter-size images
    # the photos stay links in the given folder; nothing was written there
    assert sorted(p.name for p in given.iterdir()) == ["images", "transforms.json"]
    assert all(os.path.islink(given / f["file_path"]) for f in data["frames"])


def test_known_poses_refuse_photos_outside_the_folder_and_the_given_dataset_folder(small_scene, tmp_path, capsys):
    given_path = posed_copy(small_scene, tmp_path / "given")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(NeuralLabelError) as caught:
        triangulate_known_poses(elsewhere, tmp_path / "out", given_path)
    assert caught.value.field == "known_poses" and "is not inside" in str(caught.value)
    assert not (tmp_path / "out").exists()
    # writing over the given transforms.json is refused (exit 2), and it stays as it was
    before = given_path.read_text()
    code = main(["sfm", str(small_scene / "images"), "--out", str(given_path.parent), "--known-poses",
                 str(given_path)])
    assert code == 2 and given_path.read_text() == before
    assert "transforms.json" in capsys.readouterr().err
    code = main(["sfm", str(small_scene / "images"), "--out", str(tmp_path / "o2"), "--known-poses",
                 str(tmp_path / "nothing.json")])
    err = capsys.readouterr().err
    assert code == 2 and "nothing.json" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("intrinsics", [
    Intrinsics(640, 480, 500.0, 502.0, 320.5, 240.25),
    Intrinsics(640, 480, 500.0, 502.0, 320.5, 240.25, "OPENCV", (0.1, -0.02, 0.001, -0.002)),
    Intrinsics(640, 480, 500.0, 502.0, 320.5, 240.25, "OPENCV", (0.1, -0.02, 0.001, -0.002, 0.003)),
    Intrinsics(640, 480, 300.0, 300.0, 320.0, 240.0, "OPENCV_FISHEYE", (0.05, -0.01, 0.002, -0.001))])
def test_a_known_camera_goes_to_colmap_and_back_unchanged(intrinsics):
    from neurallabel.core.data.colmap import intrinsics_from_colmap
    from neurallabel.core.data.triangulate import colmap_camera

    back = intrinsics_from_colmap(colmap_camera(intrinsics, 7))
    assert back.model == intrinsics.model and (back.width, back.height) == (intrinsics.width, intrinsics.height)
    assert (back.fx, back.fy, back.cx, back.cy) == (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy)
    assert np.allclose((back.distortion + (0.0,) * 5)[:5], (intrinsics.distortion + (0.0,) * 5)[:5])


def test_split_files_become_one_transforms_json_with_the_same_frames(posed_scene, tmp_path):
    """The NeRF-synthetic layout (transforms_train.json + transforms_test.json): one transforms.json comes out,
    each frame marked with its split, in the same frame order."""
    data = json.loads((posed_scene / "transforms.json").read_text())
    given = tmp_path / "given"
    given.mkdir()
    test_names = set(data.pop("test_filenames")) | set(data.pop("val_filenames", []))
    data.pop("train_filenames")
    for split, keep in (("train", lambda f: f["file_path"] not in test_names),
                        ("test", lambda f: f["file_path"] in test_names)):
        part = {**data, "frames": [{**f, "file_path": str((posed_scene / f["file_path"]).resolve())}
                                   for f in data["frames"] if keep(f)]}
        (given / f"transforms_{split}.json").write_text(json.dumps(part))
    triangulate_known_poses(posed_scene / "images", tmp_path / "out", given)
    before, after = load_dataset(given), load_dataset(tmp_path / "out")
    assert after.form == "transforms" and len(load_sparse_points(after).points) > 100
    assert [(f.index, f.split, f.image_path.resolve()) for f in after.frames] == \
        [(f.index, f.split, f.image_path.resolve()) for f in before.frames]
    assert {f.split for f in after.frames} == {"train", "test"}
