"""A frame's images encoded for the writers: masks once for all writers, and several PNGs at once.

BOP's ``mask`` and raw's ``full`` hold the same silhouette, a fully visible instance's ``mask_visib`` equals its
``mask``, and BOP's COCO and the COCO writer store the same RLE: each is encoded once and remembered on the
frame's :class:`~..labels.frame.FrameLabels` (``encoded``), so it lives as long as the labels (one frame) and a
distorted camera's pinhole labels keep their own. PNGs are encoded one by one: the bake already encodes a frame
on its own thread while the next frame is labelled, and a thread pool per call cost more to start (a few ms
per thread on a busy machine) than the ~1 ms a mask takes to encode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from ..io.atomic import png_bytes

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels, InstanceLabels


def pngs(images: dict) -> dict:
    """PNG bytes of each image (uint8 / uint16), by the same keys."""
    return {key: png_bytes(image) for key, image in images.items()}


def _mask_key(inst: "InstanceLabels", visible: bool) -> tuple:
    # the visible mask is the full one's file when the two are equal (the full mask always holds it)
    if visible and np.array_equal(inst.visible_mask, inst.full_mask):
        visible = False
    return ("mask_png", inst.instance_id, visible)


def encode_with_masks(labels: "FrameLabels", images: dict[str, np.ndarray], instances: Iterable["InstanceLabels"],
                      visible: bool) -> dict[str, bytes]:
    """PNG bytes of ``images`` (by key), encoded at once with the full masks of ``instances`` (and their visible
    masks with ``visible``) that ``labels`` does not hold yet, which it then holds (:func:`mask_png`)."""
    masks: dict[tuple, np.ndarray] = {}
    for inst in instances:
        for key in [_mask_key(inst, False)] + ([_mask_key(inst, True)] if visible else []):
            if key not in labels.encoded and key not in masks:
                masks[key] = (inst.visible_mask if key[2] else inst.full_mask).astype(np.uint8) * 255
    encoded = pngs({**masks, **images})
    labels.encoded.update((key, encoded[key]) for key in masks)
    return {key: encoded[key] for key in images}


def mask_png(labels: "FrameLabels", inst: "InstanceLabels", visible: bool) -> bytes:
    """The 0/255 PNG of ``inst``'s visible (``visible``) or full mask."""
    key = _mask_key(inst, visible)
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
