"""Which pixels of a view can see an object: the projection of its convex hull, where its silhouette must lie.

Ray casting an object only through these pixels, not its whole bounding rectangle, skips the rays that cannot
hit it (a third to a half of the rectangle for round objects). The polygon is found where projection is exact:
in undistorted normalised coordinates the projection of a convex hull is the convex hull of its projected
vertices. Through a distorting lens that polygon's edges bend, so each edge is sampled densely, distorted, and
the pixels inside the convex hull of those samples are taken: the curved outline lies inside it (up to the
chords between samples, which ``PAD`` covers). The silhouette found is the same as casting every pixel.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..geometry.cameras import Intrinsics, distort
from ..geometry.projection import Region
from ..geometry.transforms import apply_points

#: pixels added around the polygon: rasterisation rounding (under a pixel) and the chords of a bent edge
PAD = 2
#: samples per hull edge through a distorting lens (a chord of 1/64 of an edge stays well within PAD)
EDGE_SAMPLES = 64
#: polygon coordinates beyond this many image sizes from the region: cast the whole region instead (cv2's
#: fixed-point rasteriser works in int32)
_FAR = 8


def footprint(intrinsics: Intrinsics, cam_from_world: np.ndarray, points: np.ndarray, extent: Region
              ) -> Optional[tuple[Region, Optional[np.ndarray]]]:
    """The pixels whose centres may see the convex hull of world ``points`` (N, 3), within ``extent``, from
    the OpenCV ``cam_from_world``: ``(region, window)``, ``window`` a bool (r1 - r0, c1 - c0) mask of the
    pixels of ``region`` to cast (None: all of them). None when no point is in front of the camera or the
    footprint misses ``extent``; the whole extent when the points straddle the camera plane (unbounded)."""
    p_cam = apply_points(cam_from_world, np.asarray(points, dtype=np.float64))
    z = p_cam[:, 2]
    if np.all(z <= 0):
        return None
    if np.any(z <= 1e-9):
        return extent, None
    ring = _convex_ring(p_cam[:, :2] / z[:, None])
    flat = ring is None  # all on a line (a flat object seen edge-on): its whole rectangle
    if flat:
        ring = p_cam[:, :2] / z[:, None]
    elif intrinsics.has_distortion:
        ring = _densify(ring, EDGE_SAMPLES)
    xy = distort(intrinsics, ring)
    pixels = np.stack([xy[:, 0] * intrinsics.fx + intrinsics.cx, xy[:, 1] * intrinsics.fy + intrinsics.cy],
                      axis=-1)
    if not np.all(np.isfinite(pixels)):
        return extent, None
    c0 = max(int(np.floor(pixels[:, 0].min())) - PAD, extent[0])
    r0 = max(int(np.floor(pixels[:, 1].min())) - PAD, extent[1])
    c1 = min(int(np.ceil(pixels[:, 0].max())) + PAD, extent[2])
    r1 = min(int(np.ceil(pixels[:, 1].max())) + PAD, extent[3])
    if c0 >= c1 or r0 >= r1:
        return None
    region = (c0, r0, c1, r1)
    far = _FAR * max(extent[2] - extent[0], extent[3] - extent[1])
    if flat or np.abs(pixels - [c0, r0]).max() > far:
        return region, None
    return region, _raster(pixels, region)


def _convex_ring(xy: np.ndarray) -> Optional[np.ndarray]:
    """The convex hull of 2D points as a ring of vertices (float64); None when it has no area."""
    import cv2

    # float32 only chooses the hull's points; the ring keeps their float64 coordinates
    index = cv2.convexHull(xy.astype(np.float32), returnPoints=False).reshape(-1)
    if len(index) < 3 or abs(cv2.contourArea(xy[index].astype(np.float32))) <= 0.0:
        return None
    return xy[index]


def _densify(ring: np.ndarray, samples: int) -> np.ndarray:
    """``samples`` points along each edge of a closed ring (its vertices included)."""
    t = np.arange(samples) / samples
    start, end = ring, np.roll(ring, -1, axis=0)
    return (start[:, None, :] + (end - start)[:, None, :] * t[None, :, None]).reshape(-1, 2)


def _raster(pixels: np.ndarray, region: Region) -> np.ndarray:
    """The pixels of ``region`` whose centres lie inside the convex hull of ``pixels`` (continuous pixel
    coordinates, centres at +0.5), grown by ``PAD``."""
    import cv2

    c0, r0, c1, r1 = region
    shift = 4  # 1/16 pixel fixed point
    local = (pixels - [c0 + 0.5, r0 + 0.5]) * (1 << shift)
    hull = cv2.convexHull(np.round(local).astype(np.int32))
    mask = np.zeros((r1 - r0, c1 - c0), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=shift)
    mask = cv2.dilate(mask, np.ones((2 * PAD + 1, 2 * PAD + 1), np.uint8))
    return mask.astype(bool)
