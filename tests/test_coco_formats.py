"""COCO as detectron2, mmdetection and pycocotools load it: RLE and polygon masks (exact polygons, RLE where a
polygon cannot be exact), COCOeval scoring the annotations against themselves, and docs/loading.md's
pycocotools snippet run on a real bake."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.export.coco import polygons_mask, segmentation
from neurallabel.core.pipeline.bake import bake
from neurallabel.core.scene.queries import TruthQuery
from neurallabel.core.spec import spec_from_scene

DOC = Path(__file__).resolve().parents[1] / "docs" / "loading.md"


@pytest.fixture(scope="module")
def bakes(small_scene: Path, tmp_path_factory) -> dict[str, Path]:
    """The small scene's COCO output with each mask format."""
    out = {}
    for masks in ("rle", "polygon"):
        folder = tmp_path_factory.mktemp(masks)
        bake(spec_from_scene(small_scene), folder, formats=("coco",), depth_source=TruthQuery(small_scene),
             coco_masks=masks)
        out[masks] = folder
    return out


def _blobs(seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).random((40, 50))
    return cv2.GaussianBlur(noise, (0, 0), 3) > 0.5


@pytest.mark.parametrize("mask", [_blobs(s) for s in range(6)]
                         + [np.eye(30, dtype=bool), np.pad(np.ones((1, 1), bool), 5)], ids=str)
def test_polygons_rasterise_back_to_the_exact_mask(mask: np.ndarray) -> None:
    seg, extra = segmentation(mask, "polygon")
    if isinstance(seg, dict):  # only a mask with a hole may fall back
        holes = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)[1][0][:, 3]
        assert (holes >= 0).any() and extra["polygon_iou"] < 1.0
        return
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in seg)
    assert np.array_equal(polygons_mask(seg, *mask.shape), mask) and extra == {"polygon_iou": 1.0}


def test_a_mask_with_a_hole_keeps_its_rle_and_reports_the_polygon_iou() -> None:
    from pycocotools import mask as mask_utils

    ring = np.zeros((30, 30), bool)
    ring[5:25, 5:25] = True
    ring[10:20, 10:20] = False  # 100 hole pixels: the polygons' union fills them
    seg, extra = segmentation(ring, "polygon")
    assert isinstance(seg, dict) and np.array_equal(mask_utils.decode(seg).astype(bool), ring)
    assert extra["polygon_iou"] == pytest.approx(300 / 400)
    with pytest.raises(NeuralLabelError) as error:
        segmentation(ring, "bitmap")
    assert error.value.field == "coco_masks"


@pytest.mark.parametrize("masks", ["rle", "polygon"])
def test_cocoeval_scores_the_annotations_against_themselves_ap_1(bakes: dict[str, Path], masks: str) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = bakes[masks] / "coco" / "annotations.json"
    data = json.loads(path.read_text())
    assert data["licenses"] == [] and data["info"]["mask_format"] == masks
    root = Path(data["info"]["image_root"])
    assert all((root / image["file_name"]).is_file() for image in data["images"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        detections = gt.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                                  "segmentation": a["segmentation"], "score": 1.0} for a in data["annotations"]])
        for kind in ("bbox", "segm"):
            evaluator = COCOeval(gt, detections, kind)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            assert evaluator.stats[0] == pytest.approx(1.0), kind  # AP @ IoU 0.50:0.95


def test_polygon_and_rle_exports_give_the_same_masks(bakes: dict[str, Path]) -> None:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        rle, poly = (COCO(str(bakes[m] / "coco" / "annotations.json")) for m in ("rle", "polygon"))
    anns = poly.loadAnns(poly.getAnnIds())
    assert len(anns) == len(rle.getAnnIds()) >= 30
    assert sum(isinstance(a["segmentation"], list) for a in anns) >= len(anns) // 2  # mostly polygons
    for ann in anns:
        exact = rle.annToMask(rle.loadAnns(ann["id"])[0]).astype(bool)
        mask = poly.annToMask(ann).astype(bool)
        iou = (mask & exact).sum() / (mask | exact).sum()
        assert iou >= 0.99 and ann["area"] == exact.sum()
        assert (ann["polygon_iou"] == 1.0) == isinstance(ann["segmentation"], list)


def test_the_rle_default_adds_no_polygon_keys(bakes: dict[str, Path]) -> None:
    data = json.loads((bakes["rle"] / "coco" / "annotations.json").read_text())
    assert all(isinstance(a["segmentation"]["counts"], str) and "polygon_iou" not in a for a in data["annotations"])


def test_the_docs_pycocotools_snippet_runs_on_a_bake(bakes: dict[str, Path]) -> None:
    text = DOC.read_text()
    section = text[text.index("## pycocotools"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "DIR" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("DIR", str(bakes["polygon"])), str(DOC), "exec"), {})
    assert "masks" in out.getvalue()


def test_coco_masks_is_checked_by_the_request_and_the_command_line(tmp_path: Path) -> None:
    from neurallabel.core.app.cli import build_parser, request_from_args
    from neurallabel.core.app.jobs import BakeRequest

    with pytest.raises(NeuralLabelError) as error:
        BakeRequest(tmp_path / "spec.json", tmp_path / "out", coco_masks="bitmap")
    assert error.value.field == "coco_masks"
    args = build_parser().parse_args(["bake", "spec.json", "--out", "o", "--coco-masks", "polygon"])
    assert request_from_args(args).coco_masks == "polygon"
    assert request_from_args(build_parser().parse_args(["bake", "spec.json", "--out", "o"])).coco_masks == "rle"
