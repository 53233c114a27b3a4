"""COCO instances writer: ``DIR/coco/annotations.json``.

One annotation per visible instance: ``segmentation`` = compressed RLE (pycocotools, string counts) of the
visible mask, ``bbox`` [x, y, w, h] with w = xmax - xmin + 1 (pycocotools' toBbox), ``area`` = visible pixels,
``iscrowd`` 0, plus ``instance_id`` and ``name``. ``image_id`` = the frame's index in the dataset;
``file_name`` = the image path relative to the dataset folder (a synthetic view: its name, and the image gets
``"synthetic": true``). Annotation ids count up over frames in order.

``file_name`` is relative to the dataset folder (where the photos live; the bake never copies them), and the
JSON says so in ``info.image_root``: the absolute dataset folder, the ``image_root`` that detectron2's
``register_coco_instances`` and mmdetection's ``data_prefix`` want. ``licenses`` is an empty list (the photos'
licence is the user's to state).

With ``coco_masks="polygon"`` (:data:`MASK_FORMATS`), ``segmentation`` is a list of polygons (the outer and
hole rings of cv2's RETR_CCOMP contours) when rasterising them back with pycocotools gives exactly the mask;
otherwise (a mask with a hole: a COCO polygon list is a union, it cannot cut one out) that annotation keeps
its RLE. Each annotation then carries ``polygon_iou``: the IoU of its polygons' mask with the exact mask
(1.0 where the polygons were written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.view import View
from ..io.atomic import json_bytes
from .context import ExportContext
from .encoded import visible_bbox_coco, visible_rle

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels, InstanceLabels

PATH = "coco/annotations.json"
MASK_FORMATS = ("rle", "polygon")
#: an instance whose visible pixels' mean confidence (P(label right)) is under this gets ``"ignore": 1`` --
#: unless it is a box object whose mask lies inside its mesh's silhouette (``OUTLINE_AGREES``)
IGNORE_BELOW = 0.5
#: a box object's mask with at least this share inside its carved mesh's silhouette (``outline_share``) is kept
#: whatever its mean confidence: a box's field weight is diffuse, so its pixels' confidence is low on right
#: masks too (scripts/bench_labels.py: ``coco_ignore``)
OUTLINE_AGREES = 0.5
#: contours are traced on the mask upsampled by this factor, then mapped back: a ring through the pixel
#: centres of the upsampled mask runs a quarter pixel inside the original pixels' edges, which pycocotools'
#: polygon rasteriser fills to exactly the mask (a ring through the original pixel centres loses half of
#: every border pixel).
_UPSAMPLE = 2


def ignored(inst: "InstanceLabels") -> bool:
    """Whether COCO marks ``inst`` ``ignore``: its mean confidence is under ``IGNORE_BELOW``, and it is not a
    box object whose mask lies inside its mesh's silhouette (``OUTLINE_AGREES``)."""
    return (inst.mean_confidence is not None and inst.mean_confidence < IGNORE_BELOW
            and (inst.outline_share is None or inst.outline_share < OUTLINE_AGREES))


