"""A frame's masks encoded once for all writers: BOP's ``mask`` and raw's ``full`` hold the same silhouette, a
fully visible instance's ``mask_visib`` equals its ``mask``, and BOP's COCO and the COCO writer store the same
RLE. The encodings are remembered on the frame's :class:`~..labels.frame.FrameLabels` (``encoded``), so they
live as long as the labels (one frame) and a distorted camera's pinhole labels keep their own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from ..io.atomic import png_bytes

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels, InstanceLabels


def _remembered(labels: "FrameLabels", key: tuple, encode: Callable[[], object]):
    if key not in labels.encoded:
        labels.encoded[key] = encode()
    return labels.encoded[key]


def mask_png(labels: "FrameLabels", inst: "InstanceLabels", visible: bool) -> bytes:
    """The 0/255 PNG of ``inst``'s visible (``visible``) or full mask; the visible one is the full one's bytes
    when the two masks are equal."""
    if visible and np.array_equal(inst.visible_mask, inst.full_mask):
        visible = False
    mask = inst.visible_mask if visible else inst.full_mask
    return _remembered(labels, ("mask_png", inst.instance_id, visible),
                       lambda: png_bytes(mask.astype(np.uint8) * 255))


def visible_rle(labels: "FrameLabels", inst: "InstanceLabels") -> dict:
    """COCO compressed RLE of ``inst``'s visible mask (a new dict each call: callers may keep it)."""
    from .coco import encode_rle

    return dict(_remembered(labels, ("visible_rle", inst.instance_id), lambda: encode_rle(inst.visible_mask)))
