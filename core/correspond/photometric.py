"""A photometric gate for correspondences: the two photos should show the same colour at the two pixels.

The round trip only checks that the field agrees with itself. A field trained briefly on the CPU places many
surfaces at a wrong depth that is nevertheless consistent across views, so wrong pairs pass the round trip
(bench_correspond.py: ~30-40 % of accepted pairs are off by more than 5 px on such fields, at every
threshold). The photos are independent of the field: a wrong depth usually lands on a different texel.
"""

from __future__ import annotations

import numpy as np


def colour_difference(image_a: np.ndarray, image_b: np.ndarray, uv_a: np.ndarray, uv_b: np.ndarray
                      ) -> np.ndarray:
    """(N,) largest per-channel absolute difference between ``image_a`` at ``uv_a`` and ``image_b`` at
    ``uv_b`` ((H, W, C) arrays; (N, 2) pixels in the OpenCV convention, as the output's ``uv_a``/``uv_b``:
    the nearest pixel centre is read). Infinite where a pixel is NaN or outside its image."""
    uv_a, uv_b = np.asarray(uv_a, dtype=np.float64), np.asarray(uv_b, dtype=np.float64)
    out = np.full(len(uv_a), np.inf)
    cols_a, rows_a, ok_a = _nearest(image_a, uv_a)
    cols_b, rows_b, ok_b = _nearest(image_b, uv_b)
    ok = ok_a & ok_b
    a = np.asarray(image_a, dtype=np.float64)[rows_a[ok], cols_a[ok]].reshape(int(ok.sum()), -1)
    b = np.asarray(image_b, dtype=np.float64)[rows_b[ok], cols_b[ok]].reshape(int(ok.sum()), -1)
    out[ok] = np.abs(a - b).max(axis=1)
    return out


def _nearest(image: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    height, width = np.shape(image)[:2]
    finite = np.isfinite(uv).all(axis=1)
    cols = np.floor(np.where(finite, uv[:, 0], -1.0) + 0.5).astype(np.int64)
    rows = np.floor(np.where(finite, uv[:, 1], -1.0) + 0.5).astype(np.int64)
    ok = finite & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return cols, rows, ok
