"""COCO instances writer: ``DIR/coco/annotations.json``.

One annotation per visible instance: ``segmentation`` = compressed RLE (pycocotools, string counts) of the
visible mask, ``bbox`` [x, y, w, h] with w = xmax - xmin + 1 (pycocotools' toBbox), ``area`` = visible pixels,
``iscrowd`` 0, plus ``instance_id`` and ``name``. ``image_id`` = the frame's index in the dataset;
``file_name`` = the image path relative to the dataset folder (a synthetic view: its name, and the image gets
``"synthetic": true``). Annotation ids count up over frames in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..geometry.view import View
from ..io.atomic import json_bytes
from ..labels.frame import bbox_coco
from .context import ExportContext

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels

PATH = "coco/annotations.json"


def encode_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


class CocoWriter:
    """The COCO writer (:class:`~.Writer`): one aggregate file, nothing per frame."""

    name = "coco"
    title = "COCO"
    description = "COCO instances with RLE masks and boxes"
    needs_depth = False
    needs_confidence = False

    def static_files(self, ctx: ExportContext) -> dict[str, bytes]:
        return {}

    def frame_files(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict[str, bytes]:
        return {}

    def fragment(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict:
        image = {"id": view.index, "file_name": ctx.image_name(view), "width": view.width, "height": view.height}
        if view.image_path is None:
            image["synthetic"] = True
        annotations = []
        for inst in labels.instances:
            if inst.px_count_visib == 0:
                continue  # COCO has no use for an invisible instance
            annotations.append({"image_id": view.index, "category_id": inst.category_id,
                                "segmentation": encode_rle(inst.visible_mask), "area": inst.px_count_visib,
                                "bbox": bbox_coco(inst.visible_mask), "iscrowd": 0,
                                "instance_id": inst.instance_id, "name": inst.name})
        return {"image": image, "annotations": annotations}

    def assemble(self, ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict[str, bytes]:
        annotations = []
        for _, frag in fragments:
            for ann in frag["annotations"]:
                annotations.append({"id": len(annotations) + 1, **ann})
        categories = [{"id": cid, "name": name, "supercategory": name}
                      for cid, name in ctx.spec.categories().items()]
        coco = {"info": {"description": "NeuralLabel bake", "version": "1.0"},
                "images": [frag["image"] for _, frag in fragments],
                "annotations": annotations, "categories": categories}
        return {PATH: json_bytes(coco)}


COCO = CocoWriter()
