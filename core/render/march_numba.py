"""The occupancy-grid marcher of :mod:`.march` compiled for the CPU (numba), with the density evaluated inside.

:func:`march_numba` returns the samples :func:`.march.march_cpu` returns (the same lattice, the same
occupancy, ``alpha_thre`` and early-stop rules, the field's own density formula), but each ray is one loop
in machine code: empty occupancy cells are left in one jump (to the cell's exit, or further by the grid's
chessboard skip distance), the density is interpolated from the grid where a sample lands in an occupied
cell, and the ray stops as soon as it is opaque. Rays run in parallel threads, in interleaved blocks. Two
passes: the first writes each ray's first samples (``slots_per_ray``) into its own slots and counts them all,
the second copies them into their packed places and marches again only the rays that had more.

The density here must stay the formula of :meth:`..field.model.Field.density` (contraction, trilinear
``grid_sample`` with ``align_corners=True`` and border padding, softplus, scale, per contracted length);
``tests/test_render.py`` compares the two marchers sample by sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from ..field.model import Field
from .samples import RaySamples
from .volrend import SURFACE_OUTPUTS

_JIT = dict(nogil=True, cache=True)


@dataclass(frozen=True)
class _Grids:
    """The field's arrays and constants in the form the kernels take (float32 / uint8 numpy views)."""

    density: np.ndarray  # (D, D, D) raw density grid
    binaries: np.ndarray  # (L, R, R, R) uint8 occupancy
    skip: np.ndarray  # (L, R/c, R/c, R/c) int32 chessboard skip distance in coarse cells, not nested
    aabbs: np.ndarray  # (L, 6) float64 level boxes
    centre: np.ndarray  # (3,) float64 roi centre
    inv_half: np.ndarray  # (3,) float64 reciprocal roi half widths: products, not divisions, per sample
    cells: np.ndarray  # (L, 6) float64 per level: cell width per axis, then cells per unit length per axis
    # levels, coarsening, contracted-density flag; density shift, scale
    ints: np.ndarray  # int64 [levels, coarsening, contracted_density]
    floats: np.ndarray  # float64 [shift, scale]


