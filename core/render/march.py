"""Ray marching through a field's occupancy grid into packed :class:`RaySamples` (with their densities).

Sampling is nerfacc's ``OccGridEstimator.sampling`` with a constant step: candidate samples sit at the
midpoints ``near + (k + 1/2) * step`` (the same lattice for every ray), a sample is kept when its cell is
occupied, its opacity reaches ``alpha_thre`` and the transmittance before it is still above
``early_stop_eps``. On CUDA nerfacc's functional ``traverse_grids`` does the marching over the field's own
grid buffers; on the CPU the compiled :func:`.march_numba.march_numba` does it one loop per ray; on CUDA
when nerfacc's kernels cannot be built (see :func:`nerfacc_kernels`) :func:`march_cpu` yields the same
samples in pure torch (it is also the compiled marcher's reference in the tests): it jumps over empty space
with the occupancy grid's chessboard distance, looks at a short window of lattice points once near
occupied cells, and stops each ray as soon as it is opaque (early ray termination), evaluating the density
only where a sample survives.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import NeuralLabelError
from ..field.model import Field
from ..field.occupancy import OccupancyGrid
from .samples import RaySamples


def ray_box(origins: Tensor, directions: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through an axis-aligned box (6,); exit < entry = miss."""
    d = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    inv = 1.0 / d
    t0 = (box[:3] - origins) * inv
    t1 = (box[3:] - origins) * inv
    return torch.minimum(t0, t1).amax(dim=-1), torch.maximum(t0, t1).amin(dim=-1)


def effective_alpha_thre(field: Field) -> float:
    """nerfacc lowers ``alpha_thre`` to the mean occupancy value, so a faint young field is not skipped."""
    occs = torch.nan_to_num(field.occupancy.occs, posinf=0.0)
    return min(field.config.alpha_thre, float(occs.mean()))


@dataclass(frozen=True)
class Lattice:
    """Where a ray's samples sit: sample ``k`` covers ``[t(k), t(k + 1)]``.

    Uniform steps of ``step`` from ``start`` out to ``switch`` (the detailed region, as far as any camera
    sees it), then steps that grow with the distance, ``t(k + 1) = t(k) * (1 + cone)`` (instant-ngp's cone
    stepping, nerfacc's ``cone_angle``): the contracted background, where one voxel spans ever more
    distance, is marched coarsely. ``cone = 0``: uniform everywhere. ``start`` is per ray (a stratified
    offset); steps grow from the first lattice point at or past ``max(switch, step / cone)``."""

    start: Tensor  # (N,)
    step: float
    cone: float = 0.0
    switch: float = 0.0

    @property
    def k_switch(self) -> Tensor:
        if self.cone <= 0:
            return torch.full_like(self.start, float("inf"))
        t_switch = max(self.switch, self.step / self.cone)
        return torch.ceil((t_switch - self.start).clamp_min(0) / self.step)

    def t(self, k: Tensor, rays: Optional[Tensor] = None) -> Tensor:
        """Distance of lattice point ``k`` (any real index) on ``rays`` (default: all, aligned with k)."""
        start = self.start if rays is None else self.start[rays]
        uniform = start + k * self.step
        if self.cone <= 0:
            return uniform
        ks = self.k_switch if rays is None else self.k_switch[rays]
        t_switch = start + ks * self.step
        grown = t_switch * torch.exp((k - ks).clamp_min(0) * math.log1p(self.cone))
        return torch.where(k <= ks, uniform, grown)

    def k(self, t: Tensor, rays: Optional[Tensor] = None) -> Tensor:
        """The (real) lattice index of distance ``t``: the inverse of :meth:`t`."""
        start = self.start if rays is None else self.start[rays]
        uniform = (t - start) / self.step
        if self.cone <= 0:
            return uniform
        ks = self.k_switch if rays is None else self.k_switch[rays]
        t_switch = start + ks * self.step
        grown = ks + torch.log(t.clamp_min(1e-12) / t_switch.clamp_min(1e-12)) / math.log1p(self.cone)
        return torch.where(t <= t_switch, uniform, grown)

    def switch_distance(self) -> Tensor:
        """(N,) where each ray's steps start to grow (``inf`` without a cone)."""
        return self.start + self.k_switch * self.step


