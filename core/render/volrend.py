"""Compositing packed samples: volume-rendering weights, per-ray colour, opacity and distances."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..field.model import Field
from .samples import RaySamples


def packed_cumsum(values: Tensor, ray_indices: Tensor, pack_start: Tensor, *, exclusive: bool = True) -> Tensor:
    """Per-ray cumulative sum of packed ``values`` (sorted by ray): the sum over the ray's earlier samples
    (``exclusive``) or up to and including each sample.

    One global cumulative sum minus its value where each ray's pack begins; in float64 so that long packs
    keep their precision. ``pack_start`` is :meth:`RaySamples.pack_start`. Differentiable.
    """
    inclusive = torch.cumsum(values.double(), 0)
    first = pack_start[ray_indices]
    if exclusive:
        excl = inclusive - values.double()
        return (excl - excl[first]).float()
    before_pack = inclusive[first] - values[first].double()
    return (inclusive - before_pack).float()


def segment_sum(values: Tensor, samples: RaySamples) -> Tensor:
    """(n_rays, ...) per-ray sums of packed ``values`` (M, ...), sorted by ray (differentiable).

    ``index_add`` sums with float atomics on CUDA, in whatever order the threads arrive, so a render is not
    reproducible there. A segmented reduction over the packed rays adds each ray's samples in order on every
    device: the same bits on every run, and on the CPU exactly ``index_add``'s bits (float32, in order;
    differences of a float64 cumulative sum would change the CPU's last bits and every baked depth)."""
    n_rays = samples.n_rays
    if values.numel() == 0:
        return torch.zeros((n_rays,) + values.shape[1:], device=values.device, dtype=values.dtype)
    counts = torch.bincount(samples.ray_indices, minlength=n_rays)
    return torch.segment_reduce(values, "sum", lengths=counts, axis=0, unsafe=True)


def weights_from_density(samples: RaySamples, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """Packed volume-rendering weights and transmittance before each sample (differentiable in ``sigmas``)."""
    tau = sigmas * samples.deltas
    if tau.numel() == 0:
        return tau, tau
    trans = torch.exp(-packed_cumsum(tau, samples.ray_indices, samples.pack_start()))
    return trans * (1.0 - torch.exp(-tau)), trans


def median_distance(samples: RaySamples, opacity: Tensor) -> Tensor:
    """(n_rays,) distance where a ray's accumulated weight reaches half its opacity, interpolated inside
    the sample; ``inf`` for rays without weight. ``samples.weights`` must be set."""
    n_rays = opacity.shape[0]
    median = torch.full((n_rays,), float("inf"), device=opacity.device)
    weights = samples.weights
    if weights.numel() == 0:
        return median
    ray_indices = samples.ray_indices
    cum = packed_cumsum(weights, ray_indices, samples.pack_start(), exclusive=False)
    target = 0.5 * opacity[ray_indices]
    crossing = cum >= target
    index = torch.arange(len(weights), device=weights.device)
    first = torch.full((n_rays,), len(weights), device=weights.device, dtype=torch.long)
    first.scatter_reduce_(0, ray_indices[crossing], index[crossing], reduce="amin")
    has = (first < len(weights)) & (opacity > 0)
    i = first[has]
    fraction = ((target[i] - (cum[i] - weights[i])) / weights[i].clamp_min(1e-12)).clamp(0.0, 1.0)
    median[has] = samples.t_starts[i] + fraction * (samples.t_ends[i] - samples.t_starts[i])
    return median


def scale_gradient(values: Tensor, factor: Tensor) -> Tensor:
    """``values`` unchanged, but the gradient flowing back through them times ``factor`` (per row)."""
    if factor.dim() < values.dim():
        factor = factor.view(-1, *([1] * (values.dim() - 1)))
    return values * factor + (values * (1.0 - factor)).detach()


def composite(field: Field, origins: Tensor, directions: Tensor, samples: RaySamples, *,
              depth_only: bool = False, background: Optional[Tensor] = None, median: bool = True,
              sample_gradient_scale: Optional[Tensor] = None) -> tuple[dict[str, Tensor], RaySamples]:
    """Per-ray outputs from packed samples whose ``sigmas`` are set (differentiable), and the samples with
    their ``weights``.

    Outputs: ``opacity``, ``distance`` (weighted mean distance given a hit; ``inf`` where the ray meets no
    density), ``rgb`` unless ``depth_only`` and, with ``median``, ``median_distance`` (no gradient).
    Per-ray sums are segment sums (:func:`segment_sum`): the same bits on every run, on CUDA too.
    ``background``: (N, 3) colours behind each ray; default the field's learned background colour.
    ``sample_gradient_scale``: (M,) factors on the gradient reaching each sample's colour (training)."""
    n_rays = origins.shape[0]
    ray_indices = samples.ray_indices
    weights, _ = weights_from_density(samples, samples.sigmas)
    mids = samples.mids
    opacity = segment_sum(weights, samples)
    weighted = segment_sum(weights * mids, samples)
    distance = torch.where(opacity > 0, weighted / opacity.clamp_min(1e-12), torch.full_like(opacity, float("inf")))
    out = {"opacity": opacity, "distance": distance}
    if not depth_only:
        if ray_indices.numel():
            rgb = field.rgb(samples.points(origins, directions), directions[ray_indices])
            if sample_gradient_scale is not None:
                rgb = scale_gradient(rgb, sample_gradient_scale)
            colour = segment_sum(weights[:, None] * rgb, samples)
        else:
            colour = torch.zeros(n_rays, 3, device=origins.device)
        if background is None:
            background = field.background_rgb.clamp(0.0, 1.0)
        out["rgb"] = colour + (1.0 - opacity[:, None]) * background
    weighted_samples = samples.with_values(weights=weights)
    if not median:
        return out, weighted_samples
    with torch.no_grad():
        out["median_distance"] = median_distance(weighted_samples.with_values(weights=weights.detach()),
                                                 opacity.detach())
    return out, weighted_samples
