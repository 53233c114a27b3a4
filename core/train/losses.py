"""Training losses as a list of weighted terms: the loop sums whatever the list holds, so a new loss (a
semantic one, say) is a new :class:`LossTerm`, not an edit of the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor

from ..render.samples import RaySamples
from ..render.volrend import packed_cumsum
from .batch import TrainBatch, TrainRender
from .schedules import WeightSchedule, constant, exponential

if TYPE_CHECKING:
    from .loop import TrainOptions

LossFn = Callable[[TrainBatch, TrainRender], Tensor]

#: weight of the DS-NeRF depth loss
DEPTH_WEIGHT = 0.1
#: distortion loss weight at the start of training and the share of it left at the end
DISTORTION = (0.1, 0.1)
#: sparsity loss weight at the start of training and the share of it left at the end
SPARSITY = (0.01, 1.0)


@dataclass(frozen=True)
class LossTerm:
    """``weight_at(done fraction) * fn(batch, render)``, reported under ``name``."""

    name: str
    weight_at: WeightSchedule
    fn: LossFn

    def __call__(self, fraction: float, batch: TrainBatch, render: TrainRender) -> Tensor:
        return self.weight_at(fraction) * self.fn(batch, render)


def total_loss(terms: list[LossTerm], fraction: float, batch: TrainBatch, render: TrainRender
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """The sum of the terms (in list order) and each term's weighted value (detached)."""
    loss = None
    parts: dict[str, Tensor] = {}
    for term in terms:
        value = term(fraction, batch, render)
        parts[term.name] = value.detach()
        loss = value if loss is None else loss + value
    if loss is None:
        raise ValueError("no loss term to train on")
    return loss, parts


# --- the terms -------------------------------------------------------------------------------------------


def photometric_loss(batch: TrainBatch, render: TrainRender) -> Tensor:
    """The mean squared colour error, plus the expected error from the colour behind each ray that the render
    left out (:func:`.batch.background_variance`)."""
    loss = torch.nn.functional.mse_loss(render.rays["rgb"], batch.target_rgb)
    if render.background_variance > 0:
        loss = loss + render.background_variance * ((1.0 - render.rays["opacity"]) ** 2).mean()
    return loss


def opacity_loss(batch: TrainBatch, render: TrainRender) -> Tensor:
    """Off by default: the colour behind each training ray asks for opaque photos without it
    (:func:`.batch.background_variance`).
    Every pixel of a photo sees a surface (the box boundary stands in for the sky), so a learned
    background colour must not replace geometry: that would leave holes in the depth."""
    return (1.0 - render.rays["opacity"]).mean()


def depth_loss(samples: RaySamples, distance: Tensor, sigma: Tensor) -> Tensor:
    """DS-NeRF (the KL form): -log of the ray's termination weight near the SfM point, Gaussian-weighted."""
    ray = samples.ray_indices
    mids = samples.mids
    delta = samples.deltas
    gauss = torch.exp(-((mids - distance[ray]) ** 2) / (2 * sigma[ray] ** 2))
    per_sample = -torch.log(samples.weights + 1e-5) * gauss * delta / (sigma[ray] * math.sqrt(2 * math.pi))
    return torch.zeros(len(distance), device=distance.device).index_add(0, ray, per_sample).mean()


def depth_mse_loss(samples: RaySamples, distance: Tensor, sigma: Tensor) -> Tensor:
    """NeRF-Supervision's form: the squared error of each ray's expected distance (its weights normalised, so
    a ray that is not yet opaque is not pulled short) against the SfM point's, relative to that distance (so
    it means the same at any scale), averaged over rays. Rays without a sample count as empty, not as
    errors. ``sigma`` is not used: in units of the points' spread (0.5 % of the distance) the term outweighed
    the photos early in training."""
    ray = samples.ray_indices
    n = len(distance)
    weight_sum = torch.zeros(n, device=distance.device).index_add(0, ray, samples.weights)
    weighted = torch.zeros(n, device=distance.device).index_add(0, ray, samples.weights * samples.mids)
    hit = weight_sum > 1e-4
    expected = weighted[hit] / weight_sum[hit]
    if not bool(hit.any()):
        return torch.zeros((), device=distance.device)
    return (((expected - distance[hit]) / distance[hit]) ** 2).sum() / n