def encode_rle(mask: np.ndarray) -> dict:
    import cv2
    from pycocotools import mask as mask_utils

    # pycocotools reads the mask column by column: the transpose of a C-ordered copy is that layout, and
    # OpenCV's blocked transpose makes it ~10x faster than numpy's strided asfortranarray
    rle = mask_utils.encode(cv2.transpose(np.ascontiguousarray(mask, dtype=np.uint8)).T)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer and hole rings of ``mask`` as COCO polygons ([x0, y0, x1, y1, ...], pixel edges at integers)."""
    import cv2

    big = np.kron(mask.astype(np.uint8), np.ones((_UPSAMPLE, _UPSAMPLE), np.uint8))
    contours, _ = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        ring = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / _UPSAMPLE
        if len(ring) < 3:  # pycocotools wants >= 3 points; a 1-2 point ring is a degenerate sliver
            ring = np.concatenate([ring] * 3)[:3]
        polygons.append([round(float(v), 4) for v in ring.ravel()])
    return polygons


def polygons_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """What a COCO loader (pycocotools frPyObjects + merge + decode) makes of ``polygons``: a bool mask."""
    from pycocotools import mask as mask_utils

    if not polygons:
        return np.zeros((height, width), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def synthetic_camera(view: View) -> dict:
    """A synthetic view's camera for COCO ``images``: OpenCV ``K`` (top-left pixel centre at 0, 0) and the
    OpenGL camera-to-world pose in the world frame (the dataset convention)."""
    return {"K": [[float(v) for v in row] for row in view.intrinsics.K_opencv],
            "cam_to_world": [[float(v) for v in row] for row in view.cam_to_world]}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def segmentation(mask: np.ndarray, masks: str = "rle") -> tuple[object, dict]:
    """``mask`` as a COCO ``segmentation`` in the format ``masks``, and the extra annotation keys it brings.

    Polygons only where they rasterise back to exactly ``mask``, else RLE; ``polygon_iou`` says how close the
    polygons came."""
    if masks == "rle":
        return encode_rle(mask), {}
    if masks != "polygon":
        raise NeuralLabelError(f"coco_masks {masks!r}: choose from {', '.join(MASK_FORMATS)}", field="coco_masks")
    mask = mask.astype(bool)
    polygons = mask_polygons(mask)
    iou = mask_iou(polygons_mask(polygons, *mask.shape), mask)
    exact = iou == 1.0
    return (polygons if exact else encode_rle(mask)), {"polygon_iou": round(iou, 6)}


class CocoWriter:
    """The COCO writer (:class:`~.Writer`): one aggregate file, nothing per frame."""

    name = "coco"
    title = "COCO"
    description = "COCO instances with RLE masks and boxes"
    needs_depth = False
    needs_confidence = True  # an instance's mean confidence sets its ``ignore``

    def static_files(self, ctx: ExportContext) -> dict[str, bytes]:
        return {}

    def frame_files(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict[str, bytes]:
        return {}

    def fragment(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict:
        image = {"id": view.index, "file_name": ctx.image_name(view), "width": view.width, "height": view.height}
        if view.image_path is None:  # a synthetic view: no photo, so its camera goes with it
            image["synthetic"] = True
            image["camera"] = synthetic_camera(view)
        annotations = []
        for inst in labels.instances:
            if inst.px_count_visib == 0:
                continue  # COCO has no use for an invisible instance
            if ctx.coco_masks == "rle":  # the RLE BOP's COCO stores too: encoded once
                seg, extra = visible_rle(labels, inst), {}
            else:
                seg, extra = segmentation(inst.visible_mask, ctx.coco_masks)
            # An instance whose pixels are more likely wrong than right: COCOeval neither rewards nor punishes
            # detections of it (``ignore``); it stays a normal instance otherwise (iscrowd 0).
            unsure = ignored(inst)
            annotations.append({"image_id": view.index, "category_id": inst.category_id,
                                "segmentation": seg, "area": inst.px_count_visib,
                                "bbox": visible_bbox_coco(inst), "iscrowd": 0,
                                **({"ignore": 1} if unsure else {}),
                                "instance_id": inst.instance_id, "name": inst.name, **extra})
        return {"image": image, "annotations": annotations}

    def assemble(self, ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict[str, bytes]:
        annotations = []
        for _, frag in fragments:
            for ann in frag["annotations"]:
                annotations.append({"id": len(annotations) + 1, **ann})
        categories = [{"id": cid, "name": name, "supercategory": name}
                      for cid, name in ctx.spec.categories().items()]
        info = {"description": "NeuralLabel bake", "version": "1.0", "image_root": ctx.dataset_root().as_posix(),
                "mask_format": ctx.coco_masks}
        coco = {"info": info, "licenses": [],
                "images": [frag["image"] for _, frag in fragments],
                "annotations": annotations, "categories": categories}
        return {PATH: json_bytes(coco, compact=True)}


COCO = CocoWriter()
