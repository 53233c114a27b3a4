"""What makes a bake fast keeps it right: the scene is asked only where a decision needs it unless a depth map
is written; masks encoded once for several writers decode to each instance's own masks; the frame whose files
a thread is writing is finished even when the next frame fails."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View
from neurallabel.core.pipeline import bake as bake_module
from neurallabel.core.pipeline.bake import bake, frame_labeler
from neurallabel.core.labels.frame import LabelOptions
from neurallabel.core.scene.queries import TruthQuery
from neurallabel.core.spec import spec_from_scene


class CountingQuery(TruthQuery):
    """True depth that remembers how many pixels of each view it was asked for."""

    def __init__(self, scene_dir: Path) -> None:
        super().__init__(scene_dir)
        self.asked: dict[int, int] = {}

    def at_pixels(self, view, rows, cols, *, confidence=False):
        self.asked[view.index] = self.asked.get(view.index, 0) + len(rows)
        return super().at_pixels(view, rows, cols, confidence=confidence)


def views_of(spec, frames) -> dict[int, View]:
    from neurallabel.core.data.dataset import load_dataset

    dataset = load_dataset(spec.data_path)
    return {i: View.from_frame(dataset.frame(i), Similarity(spec.world_from_data)) for i in frames}


@pytest.mark.parametrize("formats, whole", [(("coco",), False), (("raw",), True), (("bop",), True)])
def test_the_scene_is_asked_where_a_decision_needs_it_unless_a_depth_map_is_written(
        small_scene: Path, tmp_path: Path, formats, whole: bool) -> None:
    spec = spec_from_scene(small_scene)
    query = CountingQuery(small_scene)
    bake(spec, tmp_path / "out", formats=formats, frames="0:3", depth_source=query)
    labeler = frame_labeler(spec, {o.instance_id: o.mesh for o in spec.objects}, None, LabelOptions())
    for index, view in views_of(spec, range(3)).items():
        covered = np.zeros((view.height, view.width), bool)
        for inst in labeler.label(view).instances:
            covered |= inst.full_mask  # every mesh's silhouette: where visibility is decided
        assert covered.any()
        assert query.asked[index] == (view.height * view.width if whole else np.count_nonzero(covered))


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_masks_encoded_once_decode_to_each_instances_own_masks(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    bake(spec, out, frames="0:4", depth_source=TruthQuery(small_scene))
    labeler = frame_labeler(spec, {o.instance_id: o.mesh for o in spec.objects}, TruthQuery(small_scene),
                            LabelOptions())
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    bop_coco = json.loads((out / "bop" / "train" / "000000" / "scene_gt_coco.json").read_text())
    occluded = 0
    for index, view in views_of(spec, range(4)).items():
        labels = labeler.label(view)
        occluded += sum(not np.array_equal(i.visible_mask, i.full_mask) for i in labels.instances)
        for gt_id, inst in enumerate(labels.instances):
            scene = out / "bop" / "train" / "000000"
            assert np.array_equal(read_png(scene / "mask" / f"{index:06d}_{gt_id:06d}.png") > 0, inst.full_mask)
            assert np.array_equal(read_png(scene / "mask_visib" / f"{index:06d}_{gt_id:06d}.png") > 0,
                                  inst.visible_mask)
            full = read_png(out / "raw" / "full" / f"{index:06d}_{inst.instance_id:06d}.png")
            assert np.array_equal(full > 0, inst.full_mask)
            bop_ann = [a for a in bop_coco["annotations"] if a["image_id"] == index][gt_id]  # gt order
            coco_ann = [a for a in coco["annotations"]
                        if a["image_id"] == index and a["instance_id"] == inst.instance_id]
            assert len(coco_ann) == (1 if inst.px_count_visib else 0)
            for ann in [bop_ann] + coco_ann:
                rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
                assert np.array_equal(mask_utils.decode(rle).astype(bool), inst.visible_mask)
    assert occluded > 0  # some mask_visib differs from its mask: the two are not one file by mistake


def test_the_frame_being_written_is_finished_when_the_next_frame_fails(small_scene: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    spec = spec_from_scene(small_scene)
    real = bake_module.finish_view
    seen = []

    def finish_view(job, rendered):
        seen.append(rendered.view.index)
        if len(seen) == 2:
            raise RuntimeError("the second frame fails")
        return real(job, rendered)

    monkeypatch.setattr(bake_module, "finish_view", finish_view)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="second frame"):
        bake(spec, out, frames="0:3", depth_source=TruthQuery(small_scene))
    fragments = sorted(p.name for p in (out / ".neurallabel" / "frames").iterdir())
    assert fragments == ["000000.json"]
    assert (out / "raw" / "depth" / "000000.npy").is_file() and (out / "raw" / "instance" / "000000.png").is_file()
    assert not (out / "raw" / "depth" / "000001.npy").exists()


class TurnTakingQuery(TruthQuery):
    """True depth that notes when two threads ask it at once (a field's renderer must not be)."""

    def __init__(self, scene_dir: Path) -> None:
        super().__init__(scene_dir)
        self.active = 0
        self.overlaps = 0
        self.calls = 0
        self._count = threading.Lock()

    def at_pixels(self, view, rows, cols, *, confidence=False):
        with self._count:
            self.active += 1
            self.calls += 1
            self.overlaps += self.active > 1
        try:
            time.sleep(0.01)  # widen the window another thread would have to enter
            return super().at_pixels(view, rows, cols, confidence=confidence)
        finally:
            with self._count:
                self.active -= 1


def test_a_distorted_cameras_pinhole_labels_take_turns_with_the_next_frames_labelling(small_scene: Path,
                                                                                       tmp_path: Path) -> None:
    """BOP labels a distorted photo's pinhole camera on the writing thread while the next frame is labelled: the
    scene is never asked by both at once, and the bytes equal frame-by-frame bakes (nothing in flight)."""
    scene = tmp_path / "distorted"
    scene.mkdir()
    for name in ("images", "gt"):
        (scene / name).symlink_to(small_scene / name)
    transforms = json.loads((small_scene / "transforms.json").read_text())
    transforms.update(camera_model="OPENCV", k1=-0.12, k2=0.03, p1=0.001, p2=-0.001)
    (scene / "transforms.json").write_text(json.dumps(transforms))
    spec = spec_from_scene(scene)
    query = TurnTakingQuery(scene)
    bake(spec, tmp_path / "whole", formats=("bop", "raw"), frames="0:4", depth_source=query)
    assert query.calls >= 8 and query.overlaps == 0  # two renders a frame: the photo's camera, its pinhole one
    for i in range(4):
        bake(spec, tmp_path / "one_by_one", formats=("bop", "raw"), frames=f"{i}:{i + 1}",
             depth_source=TruthQuery(scene))
    whole, one_by_one = tree(tmp_path / "whole"), tree(tmp_path / "one_by_one")
    assert whole.keys() == one_by_one.keys()
    assert [k for k in whole if k != ".neurallabel/bake.json" and whole[k] != one_by_one[k]] == []


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_next_frame_renders_while_this_frames_label_math_runs(small_scene: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The bake renders the next frame on its own thread during the current frame's label math (the render is
    compiled code on every core, the math mostly one): the renders do run during the math, never two at once,
    and the files equal frame-by-frame bakes."""
    spec = spec_from_scene(small_scene)
    real = bake_module.finish_view
    math = {"active": False, "renders_during": 0}

    def finish_view(job, rendered):
        math["active"] = True
        try:
            time.sleep(0.05)  # room for the next render to start
            return real(job, rendered)
        finally:
            math["active"] = False

    class Watched(TurnTakingQuery):
        def at_pixels(self, view, rows, cols, *, confidence=False):
            math["renders_during"] += math["active"]
            return super().at_pixels(view, rows, cols, confidence=confidence)

    monkeypatch.setattr(bake_module, "finish_view", finish_view)
    query = Watched(small_scene)
    bake(spec, tmp_path / "whole", formats=("bop", "coco", "raw"), frames="0:5", depth_source=query)
    assert query.overlaps == 0 and math["renders_during"] >= 2
    monkeypatch.setattr(bake_module, "finish_view", real)
    for i in range(5):
        bake(spec, tmp_path / "one_by_one", formats=("bop", "coco", "raw"), frames=f"{i}:{i + 1}",
             depth_source=TruthQuery(small_scene))
    whole, one_by_one = tree(tmp_path / "whole"), tree(tmp_path / "one_by_one")
    assert whole.keys() == one_by_one.keys()
    assert [k for k in whole if k != ".neurallabel/bake.json" and whole[k] != one_by_one[k]] == []
