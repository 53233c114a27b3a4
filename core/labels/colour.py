"""A box object's edges from the photo's colours, where the field's geometry is too blurred to place them.

A box object's pixels come from where the field puts its weight inside the box. A field trained for minutes
blurs the object's foot into a skirt of fog over the table, which falls inside the box and above the support
plane, and it leaves faint patches at grazing rims: the mask is right in its middle and wrong in a band of a
few pixels along its outline. The photo separates object from table there: GrabCut (OpenCV's iterated graph
cut over colour mixtures, Rother et al. 2004) is started from the field's mask -- its core (the mask eroded
by ``CORE_SHARE`` of its equivalent radius) as certain object, the rest of it as probable object, the rest of
the box's silhouette as probable background, everything outside it and every pixel another label holds as
certain background -- and decides the band from the colours. It moves only the outline: the core stays the
object's (only where the field is sure of it: a foggy field fills a ring's hole, which the colours then give
back), and nothing outside the box's silhouette can join it.

It fails where a whole face of the object is missing from the field's mask and has its own shade (a cube's
side under cameras that look down): the object's colour model never sees that shade. scripts/bench_labels.py
reports the box IoU with and without it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: the certain core: the field's mask eroded by this share of its equivalent radius sqrt(area / pi)
CORE_SHARE = 0.25
#: graph-cut and colour-model rounds
ITERATIONS = 5
#: a window whose levels all lie within this many of each other shows nothing to cut by
FLAT_LEVELS = 2
#: masks smaller than this are left as the field made them (too few pixels for a colour mixture)
MIN_PIXELS = 30


def refine_mask(image: np.ndarray, mask: np.ndarray, allowed: np.ndarray, forbidden: np.ndarray, *,
                sure: Optional[np.ndarray] = None, core_share: float = CORE_SHARE,
                iterations: int = ITERATIONS) -> np.ndarray:
    """The object's pixels (bool, shape of ``mask``) after a colour graph cut of ``image`` (uint8 (h, w, 3),
    the photo's window) started from the field's ``mask``; ``allowed``: where the object may be (the box's
    silhouette), ``forbidden``: pixels another label holds. The result lies in ``allowed & ~forbidden`` and
    keeps the mask's core; a mask under ``MIN_PIXELS``, a window with no background left to learn from, or a
    picture of one colour comes back unchanged. ``sure``: where the field is sure of the object (the
    core is certain object only there; default everywhere). Deterministic: OpenCV's generator (per thread) is
    seeded before each cut."""
    import cv2

    mask = np.asarray(mask, dtype=bool)
    possible = np.asarray(allowed, dtype=bool) & ~np.asarray(forbidden, dtype=bool)
    start = mask & possible
    area = int(start.sum())
    if area < MIN_PIXELS or not (~start).any():
        return start
    pixels = np.asarray(image[..., :3])
    if int(pixels.max()) - int(pixels.min()) <= FLAT_LEVELS:  # one colour (a blank or black picture): no evidence
        return start
    trimap = np.full(mask.shape, cv2.GC_BGD, np.uint8)
    trimap[possible] = cv2.GC_PR_BGD
    trimap[start] = cv2.GC_PR_FGD
    radius = int(round(core_share * np.sqrt(area / np.pi)))
    core = start
    if radius > 0:
        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        core = cv2.erode(start.astype(np.uint8), kernel).astype(bool)
    if sure is not None:
        core = core & np.asarray(sure, dtype=bool)
    trimap[core] = cv2.GC_FGD
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # the colour mixtures start from k-means on OpenCV's generator
    try:
        cv2.grabCut(np.ascontiguousarray(image[..., :3], dtype=np.uint8), trimap, None, background, foreground,
                    int(iterations), cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a colour mixture with too few distinct pixels to start from: keep the field's mask
        return start
    return ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)) & possible

