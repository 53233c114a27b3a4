"""What makes a bake fast keeps it right: the scene is asked only where a decision needs it unless a depth map
is written; masks encoded once for several writers decode to each instance's own masks; the frame whose files
a thread is writing is finished even when the next frame fails."""

from __future__ import annotations

import json
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
    real = bake_module.label_view
    seen = []

    def label_view(job, view):
        seen.append(view.index)
        if len(seen) == 2:
            raise RuntimeError("the second frame fails")
        return real(job, view)

    monkeypatch.setattr(bake_module, "label_view", label_view)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="second frame"):
        bake(spec, out, frames="0:3", depth_source=TruthQuery(small_scene))
    fragments = sorted(p.name for p in (out / ".neurallabel" / "frames").iterdir())
    assert fragments == ["000000.json"]
    assert (out / "raw" / "depth" / "000000.npy").is_file() and (out / "raw" / "instance" / "000000.png").is_file()
    assert not (out / "raw" / "depth" / "000001.npy").exists()
