"""A frame's images encoded for the writers: masks once for all writers, and several PNGs at once.

BOP's ``mask`` and raw's ``full`` hold the same silhouette, a fully visible instance's ``mask_visib`` equals its
``mask``, BOP's COCO and the COCO writer store the same RLE, and BOP's depth and raw's ``depth_mm`` start from
the same millimetres: each is made once and remembered on the frame's :class:`~..labels.frame.FrameLabels`
(``encoded``), so it lives as long as the labels (one frame) and a distorted camera's pinhole labels keep their
own. PNGs are encoded one by one (:func:`.png.label_png`, ~0.3 ms a mask): the bake already encodes a frame on
its own thread while the next frame is labelled, and a thread pool per call cost more to start (a few ms per
thread on a busy machine) than a frame's masks take to encode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from .png import label_png

if TYPE_CHECKING:
    from ..geometry.view import View
    from ..labels.frame import FrameLabels, InstanceLabels


def pngs(images: dict) -> dict:
    """PNG bytes of each image (uint8 / uint16), by the same keys."""
    return {key: label_png(image) for key, image in images.items()}


def _mask_key(labels: "FrameLabels", inst: "InstanceLabels", visible: bool) -> tuple:
    # the visible mask is the full one's file when the two are equal (the full mask always holds it)
    if visible and _remembered(labels, ("unoccluded", inst.instance_id),
                               lambda: np.array_equal(inst.visible_mask, inst.full_mask)):
        visible = False
    return ("mask_png", inst.instance_id, visible)


def encode_with_masks(labels: "FrameLabels", images: dict[str, np.ndarray], instances: Iterable["InstanceLabels"],
                      visible: bool) -> dict[str, bytes]:
    """PNG bytes of ``images`` (by key), encoded at once with the full masks of ``instances`` (and their visible
    masks with ``visible``) that ``labels`` does not hold yet, which it then holds (:func:`mask_png`)."""
    masks: dict[tuple, np.ndarray] = {}
    for inst in instances:
        for key in [_mask_key(labels, inst, False)] + ([_mask_key(labels, inst, True)] if visible else []):
            if key not in labels.encoded and key not in masks:
                masks[key] = np.multiply(inst.visible_mask if key[2] else inst.full_mask, 255, dtype=np.uint8)
    encoded = pngs({**masks, **images})
    labels.encoded.update((key, encoded[key]) for key in masks)
    return {key: encoded[key] for key in images}


def mask_png(labels: "FrameLabels", inst: "InstanceLabels", visible: bool) -> bytes:
    """The 0/255 PNG of ``inst``'s visible (``visible``) or full mask."""
    key = _mask_key(labels, inst, visible)
    if key not in labels.encoded:
        encode_with_masks(labels, {}, [inst], visible)
    return labels.encoded[key]


def _remembered(labels: "FrameLabels", key: tuple, encode: Callable[[], object]):
    if key not in labels.encoded:
        labels.encoded[key] = encode()
    return labels.encoded[key]


def visible_rle(labels: "FrameLabels", inst: "InstanceLabels") -> dict:
    """COCO compressed RLE of ``inst``'s visible mask (a new dict each call: callers may keep it)."""
    from .coco import encode_rle

    return dict(_remembered(labels, ("visible_rle", inst.instance_id), lambda: encode_rle(inst.visible_mask)))


def depth_mm(labels: "FrameLabels", units_to_mm: float) -> np.ndarray:
    """``labels``' float32 z-depth in millimetres as float64 (NaN: none), computed once for the writers (read
    it, do not modify it)."""
    return _remembered(labels, ("depth_mm", units_to_mm),
                       lambda: np.asarray(labels.depth, np.float32).astype(np.float64) * units_to_mm)


def visible_bbox_coco(inst: "InstanceLabels") -> list[int]:
    """COCO box [x, y, w, h] of ``inst``'s visible mask (``bbox_coco(inst.visible_mask)``), from its BOP box of
    the same mask (w = xmax - xmin) without a pass over the mask; [0, 0, 0, 0] when nothing is visible."""
    if inst.px_count_visib == 0:
        return [0, 0, 0, 0]
    x, y, w, h = inst.bbox_visib
    return [x, y, w + 1, h + 1]


def world_to_camera(labels: "FrameLabels", view: "View") -> np.ndarray:
    """``view``'s world -> OpenCV camera matrix (:func:`~..geometry.cameras.world_to_camera_opencv`), inverted
    once per frame for the writers (``labels``: the view's own labels)."""
    from ..geometry.cameras import world_to_camera_opencv

    return _remembered(labels, ("world_to_camera",), lambda: world_to_camera_opencv(view.cam_to_world))
