"""`neurallabel correspond` on a small generated scene with a briefly trained field: the output layout, a
re-run, shards, and refusals; and the truth module (exact correspondences of the scene)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.app.cli import main
from neurallabel.core.correspond.truth import CLASSES, TrueFrame, pixel_classes, true_correspondences
from neurallabel.core.correspond.writer import ARRAYS, load_pair, read_pairs
from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.data.truth import load_scene_truth
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View


@pytest.fixture(scope="module")
def trained(small_scene, tmp_path_factory) -> Path:
    from neurallabel.core.train.loop import TrainOptions, train_field

    out = tmp_path_factory.mktemp("corr_field") / "field.pt"
    train_field(small_scene, out, TrainOptions(steps=3, device="cpu"))
    return out


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_output_layout_rerun_and_shards(small_scene, trained, tmp_path, capsys):
    common = [trained, "--data", small_scene, "--pairs", "3", "--per-pair", "150", "--seed", "4", "--device", "cpu"]
    code, out, err = run(["correspond", *common, "--out", tmp_path / "one", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["pairs"] == 3 and result["pairs_made"] == 3 and result["queries"] == 450
    folder = tmp_path / "one" / "correspondences"
    listing = read_pairs(folder)
    cameras = json.loads((folder / "cameras.json").read_text())
    dataset = load_dataset(small_scene)
    for pair in listing["pairs"]:
        a, b = pair["a"], pair["b"]
        assert (folder / f"{a:06d}_{b:06d}.npz").is_file() and a < b
        arrays = load_pair(folder, a, b)
        assert set(arrays) == set(ARRAYS)
        assert arrays["uv_a"].dtype == np.float32 and arrays["uv_b"].shape == (150, 2)
        assert arrays["accepted"].sum() == pair["accepted"]
        # frame ids are dataset indices (BOP im_id); cameras carry the OpenCV intrinsics
        K = np.array(cameras[str(a)]["K"])
        assert K[0, 2] == pytest.approx(dataset.frame(a).intrinsics.cx - 0.5)
        # the uv_a grid is pixel centres in the OpenCV convention: whole numbers
        assert np.all(arrays["uv_a"] == np.round(arrays["uv_a"]))
        # an accepted pair's xyz projects onto uv_b with the written camera
        ok = arrays["accepted"]
        cam = np.array(cameras[str(b)]["R_w2c"]) @ arrays["xyz"][ok].T.astype(np.float64) + \
            np.array(cameras[str(b)]["t_w2c"])[:, None]
        uv = (np.array(cameras[str(b)]["K"]) @ (cam / cam[2]))[:2].T
        assert np.abs(uv - arrays["uv_b"][ok]).max(initial=0) < 1e-2
    # a re-run makes nothing new and changes no byte
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, out, _ = run(["correspond", *common, "--out", tmp_path / "one", "--json"], capsys)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["pairs_made"] == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # two shards into one folder give the same bytes as one run
    for shard in ("1/2", "0/2"):
        code, _, err = run(["correspond", *common, "--out", tmp_path / "two", "--shard", shard], capsys)
        assert code == 0, err
    two = tmp_path / "two" / "correspondences"
    assert {p.name: p.read_bytes() for p in two.iterdir() if not p.name.startswith(".")} == \
        {k: v for k, v in before.items() if not k.startswith(".")}
    # the README's loader runs on it as written
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("Plain numpy reads it:\n```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(snippet.replace('"corr/correspondences"', repr(str(folder))), scope)
    assert scope["uv_a"].dtype == np.float32 and scope["K_b"].shape == (3, 3)


def test_other_options_into_the_same_folder_are_refused(small_scene, trained, tmp_path, capsys):
    common = [trained, "--data", small_scene, "--pairs", "1", "--per-pair", "10", "--out", tmp_path / "o"]
    assert run(["correspond", *common], capsys)[0] == 0
    code, _, err = run(["correspond", *common, "--mode", "mean"], capsys)
    assert code == 2 and "--out" in err


def copy_scene(scene: Path, target: Path, edit) -> Path:
    target.mkdir()
    (target / "images").symlink_to(scene / "images")
    data = json.loads((scene / "transforms.json").read_text())
    edit(data)
    (target / "transforms.json").write_text(json.dumps(data))
    return target


def test_a_field_of_other_data_and_nan_poses_exit_2(small_scene, trained, tmp_path, capsys):
    def nudge(data):
        data["frames"][1]["transform_matrix"][0][3] += 0.01  # a train frame (0 is held out)

    other = copy_scene(small_scene, tmp_path / "other", nudge)
    code, _, err = run(["correspond", trained, "--data", other, "--out", tmp_path / "o1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "other frames" in err

    def nan(data):
        data["frames"][3]["transform_matrix"][1][1] = float("nan")

    broken = copy_scene(small_scene, tmp_path / "nan", nan)
    code, _, err = run(["correspond", trained, "--data", broken, "--out", tmp_path / "o2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "frame 3" in err


def test_bad_flags_exit_2(small_scene, trained, tmp_path, capsys):
    for flags, named in ((["--per-pair", "0"], "--per-pair"), (["--round-trip-px", "-1"], "--round-trip-px"),
                         (["--shard", "3/2"], "--shard")):
        code, _, err = run(["correspond", trained, "--data", small_scene, "--out", tmp_path / "x", *flags], capsys)
        assert code == 2 and named in err


def true_frames(scene: Path, indices) -> list[TrueFrame]:
    truth = load_scene_truth(scene)
    dataset = load_dataset(scene)
    return [TrueFrame(View.from_frame(dataset.frame(i), Similarity.identity()), truth.z_depth(i),
                      truth.instance_ids(i)) for i in indices]


def test_true_correspondences_go_there_and_back(small_scene):
    a, b = true_frames(small_scene, (0, 1))
    rows, cols = np.mgrid[0:a.depth.shape[0]:3, 0:a.depth.shape[1]:3]
    pixels = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    uv_b, visible, _ = true_correspondences(a, b, pixels)
    assert visible.mean() > 0.2
    # back from B's nearest pixel centre: lands within a pixel (or so) of where it started
    near_b = np.floor(uv_b[visible]) + 0.5
    back, visible_back, _ = true_correspondences(b, a, near_b)
    error = np.linalg.norm(back - pixels[visible], axis=1)
    assert np.median(error[visible_back]) < 1.0
    classes = pixel_classes(a, set())
    assert {CLASSES[c] for c in np.unique(classes)} >= {"opaque", "edge", "background"}


class TruthDepth:
    """A depth source from the scene's true depth maps: one thin interval at the true depth of each ray (the
    ray's view is found by its origin). The generator on it must reproduce the truth module's answers."""

    def __init__(self, frames: list[TrueFrame]) -> None:
        self.frames = frames

    def __call__(self, origins, directions):
        import torch

        from neurallabel.core.correspond.distribution import DepthDistribution
        from neurallabel.core.correspond.reproject import project_to_view

        o, d = origins.double().numpy(), directions.double().numpy()
        frame = min(self.frames, key=lambda f: np.linalg.norm(f.view.cam_to_data[:3, 3] - o[0]))
        pixels, z, _ = project_to_view(frame.view, o + d)
        h, w = frame.depth.shape
        cols = np.clip(np.floor(pixels[:, 0]).astype(int), 0, w - 1)
        rows = np.clip(np.floor(pixels[:, 1]).astype(int), 0, h - 1)
        depth = frame.depth[rows, cols].astype(np.float64) / z  # z-depth -> distance along the unit ray
        has = np.isfinite(depth)
        t = torch.from_numpy(np.where(has, depth, 1.0)).float()
        n = len(o)
        return DepthDistribution(torch.arange(n), t - 1e-4, t + 1e-4, torch.ones(n),
                                 torch.from_numpy(has.astype(np.float32)), n)


def test_generator_on_true_depth_agrees_with_the_truth_module(small_scene):
    from neurallabel.core.correspond.metrics import endpoint_errors, pck
    from neurallabel.core.correspond.roundtrip import PairOptions, correspond_pair

    a, b = true_frames(small_scene, (0, 1))
    rows, cols = np.mgrid[0:a.depth.shape[0]:2, 0:a.depth.shape[1]:2]
    pixels = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    uv_true, visible, z_a = true_correspondences(a, b, pixels)
    pairs = correspond_pair(TruthDepth([a, b]), a.view, b.view, pixels, PairOptions(mode="median"))
    assert np.allclose(pairs.depth_a[np.isfinite(z_a)], z_a[np.isfinite(z_a)], rtol=1e-3)
    both = visible & pairs.accepted
    assert both.sum() > 0.8 * visible.sum()
    assert pck(endpoint_errors(pairs.uv_b[both], uv_true[both] - 0.5), 0.01) == 1.0  # OpenCV = ours - 0.5


def test_queries_stay_inside_a_bakes_masks(small_scene, trained, tmp_path, capsys):
    from PIL import Image

    dataset = load_dataset(small_scene)
    bake = tmp_path / "bake"
    (bake / "raw" / "instance").mkdir(parents=True)
    for frame in dataset.frames:
        ids = np.zeros((frame.intrinsics.height, frame.intrinsics.width), np.uint16)
        ids[40:50, 60:75] = 3
        Image.fromarray(ids).save(bake / "raw" / "instance" / f"{frame.index:06d}.png")
    common = [trained, "--data", small_scene, "--pairs", "2", "--per-pair", "1000", "--device", "cpu"]
    code, _, err = run(["correspond", *common, "--out", tmp_path / "c", "--mask-from", bake], capsys)
    assert code == 0, err
    folder = tmp_path / "c" / "correspondences"
    for pair in read_pairs(folder)["pairs"]:
        uv = load_pair(folder, pair["a"], pair["b"])["uv_a"]
        assert len(uv) == 150  # every masked pixel: fewer than asked
        assert uv[:, 0].min() >= 60 and uv[:, 0].max() < 75 and uv[:, 1].min() >= 40 and uv[:, 1].max() < 50
    shutil.rmtree(bake / "raw" / "instance")
    code, _, err = run(["correspond", *common, "--out", tmp_path / "d", "--mask-from", bake], capsys)
    assert code == 2 and "--mask-from" in err
