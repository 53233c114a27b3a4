"""The semantic head on a trained field and `select` through the command line (issue 16).

One field per session: a few steps on the small scene at a quarter of its size (40x30 images), so caching
every ray of every view takes a second."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from neurallabel.core.app.cli import main
from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.data.truth import load_scene_truth
from neurallabel.core.io.atomic import png_bytes, write_bytes
from neurallabel.core.semantic.head import load_head, save_head
from neurallabel.core.semantic.labels import VOID

DOWNSCALE = "4"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads fight over the cores (tenfold slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def semantic_field(small_scene, tmp_path_factory):
    from neurallabel.core.train.loop import TrainOptions, train_field

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("semantic") / "field.pt"
    train_field(small_scene, out, TrainOptions(steps=200, device="cpu", downscale=4.0, max_rays_per_step=1024))
    return out


def categories(scene, frame, downscale=4):
    """True category ids of a frame, at the downscaled size (nearest pixel)."""
    truth = load_scene_truth(scene)
    lookup = np.zeros(65536, dtype=np.int64)
    for obj in truth.objects:
        lookup[obj.instance_id] = obj.category_id
    ids = lookup[truth.instance_ids(frame.index)]
    return ids[downscale // 2::downscale, downscale // 2::downscale]


@pytest.fixture(scope="session")
def sparse_labels(small_scene, tmp_path_factory):
    """Every 3rd pixel of the first three train frames labelled with its true category, the rest void."""
    folder = tmp_path_factory.mktemp("labels")
    dataset = load_dataset(small_scene, 4.0)
    for frame in dataset.split("train")[:3]:
        ids = categories(small_scene, frame)
        sparse = np.full(ids.shape, VOID, dtype=np.uint16)
        sparse[::3, ::3] = ids[::3, ::3]
        write_bytes(folder / f"{frame.index:06d}.png", png_bytes(sparse))
    return folder


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_semantic_train_and_render(semantic_field, small_scene, sparse_labels, tmp_path, capsys):
    head = tmp_path / "head.pt"
    assert cli("semantic", "train", semantic_field, "--data", small_scene, "--labels", sparse_labels, "--out", head,
               "--downscale", DOWNSCALE, "--steps", "60", "--device", "cpu", "--classes", "0,1,2,3,4,5,6,7,9") == 0
    out = capsys.readouterr().out
    assert "class 9 has no labelled pixel" in out and "wrote" in out
    checkpoint = load_head(head)
    assert checkpoint.head.config.class_ids == [0, 1, 2, 3, 4, 5, 6, 7, 9]
    render = tmp_path / "render"
    assert cli("semantic", "render", head, "--data", small_scene, "--out", render, "--downscale", DOWNSCALE,
               "--split", "test", "--device", "cpu") == 0
    dataset = load_dataset(small_scene, 4.0)
    test = dataset.split("test")
    for frame in test:
        name = f"{frame.index:06d}.png"  # the bake's raw/category layout
        category = np.array(Image.open(render / "category" / name))
        assert category.dtype == np.uint16 and category.shape == (30, 40)
        assert set(np.unique(category).tolist()) <= {0, 1, 2, 3, 4, 5, 6, 7, 9, VOID}
        assert np.array(Image.open(render / "entropy" / name)).dtype == np.uint8
        assert np.array(Image.open(render / "preview" / name)).shape == (30, 40, 3)
    # where the (young) field sees a surface, the head mostly agrees with the truth in a view it saw no label of
    truth = categories(small_scene, test[0])
    category = np.array(Image.open(render / "category" / f"{test[0].index:06d}.png")).astype(np.int64)
    surface = category != VOID
    assert surface.mean() > 0.1 and (category == truth)[surface].mean() > 0.6


def test_semantic_refuses_bad_labels_and_foreign_heads(semantic_field, small_scene, sparse_labels, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_bytes(bad / "000001.png", png_bytes(np.zeros((31, 40), dtype=np.uint16)))
    assert cli("semantic", "train", semantic_field, "--data", small_scene, "--labels", bad, "--out",
               tmp_path / "h.pt", "--downscale", DOWNSCALE, "--device", "cpu") == 2
    assert "000001.png: the label image is 40x31 but frame 1 is 40x30" in capsys.readouterr().err
    assert cli("semantic", "train", semantic_field, "--data", small_scene, "--labels", sparse_labels, "--out",
               tmp_path / "h.pt", "--downscale", DOWNSCALE, "--device", "cpu", "--classes", "0,1") == 2
    assert "are not in the class table" in capsys.readouterr().err
    # a head whose field fingerprint is another dataset's is refused by render and select
    head = tmp_path / "head.pt"
    assert cli("semantic", "train", semantic_field, "--data", small_scene, "--labels", sparse_labels, "--out", head,
               "--downscale", DOWNSCALE, "--steps", "5", "--device", "cpu") == 0
    checkpoint = load_head(head)
    foreign = tmp_path / "foreign.pt"
    save_head(foreign, checkpoint.head, field_fingerprint="0123456789abcdef", info=checkpoint.info)
    capsys.readouterr()
    assert cli("semantic", "render", foreign, "--data", small_scene, "--out", tmp_path / "r", "--downscale",
               DOWNSCALE, "--device", "cpu") == 2
    assert "trained with a field of other frames" in capsys.readouterr().err
    assert cli("select", semantic_field, "--data", small_scene, "--head", foreign, "--budget", "10", "--out",
               tmp_path / "s.json", "--downscale", DOWNSCALE, "--device", "cpu") == 2
    assert "--head" in capsys.readouterr().err


def test_select_rounds_resume_and_repeat_with_the_seed(semantic_field, small_scene, sparse_labels, tmp_path, capsys):
    def select(out, *extra):
        assert cli("select", semantic_field, "--data", small_scene, "--budget", "256", "--granularity", "patch:8",
                   "--strategy", "geometry", "--seed", "3", "--out", out, "--downscale", DOWNSCALE,
                   "--device", "cpu", *extra) == 0
        return json.loads(out.read_text())

    first = select(tmp_path / "a.json")
    assert all(set(r) == {"frame", "image", "x", "y", "w", "h"} for r in first)
    sizes = [r["w"] * r["h"] for r in first]  # 8x8, or 8x6 in the last row of a 40x30 image
    assert sum(sizes) >= 256 > sum(sizes[:-1])  # the first units that reach the budget
    dataset = load_dataset(small_scene, 4.0)
    train = {f.index for f in dataset.split("train")}
    assert all(r["frame"] in train and r["w"] == 8 and r["h"] in (6, 8) and r["x"] % 8 == 0 for r in first)
    assert select(tmp_path / "b.json") == first  # same seed, new state: the same selection
    second = select(tmp_path / "a.json")  # the next round: nothing chosen twice
    assert not {json.dumps(r) for r in second} & {json.dumps(r) for r in first}
    state = json.loads((tmp_path / "a.state.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0, 1]
    # a budget larger than the pool takes the pool, saying so in one line
    capsys.readouterr()
    everything = select(tmp_path / "all.json", "--budget", "100000000", "--granularity", "image", "--labels",
                        sparse_labels)
    assert len(everything) == len(train)
    assert "larger than the pool" in capsys.readouterr().out
