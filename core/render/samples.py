"""Packed ray samples: what marching produces and compositing, losses and later features consume.

Samples are packed (nerfacc's layout): one flat list sorted by ray, then by distance along the ray; sample
``i`` covers ``[t_starts[i], t_ends[i]]`` on ray ``ray_indices[i]``. Rays without samples simply have none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class RaySamples:
    """Packed samples of ``n_rays`` rays; ``sigmas`` (density at the midpoints) and ``weights`` (volume
    rendering weights) are filled in by the stage that knows them."""

    ray_indices: Tensor  # (M,) int64, sorted
    t_starts: Tensor  # (M,)
    t_ends: Tensor  # (M,)
    n_rays: int
    sigmas: Optional[Tensor] = None  # (M,)
    weights: Optional[Tensor] = None  # (M,)

    @classmethod
    def empty(cls, n_rays: int, device: torch.device | str) -> "RaySamples":
        none = torch.zeros(0, device=device)
        return cls(torch.zeros(0, dtype=torch.long, device=device), none, none.clone(), n_rays)

    def __len__(self) -> int:
        return int(self.ray_indices.shape[0])

    @property
    def mids(self) -> Tensor:
        return (self.t_starts + self.t_ends) / 2.0

    @property
    def deltas(self) -> Tensor:
        return self.t_ends - self.t_starts

    def points(self, origins: Tensor, directions: Tensor) -> Tensor:
        """(M, 3) world positions of the midpoints on the rays ``origins + t * directions``."""
        return origins[self.ray_indices] + self.mids[:, None] * directions[self.ray_indices]

    def pack_start(self) -> Tensor:
        """(n_rays,) index of each ray's first sample (its sample count past the end for an empty ray)."""
        counts = torch.bincount(self.ray_indices, minlength=self.n_rays)
        return torch.cumsum(counts, 0) - counts

    def with_values(self, **values: Optional[Tensor]) -> "RaySamples":
        """The same samples with ``sigmas`` and/or ``weights`` replaced."""
        return replace(self, **values)


def in_contracted_distance(samples: RaySamples, origins: Tensor, directions: Tensor,
                           normalize: Callable[[Tensor], Tensor], near: float) -> RaySamples:
    """The same samples with ``t_starts`` / ``t_ends`` measured along each ray in the field's normalised,
    contracted coordinates (``normalize``: world points -> [-1, 1]^3) from the ray's point at ``near``.

    mip-NeRF 360 measures its distortion loss in such a normalised distance: the background, where the
    contraction squeezes ever longer world stretches into one voxel, then weighs no more than the subject,
    so the loss can be strong without emptying open scenes. Positions are chords between consecutive
    samples (a gap of skipped empty space counts as its chord); no gradient flows through them."""
    if len(samples) == 0:
        return samples
    with torch.no_grad():
        ray = samples.ray_indices
        o, d = origins[ray], directions[ray]
        c_start = normalize(o + samples.t_starts[:, None] * d)
        c_end = normalize(o + samples.t_ends[:, None] * d)
        c_mid = normalize(o + samples.mids[:, None] * d)
        previous = torch.roll(c_mid, 1, dims=0)
        first = torch.ones_like(ray, dtype=torch.bool)
        first[1:] = ray[1:] != ray[:-1]
        previous[first] = normalize(origins[ray[first]] + near * directions[ray[first]])
        chords = torch.linalg.vector_norm(c_mid - previous, dim=-1)
        # the running sum restarts on each ray: subtract the sum reached before the ray's first sample
        total = torch.cumsum(chords, 0)
        starts_at = torch.nonzero(first).squeeze(-1)
        counts = torch.diff(torch.cat([starts_at, torch.tensor([len(ray)], device=ray.device)]))
        s_mid = total - torch.repeat_interleave(total[starts_at] - chords[starts_at], counts)
        half = torch.linalg.vector_norm(c_end - c_start, dim=-1) / 2
    return replace(samples, t_starts=s_mid - half, t_ends=s_mid + half)
