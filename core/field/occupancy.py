"""Occupancy grid: which cells of space may hold density, so rays skip the empty ones.

The grid follows nerfacc's ``OccGridEstimator`` exactly (same buffers, cell layout and update rule), so the
CUDA path can hand its buffers to nerfacc's functional ``traverse_grids`` and the CPU path can march it
with the pure-torch marcher in :mod:`..render.march` and obtain the same samples (no nerfacc estimator is
kept: as a sub-module its buffers would go into the field's ``state_dict``):

- ``levels`` nested boxes; level 0 is ``roi_aabb``, level ``i`` is ``roi_aabb`` scaled by ``2**i`` about its
  centre; each level has ``resolution**3`` cells indexed ``[level, ix, iy, iz]``; where levels overlap, the
  finest level decides;
- ``occs`` holds an EMA of ``density * step_size`` per cell; ``binaries = occs > min(mean(occs), threshold)``
  (nerfacc's rule, which keeps a faint young field marchable), or ``occs > threshold`` when asked for an
  ``absolute`` threshold and some cell passes it.

For the CPU marcher the grid also keeps a chessboard distance (in cells) from each empty cell to the nearest
occupied one: a ray may jump over that many cells without missing an occupied one, which gives the same
samples as stepping through every lattice point.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

DensityFn = Callable[[Tensor], Tensor]


def level_aabbs(roi_aabb: Tensor, levels: int) -> Tensor:
    """(levels, 6) boxes [xmin, ymin, zmin, xmax, ymax, zmax]: ``roi_aabb`` enlarged by 2**level."""
    roi = roi_aabb.reshape(6).float()
    centre = (roi[:3] + roi[3:]) / 2
    half = (roi[3:] - roi[:3]) / 2
    return torch.stack([torch.cat([centre - half * 2 ** i, centre + half * 2 ** i]) for i in range(levels)])


class OccupancyGrid(torch.nn.Module):
    """Binary occupancy over ``levels`` nested boxes of ``resolution**3`` cells (nerfacc's layout)."""

    def __init__(self, roi_aabb: Tensor, resolution: int = 128, levels: int = 1) -> None:
        super().__init__()
        self.resolution = int(resolution)
        self.levels = int(levels)
        self.register_buffer("aabbs", level_aabbs(torch.as_tensor(roi_aabb, dtype=torch.float32), levels))
        cells = self.levels * self.resolution ** 3
        # Before the first update every cell is occupied: training must see all of space once.
        self.register_buffer("occs", torch.full((cells,), float("inf")))
        self.register_buffer("binaries", torch.ones(self.levels, self.resolution, self.resolution,
                                                    self.resolution, dtype=torch.bool))
        # cached chessboard distances, see skip_cells(): {nested: (binaries' cache key, distances)}
        self._skip_cells: dict[bool, tuple[tuple, Tensor]] = {}

    # --- geometry -----------------------------------------------------------------------------------

    @property
    def roi_aabb(self) -> Tensor:
        return self.aabbs[0]

    def level_of(self, points: Tensor) -> Tensor:
        """Finest level whose box holds each point (points outside every box get the last level)."""
        roi = self.aabbs[0]
        centre = (roi[:3] + roi[3:]) / 2
        half = (roi[3:] - roi[:3]) / 2
        extent = ((points - centre) / half).abs().amax(dim=-1)
        level = torch.ceil(torch.log2(extent.clamp_min(1.0)))
        return level.clamp(0, self.levels - 1).long()

    def cell_of(self, points: Tensor, level: Tensor) -> Tensor:
        """(N, 3) integer cell index of each point in its level's grid (clamped to the grid)."""
        box = self.aabbs[level]
        frac = (points - box[:, :3]) / (box[:, 3:] - box[:, :3])
        return (frac * self.resolution).floor().long().clamp(0, self.resolution - 1)

    def flat_index(self, level: Tensor, cell: Tensor) -> Tensor:
        r = self.resolution
        return ((level * r + cell[:, 0]) * r + cell[:, 1]) * r + cell[:, 2]

    def occupied(self, points: Tensor) -> Tensor:
        """(N,) bool: does the finest level holding the point mark its cell occupied?"""
        level = self.level_of(points)
        return self.binaries.reshape(-1)[self.flat_index(level, self.cell_of(points, level))]

    def cell_points(self, level: int, indices: Tensor, jitter: bool) -> Tensor:
        """World positions in the given flat cells (within one level): centres, or uniform random points."""
        r = self.resolution
        ix = torch.div(indices, r * r, rounding_mode="floor")
        iy = torch.div(indices, r, rounding_mode="floor") % r
        iz = indices % r
        grid = torch.stack([ix, iy, iz], dim=-1).float()
        offset = torch.rand_like(grid) if jitter else torch.full_like(grid, 0.5)
        box = self.aabbs[level]
        return box[:3] + (grid + offset) / r * (box[3:] - box[:3])

    # --- update (nerfacc's rule) ----------------------------------------------------------------------

    @torch.no_grad()
    def update(self, density_fn: DensityFn, step_size: float, *, threshold: float = 0.01,
               decay: float = 0.95, fraction: float = 1.0, samples_per_cell: int = 1,
               chunk: int = 1 << 18, absolute: bool = False) -> None:
        """Refresh ``occs``/``binaries`` from the density at a random point of each (sampled) cell.

        ``fraction`` < 1 re-evaluates that share of cells chosen at random plus every occupied cell
        (nerfacc samples 1/4 uniformly + occupied after warm-up). ``samples_per_cell`` > 1 takes the
        maximum over that many random points per cell (a thorough refresh, e.g. after training).
        """
        r3 = self.resolution ** 3
        occs = self.occs.view(self.levels, r3)
        first = bool(torch.isinf(occs).any())
        for level in range(self.levels):
            if fraction >= 1.0 or first:
                indices = torch.arange(r3, device=occs.device)
            else:
                n = max(1, int(r3 * fraction))
                random = torch.randint(0, r3, (n,), device=occs.device)
                occupied = self.binaries[level].reshape(-1).nonzero().squeeze(-1)
                indices = torch.unique(torch.cat([random, occupied]))
            values = torch.empty(len(indices), device=occs.device)
            for start in range(0, len(indices), chunk):
                part = indices[start:start + chunk]
                best = torch.zeros(len(part), device=occs.device)
                for _ in range(samples_per_cell):
                    points = self.cell_points(level, part, jitter=True)
                    best = torch.maximum(best, density_fn(points).reshape(-1) * step_size)
                values[start:start + len(part)] = best
            current = occs[level, indices]
            current = torch.where(torch.isinf(current), torch.zeros_like(current), current)
            occs[level, indices] = torch.maximum(current * decay, values)
        occs[torch.isinf(occs)] = 0.0
        self.refresh_binaries(threshold, absolute=absolute)

    @torch.no_grad()
    def update_from_cell_values(self, values: Tensor, *, threshold: float = 0.01, decay: float = 0.95,
                                absolute: bool = False) -> None:
        """Like :meth:`update` with every cell's value given: (levels, R, R, R) of ``density * step``."""
        occs = self.occs.view(values.shape)
        current = torch.where(torch.isinf(occs), torch.zeros_like(occs), occs)
        occs.copy_(torch.maximum(current * decay, values))
        self.refresh_binaries(threshold, absolute=absolute)

    @torch.no_grad()
    def refresh_binaries(self, threshold: float = 0.01, *, absolute: bool = False) -> None:
        """``absolute``: cells above ``threshold`` itself, not the lower of it and the mean. A field trained
        to be sparse has a low mean, and nerfacc's rule would then keep its faint haze occupied (many more
        samples per ray); a field with no cell above the threshold keeps the relative rule."""
        valid = self.occs[self.occs >= 0]
        thre = min(float(valid.mean()) if len(valid) else 0.0, threshold)
        if absolute and bool((valid > threshold).any()):
            thre = threshold
        self.binaries.copy_((self.occs > thre).view(self.binaries.shape))
        self._skip_cells = {}

    # --- skipping for the CPU marcher -------------------------------------------------------------------

    #: the skip distance is computed on a grid this many times coarser (OR-pooled); 1: on the grid itself,
    #: whose finer distances let rays near surfaces jump further (a 64^3 x 5 grid's distances take ~15 ms)
    SKIP_COARSENING = 1

    def skip_cells(self, nested: bool = True) -> Tensor:
        """(levels, R/c, R/c, R/c) int: chessboard distance, in coarse cells of c = SKIP_COARSENING fine
        cells, to the nearest coarse cell that holds an occupied cell. 0 = may hold samples.

        ``nested``: a coarser level treats the region covered by the next finer level as occupied, since there
        the finer grid decides; a finer level never lets a ray jump past its own box edge (the coarser grid
        decides beyond it). Not ``nested``: each level's own cells alone, the finer box counted empty; the
        caller stops every jump at the level's box edges itself (the compiled marcher does, exactly, so a ray
        approaching the next level is not slowed to single cells by a distance that shrinks towards it).
        """
        key = self._cache_key()
        cached = self._skip_cells.get(nested)
        if cached is not None and cached[0] == key:
            return cached[1]
        from scipy.ndimage import distance_transform_cdt

        c = self.SKIP_COARSENING
        r = self.resolution // c
        coarse = torch.nn.functional.max_pool3d(self.binaries.detach().float().cpu()[:, None], c)[:, 0] > 0
        binaries = coarse.numpy().copy()
        for level in range(1, self.levels):
            lo, hi = r // 4, r - r // 4  # the finer box covers the middle half of this level's grid
            binaries[level, lo:hi, lo:hi, lo:hi] = nested
        out = np.zeros(binaries.shape, dtype=np.int32)
        index = np.arange(r)
        to_edge = np.minimum(index + 1, r - index)  # cells to just outside the grid, per axis
        to_edge = np.minimum(np.minimum(to_edge[:, None, None], to_edge[None, :, None]), to_edge[None, None, :])
        for level in range(self.levels):
            if binaries[level].any():
                out[level] = distance_transform_cdt(~binaries[level], metric="chessboard")
            else:
                out[level] = 2 * r  # nothing anywhere: skip the whole level
            if nested and level < self.levels - 1:
                out[level] = np.minimum(out[level], to_edge)
        distances = torch.from_numpy(out).to(self.binaries.device)
        self._skip_cells[nested] = (key, distances)
        return distances

    def _cache_key(self) -> tuple:
        # torch bumps a tensor's version on every in-place change (update, load_state_dict, .to())
        return (self.binaries.data_ptr(), self.binaries._version, str(self.binaries.device))

    def lookup(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(N,) bool occupied, and (N,) world distance a ray from each point can travel without entering an
        occupied cell (0 in or next to occupied space).

        Chessboard distance d (coarse cells) to the nearest occupied cell means every point within (d - 1)
        coarse cell widths (L-inf, hence also along any ray) lies in an empty cell.
        """
        r = self.resolution
        c = self.SKIP_COARSENING
        if self.levels == 1:
            box = self.aabbs[0]
            scale = r / (box[3:] - box[:3])
            cell = ((points - box[:3]) * scale).long().clamp_(0, r - 1)
            flat = (cell[:, 0] * r + cell[:, 1]) * r + cell[:, 2]
            coarse = cell // c
            rc = r // c
            skip = self.skip_cells().reshape(-1)[(coarse[:, 0] * rc + coarse[:, 1]) * rc + coarse[:, 2]]
            cell_size = float((1.0 / scale).min()) * c
            return self.binaries.reshape(-1)[flat], (skip - 1).clamp_min(0).float() * cell_size
        level = self.level_of(points)
        cell = self.cell_of(points, level)
        occupied = self.binaries.reshape(-1)[self.flat_index(level, cell)]
        rc = r // c
        coarse = cell // c
        skip = self.skip_cells().reshape(-1)[((level * rc + coarse[:, 0]) * rc + coarse[:, 1]) * rc + coarse[:, 2]]
        box = self.aabbs[level]
        cell_size = ((box[:, 3:] - box[:, :3]) / self.resolution).amin(dim=-1) * c
        return occupied, (skip - 1).clamp_min(0).float() * cell_size

    def occupied_fast(self, points: Tensor) -> Tensor:
        """Same as :meth:`occupied`, with fewer operations for a single level."""
        if self.levels != 1:
            return self.occupied(points)
        r = self.resolution
        box = self.aabbs[0]
        cell = ((points - box[:3]) * (r / (box[3:] - box[:3]))).long().clamp_(0, r - 1)
        return self.binaries.reshape(-1)[(cell[:, 0] * r + cell[:, 1]) * r + cell[:, 2]]