def field_lattice(field: Field, start: Tensor) -> Lattice:
    return Lattice(start, field.sample_step_size, field.config.cone_angle, field.config.background_from)


def ray_span(field: Field, origins: Tensor, directions: Tensor, near: float, far: float, stratified: bool
             ) -> tuple[Tensor, Tensor, Lattice]:
    """Where each ray is inside the field's outermost box (entry, exit, clamped to near / far) and its
    lattice (a random offset of up to one step per ray when ``stratified``)."""
    t_enter, t_exit = ray_box(origins, directions, field.occupancy.aabbs[-1])
    start = torch.full((origins.shape[0],), float(near), device=origins.device)
    if stratified:
        start = start + torch.rand(origins.shape[0], device=origins.device) * field.sample_step_size
    return t_enter.clamp_min(near), t_exit.clamp_max(far), field_lattice(field, start)


@torch.no_grad()
def march_cpu(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e10,
              stratified: bool = False, window: int = 8, max_window: int = 64) -> RaySamples:
    """Samples of nerfacc's occupancy-grid marcher, in pure torch (runs on any device), with ``sigmas``."""
    grid: OccupancyGrid = field.occupancy
    eps = field.config.early_stop_eps
    alpha_thre = effective_alpha_thre(field)
    n = origins.shape[0]
    device = origins.device
    t_enter, t_exit, lattice = ray_span(field, origins, directions, near, far, stratified)
    # lattice index of the first midpoint at or after the entry, and one past the last before the exit
    k = torch.ceil(lattice.k(t_enter) - 0.5).clamp_min(0).long()
    k_end = torch.ceil(lattice.k(t_exit) - 0.5).long()
    transmittance = torch.ones(n, device=device)
    alive = (k < k_end).nonzero().squeeze(-1)
    kept_rays, kept_k, kept_sigma = [], [], []
    iteration = 0
    while alive.numel() > 0:
        # Rays that are still going after a few windows cross thin density: look further ahead per pass.
        # (The window only sets how many lattice points are examined per pass, not which are kept.)
        window = min(max_window, window * 2) if iteration >= 2 else window
        iteration += 1
        offsets = torch.arange(window, device=device)
        # 1) rays in empty space jump ahead by the safe distance of their current point
        kf = k[alive].float()
        mid = lattice.t(kf + 0.5, alive)
        points = origins[alive] + mid[:, None] * directions[alive]
        _, safe = grid.lookup(points)
        jump = torch.floor(lattice.k(mid + safe, alive) - kf - 0.5).long() + 1
        far_jump = jump > window
        jumpers = alive[far_jump]
        k[jumpers] += jump[far_jump]
        alive = alive[~far_jump]
        if alive.numel() == 0:
            alive = jumpers[k[jumpers] < k_end[jumpers]]
            continue
        # 2) the others look at a window of lattice points: evaluate density where the cell is occupied
        kk = k[alive][:, None] + offsets
        valid = kk < k_end[alive][:, None]
        rows = alive[:, None].expand_as(kk)
        edges = lattice.t(torch.cat([kk, kk[:, -1:] + 1], dim=1).float(),
                          torch.cat([rows, rows[:, -1:]], dim=1))
        mids = (edges[:, 1:] + edges[:, :-1]) / 2
        deltas = edges[:, 1:] - edges[:, :-1]
        points = (origins[alive][:, None, :] + mids[..., None] * directions[alive][:, None, :]).reshape(-1, 3)
        occupied = grid.occupied_fast(points).view(-1, window) & valid
        sigma = torch.zeros(occupied.shape, device=device)
        if bool(occupied.any()):
            sigma[occupied] = field.density(points[occupied.reshape(-1)])
        alpha = 1.0 - torch.exp(-sigma * deltas)
        trans_before = transmittance[alive][:, None] * torch.cumprod(
            torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
        keep = occupied & (trans_before >= eps) & (alpha >= alpha_thre)
        if bool(keep.any()):
            r, c = keep.nonzero(as_tuple=True)
            kept_rays.append(alive[r])
            kept_k.append(kk[r, c])
            kept_sigma.append(sigma[r, c])
        transmittance[alive] = trans_before[:, -1] * (1.0 - alpha[:, -1])
        k[alive] += window
        alive = torch.cat([jumpers, alive])
        alive = alive[(k[alive] < k_end[alive]) & (transmittance[alive] >= eps)]
    if not kept_rays:
        return RaySamples.empty(n, device).with_values(sigmas=torch.zeros(0, device=device))
    ray_indices = torch.cat(kept_rays)
    lattice_k = torch.cat(kept_k)
    sigmas = torch.cat(kept_sigma)
    order = torch.argsort(ray_indices * (int(lattice_k.max()) + 1) + lattice_k)
    ray_indices, lattice_k, sigmas = ray_indices[order], lattice_k[order], sigmas[order]
    kf = lattice_k.float()
    return RaySamples(ray_indices, lattice.t(kf, ray_indices), lattice.t(kf + 1, ray_indices), n, sigmas=sigmas)


@torch.no_grad()
def march_nerfacc(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0,
                  far: float = 1e10, stratified: bool = False) -> RaySamples:
    """The same samples from nerfacc's CUDA kernels (needs a CUDA device), with ``sigmas``.

    nerfacc's functional API on the field's own grid buffers: no ``OccGridEstimator`` is built or kept
    (one held by the field would land in its ``state_dict``, see :mod:`..field.checkpoint`)."""
    from nerfacc.grid import traverse_grids
    from nerfacc.volrend import render_visibility_from_density

    grid = field.occupancy
    step = field.sample_step_size
    near_planes = torch.full_like(origins[..., 0], fill_value=near)
    far_planes = torch.full_like(origins[..., 0], fill_value=far)
    if stratified:
        near_planes += torch.rand_like(near_planes) * step
    # the lattice of :class:`Lattice`: uniform steps up to the switch, nerfacc's cone steps beyond it
    switch = field_lattice(field, near_planes).switch_distance()
    parts = []
    for seg_near, seg_far, cone in ((near_planes, torch.minimum(far_planes, switch), 0.0),
                                    (torch.maximum(near_planes, switch), far_planes, field.config.cone_angle)):
        if cone == 0.0 and seg_near is not near_planes:
            continue
        intervals, packed, _ = traverse_grids(origins, directions, grid.binaries, grid.aabbs,
                                              near_planes=seg_near, far_planes=seg_far, step_size=step,
                                              cone_angle=cone)
        parts.append((packed.ray_indices.long(), intervals.vals[intervals.is_left],
                      intervals.vals[intervals.is_right]))
        if field.config.cone_angle <= 0:
            break
    ray_indices, t_starts, t_ends = (torch.cat(values) for values in zip(*parts))
    if len(parts) > 1 and ray_indices.numel():
        order = torch.argsort(ray_indices.double() * (t_ends.max().double() + 1) + t_starts.double())
        ray_indices, t_starts, t_ends = ray_indices[order], t_starts[order], t_ends[order]
    samples = RaySamples(ray_indices, t_starts, t_ends, origins.shape[0])
    if len(samples) == 0:
        return samples.with_values(sigmas=torch.zeros(0, device=origins.device))
    sigmas = field.density(samples.points(origins, directions))
    counts = torch.bincount(samples.ray_indices, minlength=samples.n_rays)
    # int64: nerfacc's scan kernels refuse int32 offsets
    packed_info = torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)
    visible = render_visibility_from_density(
        t_starts=samples.t_starts, t_ends=samples.t_ends, sigmas=sigmas, packed_info=packed_info,
        early_stop_eps=field.config.early_stop_eps, alpha_thre=effective_alpha_thre(field))
    return RaySamples(samples.ray_indices[visible], samples.t_starts[visible], samples.t_ends[visible],
                      samples.n_rays, sigmas=sigmas[visible])