def _grids(field: Field) -> _Grids:
    """The kernels' arrays, kept on the field until its density or occupancy changes (a render marches the
    same field in many chunks; copying the density grid per chunk cost a tenth of a render)."""
    grid = field.occupancy
    key = (field.density_grid.data_ptr(), field.density_grid._version, grid.binaries.data_ptr(),
           grid.binaries._version, field.config.levels, field.config.contracted_density)
    cached = getattr(field, "_numba_grids", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    grids = _Grids(
        density=np.ascontiguousarray(field.density_grid.detach()[0, 0].float().cpu().numpy()),
        binaries=np.ascontiguousarray(grid.binaries.cpu().numpy().astype(np.uint8)),
        skip=np.ascontiguousarray(grid.skip_cells(nested=False).cpu().numpy().astype(np.int32)),
        aabbs=grid.aabbs.cpu().double().numpy(),
        centre=field.roi_centre.cpu().double().numpy(),
        inv_half=1.0 / field.roi_half.cpu().double().numpy(),
        cells=_cell_sizes(grid.aabbs.cpu().double().numpy(), grid.resolution),
        ints=np.array([field.config.levels, grid.SKIP_COARSENING, int(bool(field.config.contracted_density))],
                      dtype=np.int64),
        floats=np.array([field.density_shift, field.density_scale], dtype=np.float64),
    )
    field._numba_grids = (key, grids)
    return grids


def _cell_sizes(aabbs: np.ndarray, resolution: int) -> np.ndarray:
    width = (aabbs[:, 3:] - aabbs[:, :3]) / resolution
    return np.ascontiguousarray(np.concatenate([width, 1.0 / width], axis=1))


@numba.njit(**_JIT)
def _lattice_t(k, start, step, ks, log_growth):
    """Distance of (real) lattice index ``k``: :meth:`.march.Lattice.t`."""
    if k <= ks:
        return start + k * step
    return (start + ks * step) * math.exp((k - ks) * log_growth)


@numba.njit(**_JIT)
def _lattice_k(t, start, step, ks, log_growth):
    """Real lattice index of distance ``t``: :meth:`.march.Lattice.k`."""
    t_switch = start + ks * step
    if t <= t_switch:
        return (t - start) / step
    return ks + math.log(max(t, 1e-12) / max(t_switch, 1e-12)) / log_growth


@numba.njit(inline="always", **_JIT)
def _density(px, py, pz, density, centre, inv_half, levels, contracted, shift, scale):
    """:meth:`Field.density` at one world point (float32 arithmetic where torch uses it). Products with
    reciprocals and truncation of non-negative indices instead of divisions and ``floor``: most of a lookup's
    time went to those."""
    ux = (px - centre[0]) * inv_half[0]
    uy = (py - centre[1]) * inv_half[1]
    uz = (pz - centre[2]) * inv_half[2]
    norm = 1.0
    if levels > 1:
        norm = max(abs(ux), abs(uy), abs(uz), 1e-9)
        if norm > 1.0:
            f = (2.0 - 1.0 / norm) / norm
            ux, uy, uz = ux * f, uy * f, uz * f
        ux, uy, uz = ux * 0.5, uy * 0.5, uz * 0.5
    n = density.shape[0]
    # grid_sample, align_corners=True, border padding: clamp the continuous index into the grid
    to_index = 0.5 * (n - 1)
    fx = min(max((ux + 1.0) * to_index, 0.0), n - 1.0)
    fy = min(max((uy + 1.0) * to_index, 0.0), n - 1.0)
    fz = min(max((uz + 1.0) * to_index, 0.0), n - 1.0)
    x0 = min(int(fx), n - 2)
    y0 = min(int(fy), n - 2)
    z0 = min(int(fz), n - 2)
    ax, ay, az = fx - x0, fy - y0, fz - z0
    c00 = density[x0, y0, z0] * (1 - az) + density[x0, y0, z0 + 1] * az
    c01 = density[x0, y0 + 1, z0] * (1 - az) + density[x0, y0 + 1, z0 + 1] * az
    c10 = density[x0 + 1, y0, z0] * (1 - az) + density[x0 + 1, y0, z0 + 1] * az
    c11 = density[x0 + 1, y0 + 1, z0] * (1 - az) + density[x0 + 1, y0 + 1, z0 + 1] * az
    raw = (c00 * (1 - ay) + c01 * ay) * (1 - ax) + (c10 * (1 - ay) + c11 * ay) * ax + shift
    softplus = raw if raw > 20.0 else math.log1p(math.exp(raw))  # torch's softplus threshold
    sigma = softplus * scale
    if contracted and levels > 1 and norm > 1.0:
        sigma = sigma / (norm * norm)
    return sigma


@numba.njit(inline="always", **_JIT)
def _cell(px, py, pz, aabbs, cells, centre, inv_half, levels, r):
    """Finest level holding the point and its cell (:meth:`OccupancyGrid.level_of` / ``cell_of``)."""
    extent = max(abs(px - centre[0]) * inv_half[0], abs(py - centre[1]) * inv_half[1],
                 abs(pz - centre[2]) * inv_half[2])
    level = 0
    reach = 1.0
    while extent > reach and level < levels - 1:  # ceil(log2(extent)), without the logarithm
        level += 1
        reach *= 2.0
    # truncation is floor here: a negative index is clamped to 0 either way
    cx = min(max(int((px - aabbs[level, 0]) * cells[level, 3]), 0), r - 1)
    cy = min(max(int((py - aabbs[level, 1]) * cells[level, 4]), 0), r - 1)
    cz = min(max(int((pz - aabbs[level, 2]) * cells[level, 5]), 0), r - 1)
    return level, cx, cy, cz


@numba.njit(**_JIT)
def _box_span(ox, oy, oz, dx, dy, dz, aabbs, level):
    """Where the ray enters and leaves level ``level``'s box (enter > leave: it never meets it)."""
    enter, leave = -1e30, 1e30
    for axis in range(3):
        o = ox if axis == 0 else (oy if axis == 1 else oz)
        d = dx if axis == 0 else (dy if axis == 1 else dz)
        lo, hi = aabbs[level, axis], aabbs[level, axis + 3]
        if abs(d) > 1e-12:
            a, b = (lo - o) / d, (hi - o) / d
            enter, leave = max(enter, min(a, b)), min(leave, max(a, b))
        elif o < lo or o > hi:
            return 1e30, -1e30
    return enter, leave


@numba.njit(**_JIT)
def _march_ray(i, o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps, peak_stop,
               density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats,
               out_t, out_sigma, offset, capacity, peak_out):
    """March ray ``i``, storing its first ``capacity`` samples from ``offset``. Returns its sample count.

    ``peak_stop`` > 0: the samples are also composited as they come, in :func:`_composite_ray`'s float32 steps,
    and the ray stops once their opacity reaches ``peak_stop`` and the light left is less than their heaviest
    weight: no later sample can weigh more, so the peak, and whether the opacity reaches ``peak_stop``, are
    already the whole ray's. The opacity so far and the peak go to ``peak_out[i, 0]`` and ``peak_out[i, 3]``."""
    levels, coarsening, contracted = ints[0], ints[1], ints[2]
    f32 = np.float32
    tau_sum = 0.0
    passed = f32(1.0)  # the light reaching the next sample, as _composite_ray computes it
    opacity = f32(0.0)
    peak_weight = f32(0.0)
    peak_t = np.inf
    shift, scale = floats[0], floats[1]
    r = binaries.shape[1]
    s0 = start[i]
    ox, oy, oz = o[i, 0], o[i, 1], o[i, 2]
    dx, dy, dz = d[i, 0], d[i, 1], d[i, 2]
    if cone > 0.0:
        ks = math.ceil(max(max(switch, step / cone) - s0, 0.0) / step)
        log_growth = math.log1p(cone)
    else:
        ks = 1e30
        log_growth = 1.0
    k = max(math.ceil(_lattice_k(t_enter[i], s0, step, ks, log_growth) - 0.5), 0.0)
    k_end = math.ceil(_lattice_k(t_exit[i], s0, step, ks, log_growth) - 0.5)
    transmittance = 1.0
    count = 0
    t_lo = _lattice_t(k, s0, step, ks, log_growth)
    while k < k_end:
        t_hi = _lattice_t(k + 1.0, s0, step, ks, log_growth)
        mid = 0.5 * (t_lo + t_hi)
        px, py, pz = ox + mid * dx, oy + mid * dy, oz + mid * dz
        level, cx, cy, cz = _cell(px, py, pz, aabbs, cells, centre, inv_half, levels, r)
        if binaries[level, cx, cy, cz] == 0:
            # leave the empty cell: to its exit, or further by the chessboard skip distance
            w, wy, wz = cells[level, 0], cells[level, 1], cells[level, 2]
            lo_x = aabbs[level, 0] + cx * w
            lo_y = aabbs[level, 1] + cy * wy
            lo_z = aabbs[level, 2] + cz * wz
            t_cell = 1e30
            if dx > 1e-12:
                t_cell = min(t_cell, (lo_x + w - ox) / dx)
            elif dx < -1e-12:
                t_cell = min(t_cell, (lo_x - ox) / dx)
            if dy > 1e-12:
                t_cell = min(t_cell, (lo_y + wy - oy) / dy)
            elif dy < -1e-12:
                t_cell = min(t_cell, (lo_y - oy) / dy)
            if dz > 1e-12:
                t_cell = min(t_cell, (lo_z + wz - oz) / dz)
            elif dz < -1e-12:
                t_cell = min(t_cell, (lo_z - oz) / dz)
            hops = skip[level, cx // coarsening, cy // coarsening, cz // coarsening] - 1
            if hops > 0:
                # every cell within `hops` coarse cells on each axis is empty: go as far as the first axis allows
                reach = 1e30
                if abs(dx) > 1e-12:
                    reach = min(reach, w / abs(dx))
                if abs(dy) > 1e-12:
                    reach = min(reach, wy / abs(dy))
                if abs(dz) > 1e-12:
                    reach = min(reach, wz / abs(dz))
                # never past this level's box, nor into the finer level's box: their grids decide there
                limit = _box_span(ox, oy, oz, dx, dy, dz, aabbs, level)[1]
                if level > 0:
                    enter, leave = _box_span(ox, oy, oz, dx, dy, dz, aabbs, level - 1)
                    if leave >= max(enter, mid):
                        limit = min(limit, max(enter, mid))
                t_cell = max(t_cell, min(mid + hops * coarsening * reach, limit))
            k_next = math.ceil(_lattice_k(t_cell, s0, step, ks, log_growth) - 0.5)
            k = max(k + 1.0, k_next)
            t_lo = _lattice_t(k, s0, step, ks, log_growth)
            continue
        sigma = _density(px, py, pz, density, centre, inv_half, levels, contracted, shift, scale)
        alpha = 1.0 - math.exp(-sigma * (t_hi - t_lo))
        if alpha >= alpha_thre:
            if count < capacity:
                out_t[offset + count, 0] = t_lo
                out_t[offset + count, 1] = t_hi
                out_sigma[offset + count] = sigma
            count += 1
            if peak_stop > 0.0:
                tau = f32(sigma) * (f32(t_hi) - f32(t_lo))
                w = passed * (f32(1.0) - f32(math.exp(-tau)))
                tau_sum += float(tau)
                passed = f32(math.exp(-f32(tau_sum)))
                opacity += w
                if w > peak_weight:  # the first of equal weights, as _composite_ray
                    peak_weight = w
                    peak_t = f32(t_lo)
                if opacity >= peak_stop and passed < peak_weight:
                    break
        transmittance *= 1.0 - alpha
        if transmittance < eps:
            break
        k += 1.0
        t_lo = t_hi
    if peak_stop > 0.0:
        peak_out[i, 0] = opacity
        peak_out[i, 3] = peak_t
    return count


#: Threads take interleaved blocks of this many neighbouring rays: neighbouring pixels cost alike, so
#: contiguous shares would not balance, and within a block a thread reads the stretch of the grids its last
#: ray read (faster than single interleaved rays)
RAY_BLOCK = 8

#: samples each ray may write in the first pass; rays with more are marched again into exact slots. A small
#: batch (a training step's rays) gets more, up to SLOT_BUDGET slots in all: its rays are long (a field in
#: training is not yet opaque), and marching each of them twice cost a third of a step's march
RAY_SLOTS = 16
SLOT_BUDGET = 1 << 20
MAX_RAY_SLOTS = 1024


def slots_per_ray(n_rays: int) -> int:
    return max(RAY_SLOTS, min(MAX_RAY_SLOTS, SLOT_BUDGET // max(n_rays, 1)))


@numba.njit(parallel=True, **_JIT)
def _march_all(o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps,
               density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats, lanes, slots):
    n = o.shape[0]
    counts = np.zeros(n, dtype=np.int64)
    unused = np.empty((1, 4), dtype=np.float32)  # no peak_stop: _march_ray writes no peak
    slots_t = np.empty((n * slots, 2), dtype=np.float32)
    slots_sigma = np.empty(n * slots, dtype=np.float32)
    # pass 1: every ray writes its first ``slots`` samples into its own slots and counts them all
    for lane in numba.prange(lanes):
        for block in range(lane, (n + RAY_BLOCK - 1) // RAY_BLOCK, lanes):
            for i in range(block * RAY_BLOCK, min(n, (block + 1) * RAY_BLOCK)):
                counts[i] = _march_ray(i, o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps, 0.0,
                                       density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats,
                                       slots_t, slots_sigma, i * slots, slots, unused)
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + counts[i]
    out_t = np.empty((offsets[n], 2), dtype=np.float32)
    out_sigma = np.empty(offsets[n], dtype=np.float32)
    # pass 2: copy the slots; march the rays that had more samples again, straight into their place
    for i in numba.prange(n):
        if counts[i] <= slots:
            for j in range(counts[i]):
                out_t[offsets[i] + j, 0] = slots_t[i * slots + j, 0]
                out_t[offsets[i] + j, 1] = slots_t[i * slots + j, 1]
                out_sigma[offsets[i] + j] = slots_sigma[i * slots + j]
        else:
            _march_ray(i, o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps, 0.0,
                       density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats,
                       out_t, out_sigma, offsets[i], counts[i], unused)
    return counts, out_t, out_sigma


@torch.no_grad()
def march_numba(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e10,
                stratified: bool = False) -> RaySamples:
    """:func:`.march.march_cpu`'s samples (with ``sigmas``), marched by compiled per-ray loops (CPU only)."""
    from .march import effective_alpha_thre, ray_span

    n = origins.shape[0]
    device = origins.device
    if n == 0:
        return RaySamples.empty(0, device).with_values(sigmas=torch.zeros(0, device=device))
    step = field.sample_step_size
    t_enter, t_exit, lattice = ray_span(field, origins, directions, near, far, stratified)
    start = lattice.start
    g = _grids(field)
    as64 = lambda x: np.ascontiguousarray(x.detach().cpu().double().numpy())  # noqa: E731
    counts, t, sigmas = _march_all(
        as64(origins), as64(directions), as64(start), as64(t_enter), as64(t_exit), float(step),
        float(lattice.cone), float(lattice.switch), float(effective_alpha_thre(field)),
        float(field.config.early_stop_eps), g.density, g.binaries, g.skip, g.aabbs, g.cells, g.centre, g.inv_half,
        g.ints, g.floats, numba.get_num_threads() * 8, slots_per_ray(n))
    ray_indices = torch.repeat_interleave(torch.arange(n), torch.from_numpy(counts)).to(device)
    t = torch.from_numpy(t).to(device)
    return RaySamples(ray_indices, t[:, 0].contiguous(), t[:, 1].contiguous(), n,
                      sigmas=torch.from_numpy(sigmas).to(device))


#: samples a ray of :func:`_surface_all` keeps in its lane's scratch; a ray with more is marched again
SURFACE_SLOTS = 512


@numba.njit(**_JIT)
def _composite_ray(t, sigma, begin, end, out, i, weights):
    """:func:`.volrend.composite`'s ``opacity``, ``distance``, ``median_distance`` and ``peak_distance`` of one
    ray's samples ``begin:end`` into ``out[i]``, and their weights into ``weights[begin:end]``, in its
    precisions (float32 values, float64 running sums)."""
    f32 = np.float32
    opacity = f32(0.0)
    weighted = f32(0.0)
    tau_sum = 0.0  # packed_cumsum(tau): float64, exclusive
    peak_weight = f32(0.0)
    peak = np.inf
    for j in range(begin, end):
        tau = sigma[j] * (t[j, 1] - t[j, 0])
        w = f32(math.exp(-f32(tau_sum))) * (f32(1.0) - f32(math.exp(-tau)))
        weights[j] = w
        tau_sum += float(tau)
        opacity += w
        mid = (t[j, 0] + t[j, 1]) / f32(2.0)
        weighted += w * mid
        if w > peak_weight:  # the first of equal weights; its start, as volrend.peak_distance
            peak_weight = w
            peak = t[j, 0]
    out[i, 0] = opacity
    out[i, 1] = weighted / max(opacity, f32(1e-12)) if opacity > 0 else np.inf
    out[i, 2] = np.inf
    out[i, 3] = peak
    if opacity <= 0:
        return
    target = f32(0.5) * opacity
    cum = 0.0  # packed_cumsum(weights, inclusive): float64
    for j in range(begin, end):
        w = weights[j]
        cum += float(w)
        if f32(cum) >= target:
            fraction = min(max((target - (f32(cum) - w)) / max(w, f32(1e-12)), f32(0.0)), f32(1.0))
            out[i, 2] = t[j, 0] + fraction * (t[j, 1] - t[j, 0])
            return


@numba.njit(parallel=True, **_JIT)
def _composite_packed(offsets, t, sigma, lanes):
    n = len(offsets) - 1
    out = np.empty((n, 4), dtype=np.float32)
    weights = np.empty(len(sigma), dtype=np.float32)
    for lane in numba.prange(lanes):
        for i in range(lane, n, lanes):
            _composite_ray(t, sigma, offsets[i], offsets[i + 1], out, i, weights)
    return out, weights


def composite_numba(samples: RaySamples) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`.volrend.composite` with ``depth_only`` of CPU samples (``sigmas`` set), one compiled loop per
    ray: ``opacity``, ``distance``, ``median_distance``, ``peak_distance`` (N,), and the samples' weights (M,)."""
    counts = torch.bincount(samples.ray_indices, minlength=samples.n_rays).numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    t = np.ascontiguousarray(torch.stack([samples.t_starts, samples.t_ends], dim=1).float().numpy())
    out, weights = _composite_packed(offsets, t, np.ascontiguousarray(samples.sigmas.float().numpy()),
                                     numba.get_num_threads() * 8)
    return _outputs(out), torch.from_numpy(weights)


def _outputs(out: np.ndarray) -> dict[str, Tensor]:
    """The compiled compositing's output columns (in :data:`.volrend.SURFACE_OUTPUTS`' order) by name."""
    out = torch.from_numpy(out)
    return {key: out[:, k] for k, key in enumerate(SURFACE_OUTPUTS)}


@numba.njit(parallel=True, **_JIT)
def _surface_all(o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps, peak_stop,
                 density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats, lanes):
    """Per ray (opacity, distance, median distance, peak distance), float32: each ray marched into its lane's
    scratch and composited there, never packed (a depth map's rays need no samples). With ``peak_stop`` > 0,
    composited as marched and stopped once the peak is known (:func:`_march_ray`): the opacity so far and the
    peak, the distances NaN."""
    n = o.shape[0]
    out = np.empty((n, 4), dtype=np.float32)
    unused = np.empty((1, 4), dtype=np.float32)
    for lane in numba.prange(lanes):
        scratch_t = np.empty((SURFACE_SLOTS, 2), dtype=np.float32)
        scratch_sigma = np.empty(SURFACE_SLOTS, dtype=np.float32)
        scratch_w = np.empty(SURFACE_SLOTS, dtype=np.float32)
        for block in range(lane, (n + RAY_BLOCK - 1) // RAY_BLOCK, lanes):
            for i in range(block * RAY_BLOCK, min(n, (block + 1) * RAY_BLOCK)):
                if peak_stop > 0.0:
                    _march_ray(i, o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps, peak_stop,
                               density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats,
                               scratch_t, scratch_sigma, 0, 0, out)
                    out[i, 1] = np.nan
                    out[i, 2] = np.nan
                    continue
                count = _march_ray(i, o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps, 0.0,
                                   density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats,
                                   scratch_t, scratch_sigma, 0, SURFACE_SLOTS, unused)
                if count > SURFACE_SLOTS:
                    long_t = np.empty((count, 2), dtype=np.float32)
                    long_sigma = np.empty(count, dtype=np.float32)
                    _march_ray(i, o, d, start, t_enter, t_exit, step, cone, switch, alpha_thre, eps, 0.0,
                               density, binaries, skip, aabbs, cells, centre, inv_half, ints, floats,
                               long_t, long_sigma, 0, count, unused)
                    _composite_ray(long_t, long_sigma, 0, count, out, i, np.empty(count, dtype=np.float32))
                else:
                    _composite_ray(scratch_t, scratch_sigma, 0, count, out, i, scratch_w)
    return out


@torch.no_grad()
def surface_numba(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e10,
                  peak_stop: float = 0.0) -> dict[str, Tensor]:
    """``opacity``, ``distance``, ``median_distance`` and ``peak_distance`` (N,) of :func:`.views.render_rays`
    with ``depth_only`` (float32 on the CPU), marched and composited per ray in one compiled loop: no packed
    samples, so a whole depth map costs about the march alone.

    ``peak_stop`` > 0 (at most 1): each ray is composited as it is marched and stops as soon as its peak is
    decided and its opacity has reached ``peak_stop`` (:func:`_march_ray`). Then only ``peak_distance``, and
    whether ``opacity >= peak_stop``, are the whole ray's, and the other distances are NaN:
    :func:`.views.render_peak`."""
    from .march import effective_alpha_thre, ray_span

    n = origins.shape[0]
    if n == 0:
        return {key: torch.zeros(0) for key in SURFACE_OUTPUTS}
    t_enter, t_exit, lattice = ray_span(field, origins, directions, near, far, False)
    g = _grids(field)
    as64 = lambda x: np.ascontiguousarray(x.detach().cpu().double().numpy())  # noqa: E731
    out = _surface_all(
        as64(origins), as64(directions), as64(lattice.start), as64(t_enter), as64(t_exit),
        float(field.sample_step_size), float(lattice.cone), float(lattice.switch),
        float(effective_alpha_thre(field)), float(field.config.early_stop_eps), float(peak_stop), g.density,
        g.binaries, g.skip, g.aabbs, g.cells, g.centre, g.inv_half, g.ints, g.floats, numba.get_num_threads() * 8)
    return _outputs(out)
