"""COCO instances writer: ``DIR/coco/annotations.json``.

One annotation per visible instance: ``segmentation`` = compressed RLE (pycocotools, string counts) of the
visible mask, ``bbox`` [x, y, w, h] with w = xmax - xmin + 1 (pycocotools' toBbox), ``area`` = visible pixels,
``iscrowd`` 0, plus ``instance_id`` and ``name``. ``image_id`` = the frame's index in the dataset;
``file_name`` = the image path relative to the dataset folder. Annotation ids count up over frames in order.
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import Frame
from ..labels.frame import FrameLabels, bbox_coco
from ..io.atomic import json_bytes
from .context import ExportContext

PATH = "coco/annotations.json"


def encode_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def static_files(ctx: ExportContext) -> dict[str, bytes]:
    return {}


def frame_files(ctx: ExportContext, frame: Frame, labels: FrameLabels) -> dict[str, bytes]:
    return {}


def fragment(ctx: ExportContext, frame: Frame, labels: FrameLabels) -> dict:
    intr = frame.intrinsics
    image = {"id": frame.index, "file_name": ctx.image_name(frame), "width": intr.width, "height": intr.height}
    annotations = []
    for inst in labels.instances:
        if inst.px_count_visib == 0:
            continue  # COCO has no use for an invisible instance
        annotations.append({"image_id": frame.index, "category_id": inst.category_id,
                            "segmentation": encode_rle(inst.visible_mask), "area": inst.px_count_visib,
                            "bbox": bbox_coco(inst.visible_mask), "iscrowd": 0,
                            "instance_id": inst.instance_id, "name": inst.name})
    return {"image": image, "annotations": annotations}


def assemble(ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict[str, bytes]:
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