@functools.lru_cache(maxsize=None)
def nerfacc_kernels() -> Optional[str]:
    """None when nerfacc's CUDA kernels load; otherwise why not (see :func:`choose_backend` for the notice).

    nerfacc 0.5.3 ships no kernels for this torch: it JIT-compiles them on first use (minutes, once per
    machine; needs nvcc of torch's CUDA major version and ninja) and, without them, fails later with an
    AttributeError. Asked once per process (the build is cached on disk by torch)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    captured = io.StringIO()
    try:  # nerfacc announces its build on stdout: keep it off ours (the CLI may print JSON lines there)
        with contextlib.redirect_stdout(captured):
            # nerfacc's own loader: importing it builds (or loads) the kernels into its `_C` attribute
            kernels = getattr(importlib.import_module("nerfacc.cuda._backend"), "_C", None)
        ready = kernels is not None and hasattr(kernels, "traverse_grids")
        why = captured.getvalue().strip().splitlines()[-1:] or ["the kernels did not load"]
        reason = why[0]
    except Exception as error:  # a failed compile raises from torch.utils.cpp_extension.load
        last = str(error).strip().splitlines()[-1:] or [""]
        ready, reason = False, f"{type(error).__name__}: {last[0]}"
    return None if ready else reason


#: the marchers :func:`choose_backend` knows ("auto" picks by device)
MARCHERS = ("auto", "nerfacc", "torch", "numba")


def choose_backend(device: torch.device | str, backend: str = "auto") -> tuple[str, Optional[str]]:
    """The marcher :func:`march` uses on ``device`` (``numba`` on the CPU, ``nerfacc`` on CUDA, ``torch``
    where CUDA has no nerfacc kernels) and, for that fallback, the one line to tell the user (else None)."""
    if backend not in MARCHERS:
        raise NeuralLabelError(f"marcher {backend!r} is not one of {', '.join(MARCHERS)}", field="backend")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "numba" and on_cuda:
        raise NeuralLabelError("the numba marcher runs on the CPU only", field="backend")
    if backend in ("torch", "numba"):
        return backend, None
    if backend == "auto" and not on_cuda:
        return "numba", None
    missing = nerfacc_kernels()
    if missing is None:
        return "nerfacc", None
    notice = (f"nerfacc's CUDA kernels are not built ({missing}); marching with the slower pure-torch marcher. "
              "For the fast path install the CUDA toolkit matching torch.version.cuda (nvcc on PATH) and "
              "ninja, then run once: python -c 'import nerfacc.cuda._backend'")
    if backend == "nerfacc":
        raise NeuralLabelError(notice, field="backend")
    return "torch", notice


def march(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e10,
          stratified: bool = False, backend: str = "auto") -> RaySamples:
    """Packed samples with their densities: nerfacc on CUDA when its kernels load (``backend`` auto, see
    :func:`choose_backend`), the compiled :func:`.march_numba.march_numba` on the CPU, :func:`march_cpu`
    (pure torch) on CUDA without nerfacc's kernels."""
    chosen = choose_backend(origins.device, backend)[0]
    if chosen == "nerfacc":
        return march_nerfacc(field, origins, directions, near=near, far=far, stratified=stratified)
    if chosen == "numba":
        from .march_numba import march_numba

        return march_numba(field, origins, directions, near=near, far=far, stratified=stratified)
    return march_cpu(field, origins, directions, near=near, far=far, stratified=stratified)
