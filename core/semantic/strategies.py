"""Which units to label next: random, entropy, margin, or geometry-aware (uncertainty x novelty).

Uncertainty of a unit: the mean over its unlabelled surface pixels of the normalised entropy (``entropy``,
``geometry``) or of 1 - margin (``margin``); 1 everywhere before any head exists. Novelty of a unit: the
share of its surface points (peak depth -> world point -> cell of a grid over the field's box) that no
labelled pixel of any view covers yet. The geometry-aware choice is greedy: each chosen unit covers its
cells at once, so the same surface is not picked again from another view in the same round (lazy greedy:
novelty only drops as cells get covered, so a stale score is an upper bound).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import NeuralLabelError
from .pool import Pool
from .rays import RayCache

STRATEGIES = ("random", "entropy", "margin", "geometry")
#: the cell grid over the field's box, per axis
CELL_RESOLUTION = 64
#: novelty floor: once every surface is covered the uncertainty alone still orders the units
NOVELTY_FLOOR = 1e-3
#: units at least 2 x this wide are scored on every SCORE_STRIDE-th pixel per axis: a unit's uncertainty is
#: a mean, 1/4 of a patch's pixels estimate it well, and scoring the pool is most of a round's time
SCORE_STRIDE = 2


def surface_cells(cache: RayCache, box: np.ndarray, resolution: int = CELL_RESOLUTION) -> np.ndarray:
    """(N,) flat cell index of each ray's surface point in a ``resolution``^3 grid over ``box`` (6,) (points
    outside go to the border cells); -1 without a surface."""
    box = np.asarray(box, dtype=np.float64).reshape(2, 3)
    surface = cache.surface.astype(np.float64)
    has = np.isfinite(surface[:, 0])
    cell = np.floor((surface[has] - box[0]) / (box[1] - box[0]) * resolution).astype(np.int64)
    cell = np.clip(cell, 0, resolution - 1)
    out = np.full(cache.n_rays, -1, dtype=np.int64)
    out[has] = (cell[:, 0] * resolution + cell[:, 1]) * resolution + cell[:, 2]
    return out


def scored_rays(cache: RayCache, pool: Pool) -> np.ndarray:
    """Indices of the rays whose uncertainty a round computes (see ``SCORE_STRIDE``)."""
    if pool.granularity.kind == "pixel" or (pool.granularity.kind == "patch"
                                            and pool.granularity.size < 2 * SCORE_STRIDE):
        return np.arange(cache.n_rays)
    return np.nonzero((cache.x % SCORE_STRIDE == 0) & (cache.y % SCORE_STRIDE == 0))[0]


def score_pool(head, cache: RayCache, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """(N,) entropy and margin of the head on the scored rays (:func:`scored_rays`), NaN on the others."""
    from .render import predict

    rays = scored_rays(cache, pool)
    prediction = predict(head, cache.subset(rays))
    entropy, margin = np.full(cache.n_rays, np.nan), np.full(cache.n_rays, np.nan)
    entropy[rays], margin[rays] = prediction.entropy, prediction.margin
    return entropy, margin


def ray_uncertainty(strategy: str, entropy: Optional[np.ndarray], margin: Optional[np.ndarray],
                    n_rays: int) -> np.ndarray:
    if strategy == "margin" and margin is not None:
        return 1.0 - margin
    if strategy in ("entropy", "geometry") and entropy is not None:
        return entropy
    return np.ones(n_rays)


@dataclass
class Selection:
    units: list[int]
    cost: int  # labelled pixels
    pool_exhausted: bool  # the budget was larger than what was left to label


def select_units(pool: Pool, cache: RayCache, strategy: str, budget: int, *, labelled: np.ndarray,
                 cells: np.ndarray, rng: np.random.Generator, entropy: Optional[np.ndarray] = None,
                 margin: Optional[np.ndarray] = None, taken: Optional[np.ndarray] = None) -> Selection:
    """Units to label for ``budget`` more pixels (the last unit may pass it), best first.

    ``labelled`` (N,) rays labelled already (or pending from earlier rounds); ``taken`` (U,) units chosen
    before; ``cells`` from :func:`surface_cells`."""
    if strategy not in STRATEGIES:
        raise NeuralLabelError(f"strategy {strategy!r}: choose from {', '.join(STRATEGIES)}", field="strategy")
    unit = pool.ray_unit
    open_ray = (unit >= 0) & cache.has_surface & ~labelled
    open_count = np.bincount(unit[open_ray], minlength=pool.size)
    available = open_count > 0
    if taken is not None:
        available &= ~taken
    candidates = np.nonzero(available)[0]
    tiebreak = rng.random(pool.size)
    cost = pool.cost
    if strategy == "random":
        order = candidates[np.argsort(tiebreak[candidates], kind="stable")]
        return _take(order, cost, budget)
    uncertainty = ray_uncertainty(strategy, entropy, margin, cache.n_rays)
    # the mean over the unit's open rays that were scored (NaN: not scored); a unit with none gets the mean
    scored = open_ray & np.isfinite(uncertainty)
    scored_count = np.bincount(unit[scored], minlength=pool.size)
    unit_unc = np.bincount(unit[scored], weights=uncertainty[scored], minlength=pool.size) / np.maximum(scored_count, 1)
    unit_unc[scored_count == 0] = float(uncertainty[scored].mean()) if scored.any() else 1.0
    if strategy != "geometry":
        order = candidates[np.lexsort((tiebreak[candidates], -unit_unc[candidates]))]
        return _take(order, cost, budget)
    return _greedy_geometry(pool, cache, candidates, unit_unc, cost, budget, labelled, cells, tiebreak)


def _take(order: np.ndarray, cost: np.ndarray, budget: int) -> Selection:
    total = np.cumsum(cost[order])
    chosen = order[:int(np.searchsorted(total, budget)) + 1]  # the shortest prefix reaching the budget
    exhausted = not len(order) or int(total[-1]) < budget
    return Selection(chosen.tolist(), int(cost[chosen].sum()), exhausted)


def _greedy_geometry(pool: Pool, cache: RayCache, candidates: np.ndarray, unit_unc: np.ndarray, cost: np.ndarray,
                     budget: int, labelled: np.ndarray, cells: np.ndarray, tiebreak: np.ndarray) -> Selection:
    n_cells = int(cells.max()) + 1 if cells.size and cells.max() >= 0 else 1
    covered = np.zeros(n_cells, dtype=bool)
    covered[cells[labelled & (cells >= 0)]] = True
    unit_cells = cells[pool.order]  # the rays' cells in unit order; -1 = no surface
    starts = pool.start

    def novelty(u: int) -> float:
        own = unit_cells[starts[u]:starts[u + 1]]
        own = own[own >= 0]
        return float((~covered[own]).mean()) if own.size else 0.0

    def score(u: int) -> float:
        return float(unit_unc[u]) * (NOVELTY_FLOOR + novelty(u))

    heap = [(-score(int(u)), float(tiebreak[u]), int(u)) for u in candidates]
    heapq.heapify(heap)
    chosen, spent = [], 0
    while heap and spent < budget:
        stale, tie, u = heapq.heappop(heap)
        fresh = -score(u)
        if heap and fresh > heap[0][0] + 1e-12:  # worse than the next one's upper bound: look again later
            heapq.heappush(heap, (fresh, tie, u))
            continue
        chosen.append(u)
        spent += int(cost[u])
        own = unit_cells[starts[u]:starts[u + 1]]
        covered[own[own >= 0]] = True
    return Selection(chosen, spent, spent < budget)
