"""A ray's depth distribution: packed sample intervals, each with its share of the ray's weight.

Volume rendering gives each sample interval ``[t_start, t_end]`` a weight ``w_i = T_i (1 - exp(-sigma_i
delta_i))``; their sum is the ray's opacity. Divided by the opacity they are a probability distribution of
where the ray's surface lies (NeRF-Supervision Eq. 4). Inside an interval the density is taken as uniform,
so the CDF is piecewise linear and :func:`sample_depths` draws continuous distances, not lattice points.

Distances are along unit ray directions (``t``), in the field's (dataset's) units. Rays whose opacity stays
under ``min_opacity`` have no surface: their depths are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
from torch import Tensor

from ..errors import NeuralLabelError
from ..field.model import Field
from ..render.march import march
from ..render.samples import RaySamples
from ..render.volrend import packed_cumsum, segment_sum, weights_from_density

MODES = ("sample", "mean", "median", "mode")


@dataclass(frozen=True)
class DepthDistribution:
    """Packed intervals of ``n_rays`` rays (sorted by ray, then distance) with normalised weights ``pdf``
    (per ray they sum to 1 where ``opacity`` > 0) and each ray's ``opacity`` (sum of its raw weights)."""

    ray_indices: Tensor  # (M,) int64
    t_starts: Tensor  # (M,)
    t_ends: Tensor  # (M,)
    pdf: Tensor  # (M,) weight / opacity of the ray
    opacity: Tensor  # (n_rays,)
    n_rays: int

    def __len__(self) -> int:
        return int(self.ray_indices.shape[0])


def from_samples(samples: RaySamples) -> DepthDistribution:
    """The distribution of packed samples whose ``sigmas`` (or ``weights``) are set.

    Each sample's weight is placed half a sample nearer than the sample: its density was taken at its middle,
    so the surface that made it heavy lies between the previous sample's middle and its own (the start of a
    ray's first sample stays: nothing is placed in front of where marching began)."""
    weights = samples.weights
    if weights is None:
        if samples.sigmas is None:
            raise NeuralLabelError("samples carry neither sigmas nor weights")
        weights, _ = weights_from_density(samples, samples.sigmas)
    opacity = segment_sum(weights, samples) if len(samples) else torch.zeros(samples.n_rays,
                                                                            device=samples.t_starts.device)
    pdf = weights / opacity[samples.ray_indices].clamp_min(1e-12) if len(samples) else weights
    half = (samples.t_ends - samples.t_starts) / 2
    t_starts, t_ends = samples.t_starts - half, samples.t_ends - half
    if len(samples):
        first = _packs(samples.ray_indices, samples.n_rays)[0][samples.ray_indices]
        t_starts = torch.maximum(t_starts, samples.t_starts[first])
    return DepthDistribution(samples.ray_indices, t_starts, t_ends, pdf, opacity, samples.n_rays)


class DepthSource(Protocol):
    """Where depth distributions come from: unit rays (N, 3) + (N, 3) -> a :class:`DepthDistribution`."""

    def __call__(self, origins: Tensor, directions: Tensor) -> DepthDistribution:
        ...


@dataclass(frozen=True)
class FieldDepth:
    """A trained field's distribution, from the same marcher as rendering. Sampling starts at ``near`` or the
    field's training near plane, whichever is further: fog in front of it is never drawn."""

    field: Field
    near: float = 0.0
    far: float = 1e10
    backend: str = "auto"

    @torch.no_grad()
    def __call__(self, origins: Tensor, directions: Tensor) -> DepthDistribution:
        device = self.field.aabb.device
        o = origins.to(device=device, dtype=torch.float32)
        d = directions.to(device=device, dtype=torch.float32)
        near = max(float(self.near), float(self.field.config.near))
        return from_samples(march(self.field, o, d, near=near, far=self.far, backend=self.backend))


@dataclass(frozen=True)
class DensityDepth:
    """The distribution of any density function ``sigma(points (N, 3)) -> (N,)`` on a uniform lattice of
    ``step`` from ``near`` to ``far`` (analytic scenes in tests; no occupancy grid, no skipping)."""

    density: Callable[[Tensor], Tensor]
    near: float
    far: float
    step: float

    @torch.no_grad()
    def __call__(self, origins: Tensor, directions: Tensor) -> DepthDistribution:
        n = origins.shape[0]
        k = int(round((self.far - self.near) / self.step))
        t_starts = self.near + self.step * torch.arange(k, dtype=torch.float32, device=origins.device)
        t_starts = t_starts.repeat(n)
        ray_indices = torch.arange(n, device=origins.device).repeat_interleave(k)
        samples = RaySamples(ray_indices, t_starts, t_starts + self.step, n)
        sigmas = self.density(samples.points(origins.float(), directions.float()))
        return from_samples(samples.with_values(sigmas=sigmas))


