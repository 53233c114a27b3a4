"""Packed ray samples: what marching produces and compositing, losses and later features consume.

Samples are packed (nerfacc's layout): one flat list sorted by ray, then by distance along the ray; sample
``i`` covers ``[t_starts[i], t_ends[i]]`` on ray ``ray_indices[i]``. Rays without samples simply have none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

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