#: the DS-NeRF depth loss forms (``TrainOptions.depth_loss``)
DEPTH_LOSSES = ("kl", "mse")


def distortion_loss(samples: RaySamples) -> Tensor:
    """mip-NeRF 360's distortion loss on packed samples: pulls each ray's weight into one compact
    surface, which removes floaters. sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 delta_i, in O(samples)."""
    ray = samples.ray_indices
    if ray.numel() == 0:
        return torch.zeros((), device=ray.device)
    w = samples.weights
    mids = samples.mids
    pack_start = samples.pack_start()
    inter = 2 * w * (mids * packed_cumsum(w, ray, pack_start) - packed_cumsum(w * mids, ray, pack_start))
    intra = w * w * samples.deltas / 3
    return (inter + intra).sum() / samples.n_rays


def sparsity_loss(samples: RaySamples, knee: Optional[float] = None) -> Tensor:
    """The sum of each ray's sample opacities ``a = 1 - exp(-sigma delta)``, averaged over rays: density that no
    photo needs costs something, so floaters above the subject and the haze in front of it dissolve. It
    does not depend on where along the ray the density sits, so unlike a stronger distortion loss it does
    not drag surfaces (the floor of an open scene) away from their place.

    ``knee``: each opacity is taken as ``knee * log(1 + a / knee)`` instead, so a faint sample pays about its
    opacity and an opaque one little more for being opaque (``TrainOptions.sparsity_knee``). Linear, every
    surface finds it cheaper to let some light through to whatever lies behind it (its colour blended in)
    than to pay for its last tenths of opacity; with the knee, an opaque floater costs as little."""
    if samples.n_rays == 0:
        return torch.zeros((), device=samples.sigmas.device)
    alpha = 1.0 - torch.exp(-samples.sigmas * samples.deltas)
    if knee is not None:
        alpha = knee * torch.log1p(alpha / knee)
    return alpha.sum() / samples.n_rays


def distortion_for(options: "TrainOptions") -> tuple[float, float]:
    """Distortion weight at the start and the share of it left at the end (options win where given).

    It pulls each ray's weight into one compact surface, decayed to a tenth so the surfaces close up.
    Measured in normalised contracted distance (:func:`..render.samples.in_contracted_distance`), it acts
    alike on the subject of an open capture and in a closed room. It is kept weak: stronger, it drags
    surfaces towards the camera's side of the ray's weight (the floor of an open scene sank below its true
    height); the sparsity term clears the fog instead."""
    return _given_or(DISTORTION, options.distortion_weight, options.distortion_final)


def sparsity_for(options: "TrainOptions") -> tuple[float, float]:
    """Sparsity weight at the start and the share of it left at the end (options win where given)."""
    return _given_or(SPARSITY, options.sparsity_weight, options.sparsity_final)


def _given_or(default: tuple[float, float], start: Optional[float], final: Optional[float]) -> tuple[float, float]:
    return (default[0] if start is None else start, default[1] if final is None else final)


def default_terms(options: "TrainOptions", *, depth: bool) -> list[LossTerm]:
    """The photometric loss plus the regularisers the options switch on (in this order)."""
    terms = [LossTerm("rgb", constant(1.0), photometric_loss)]
    if options.opacity_weight > 0:
        terms.append(LossTerm("opacity", constant(options.opacity_weight), opacity_loss))
    start, final = distortion_for(options)
    if start > 0:
        terms.append(LossTerm("distortion", exponential(start, final),
                              lambda batch, render: distortion_loss(render.contracted)))
    start, final = sparsity_for(options)
    if start > 0:
        terms.append(LossTerm("sparsity", exponential(start, final),
                              lambda batch, render: sparsity_loss(render.samples, options.sparsity_knee)))
    if depth:
        form = depth_mse_loss if options.depth_loss == "mse" else depth_loss
        terms.append(LossTerm("depth", constant(DEPTH_WEIGHT), lambda batch, render: form(
            render.depth_samples, batch.depth.distance, batch.depth.sigma)))
    return terms
