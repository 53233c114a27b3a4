"""Which view pairs to match, and which pixels of the first view to query.

A pair (a, b), a < b, is a candidate when its optical axes are at most ``max_angle_deg`` apart and its
baseline is at least ``min_baseline_ratio`` of the distance from the cameras to what they look at (with a
tiny baseline every depth gives the same pixel: the pair teaches nothing and the round trip checks nothing).
Pairs are skipped with a reason; ``n_pairs`` of the candidates are picked by a seeded permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..geometry.view import View


@dataclass(frozen=True)
class PairChoice:
    pairs: list[tuple[int, int]]  # (position of a, position of b) in the views list, a < b
    skipped: dict[str, int]  # reason -> how many candidate pairs it removed


def optical_axis(view: View) -> np.ndarray:
    return -np.asarray(view.cam_to_data, dtype=np.float64)[:3, 2]  # OpenGL cameras look down -z


def pair_geometry(a: View, b: View, target: np.ndarray) -> tuple[float, float]:
    """(angle between the optical axes in degrees, baseline / mean distance of the cameras to ``target``)."""
    ca, cb = a.cam_to_data[:3, 3], b.cam_to_data[:3, 3]
    cos = float(np.clip(optical_axis(a) @ optical_axis(b), -1.0, 1.0))
    distance = 0.5 * (np.linalg.norm(ca - target) + np.linalg.norm(cb - target))
    return float(np.degrees(np.arccos(cos))), float(np.linalg.norm(ca - cb) / max(distance, 1e-12))


def select_pairs(views: Sequence[View], target: np.ndarray, n_pairs: Optional[int] = None, *,
                 max_angle_deg: float = 45.0, min_baseline_ratio: float = 0.05, seed: int = 0) -> PairChoice:
    """Up to ``n_pairs`` (all when None) pairs of ``views`` that pass the angle and baseline limits, in
    (a, b) order; ``target``: the point the cameras look at (the field's box centre)."""
    candidates, skipped = [], {"angle": 0, "small_baseline": 0}
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            angle, baseline = pair_geometry(views[i], views[j], np.asarray(target, dtype=np.float64))
            if angle > max_angle_deg:
                skipped["angle"] += 1
            elif baseline < min_baseline_ratio:
                skipped["small_baseline"] += 1
            else:
                candidates.append((i, j))
    if n_pairs is not None and n_pairs < len(candidates):
        order = np.random.default_rng(seed).permutation(len(candidates))[:n_pairs]
        candidates = [candidates[k] for k in sorted(order)]
    return PairChoice(candidates, skipped)


def query_pixels(width: int, height: int, n: Optional[int], *, mask: Optional[np.ndarray] = None,
                 seed: int = 0) -> np.ndarray:
    """(N, 2) pixel centres (transforms.json convention) to query: ``n`` drawn without replacement from the
    pixels where ``mask`` (H, W) is set (every pixel without one); all of them when ``n`` is None or more."""
    allowed = np.ones((height, width), bool) if mask is None else np.asarray(mask, bool)
    flat = np.flatnonzero(allowed.reshape(-1))
    if n is not None and n < len(flat):
        flat = np.sort(np.random.default_rng(seed).choice(flat, size=n, replace=False))
    rows, cols = np.divmod(flat, width)
    return np.stack([cols + 0.5, rows + 0.5], axis=1)