def _packs(ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """(n_rays,) each ray's first packed sample (sorted ``ray_indices``; a ray without samples gets the next
    ray's), and (n_rays,) its number of samples."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    return torch.cumsum(counts, 0) - counts, counts


def _uniform(n_rays: int, n: int, generator: Optional[torch.Generator]) -> Tensor:
    return torch.rand((n_rays, n), generator=generator, dtype=torch.float64)


def _inverse_cdf(dist: DepthDistribution, u: Tensor) -> tuple[Tensor, Tensor]:
    """Distances (n_rays, n) where each ray's CDF reaches ``u`` (n_rays, n), linear inside an interval, and
    the index of that interval (-1 for rays without samples)."""
    n_rays, n = u.shape
    device = dist.t_starts.device
    if len(dist) == 0:
        return torch.full((n_rays, n), float("nan"), device=device), torch.full((n_rays, n), -1, device=device)
    pack_start, counts = _packs(dist.ray_indices, n_rays)
    cdf = packed_cumsum(dist.pdf, dist.ray_indices, pack_start, exclusive=False).double().clamp(0.0, 1.0)
    # Ray r's CDF lives in (r, r + 1] after adding r: one sorted key for searchsorted over every ray at once.
    key = dist.ray_indices.double() + cdf
    rays = torch.arange(n_rays, device=device, dtype=torch.float64)[:, None]
    query = (rays + u.to(device)).reshape(-1)
    index = torch.searchsorted(key, query, side="left").reshape(n_rays, n)
    first = pack_start[:, None]
    last = (pack_start + counts - 1)[:, None]
    index = torch.minimum(torch.maximum(index, first), last.clamp_min(0)).clamp_max(len(dist) - 1)
    w = dist.pdf[index].double()
    before = cdf[index] - w
    fraction = ((u.to(device) - before) / w.clamp_min(1e-300)).clamp(0.0, 1.0)
    t = dist.t_starts[index].double() + fraction * (dist.t_ends[index] - dist.t_starts[index]).double()
    empty = (counts == 0)[:, None].expand(n_rays, n)
    t = torch.where(empty, torch.full_like(t, float("nan")), t)
    index = torch.where(empty, torch.full_like(index, -1), index)
    return t.float(), index


def sample_depths(dist: DepthDistribution, mode: str = "sample", n: int = 1,
                  generator: Optional[torch.Generator] = None, *, min_opacity: float = 0.5
                  ) -> tuple[Tensor, Tensor]:
    """(n_rays, n) distances along the rays and the probability mass of the interval each lies in.

    ``sample``: ``n`` independent inverse-CDF draws (uniforms from ``generator`` on the CPU, so a seed gives
    the same draws on every device); ``mean``: the weighted mean distance; ``median``: where the CDF reaches
    1/2; ``mode``: the midpoint of the heaviest interval. The single-depth modes repeat their one value ``n``
    times. NaN (and mass 0) where a ray's opacity is under ``min_opacity``: no surface.
    """
    if mode not in MODES:
        raise NeuralLabelError(f"mode {mode!r}: choose from {', '.join(MODES)}", field="mode")
    n_rays = dist.n_rays
    device = dist.t_starts.device
    if mode == "sample":
        t, index = _inverse_cdf(dist, _uniform(n_rays, n, generator))
    elif mode == "median":
        t, index = _inverse_cdf(dist, torch.full((n_rays, 1), 0.5, dtype=torch.float64))
    elif mode == "mean":
        mids = (dist.t_starts + dist.t_ends) / 2
        total = torch.zeros(n_rays, device=device).index_add_(0, dist.ray_indices, dist.pdf * mids)
        t, index = total[:, None], torch.full((n_rays, 1), -1, device=device)
    else:
        best = torch.full((n_rays,), -1.0, device=device)
        best.scatter_reduce_(0, dist.ray_indices, dist.pdf, reduce="amax")
        heaviest = dist.pdf >= best[dist.ray_indices]
        index = torch.full((n_rays,), len(dist), device=device, dtype=torch.long)
        where = torch.arange(len(dist), device=device)[heaviest]
        index.scatter_reduce_(0, dist.ray_indices[heaviest], where, reduce="amin")  # the nearest of ties
        has = index < len(dist)
        t = torch.full((n_rays,), float("nan"), device=device)
        t[has] = (dist.t_starts[index[has]] + dist.t_ends[index[has]]) / 2
        index = torch.where(has, index, torch.full_like(index, -1))
        t, index = t[:, None], index[:, None]
    t, index = t.expand(n_rays, n), index.expand(n_rays, n)
    mass = torch.where(index >= 0, dist.pdf[index.clamp_min(0)] if len(dist) else torch.zeros_like(t),
                       torch.zeros_like(t))
    solid = (dist.opacity >= min_opacity)[:, None]
    t = torch.where(solid, t, torch.full_like(t, float("nan")))
    return t.contiguous(), torch.where(solid, mass, torch.zeros_like(mass)).contiguous()
