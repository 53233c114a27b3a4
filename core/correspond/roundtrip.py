"""One view pair's correspondences: draw a depth for each query pixel of A, place the point, find its pixel
in B, and decide whether to keep it.

- ``sample`` (NeRF-Supervision Sec. III-E): the probabilistic round trip. A depth is drawn along B's ray
  through that pixel too, its point projected back into A; the pair is kept when it lands within
  ``round_trip_px`` of where it started. A draw on the wrong layer of a two-layer ray comes back elsewhere
  and is dropped.
- ``mean``, ``median``, ``mode`` (single-depth arms, as from depth maps): Dense Object Nets' deterministic
  visibility check. The pair is kept when B's own depth at that pixel agrees with the point's depth in B.

Every query gets one reason (:data:`REASONS`). Queries run in chunks of :data:`CHUNK` rays, each with its
own generator seeded from (``seed``, chunk number): the same seed gives the same pairs whatever else runs,
and memory stays bounded however many queries a pair has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..errors import NeuralLabelError
from ..geometry.view import View
from .distribution import MODES, DepthDistribution, DepthSource, sample_depths
from .reproject import pixel_rays, project_to_view, to_opencv

#: why each query was kept or not (the ``reason`` array of a pair)
REASONS = {"accepted": 0, "no_surface": 1, "out_of_view": 2, "round_trip": 3, "occluded": 4, "outside_box": 5}
CHUNK = 32768
#: the share of a ray's weight near the drawn depth under which the ray counts as layered (glass in front
#: of something, a thin wire over the floor): ``transparent`` in the output
LAYERED_SHARE = 0.8
LAYER_WINDOW = 0.02  # "near": within this fraction of the depth


@dataclass(frozen=True)
class PairOptions:
    mode: str = "sample"
    # 2 px, measured: consistent pairs come back within 0.23 px (two-slab test) and 1.27 px (max; a floor in
    # a 96^3 trilinear grid), wrong-layer draws 5 cm apart at 45 degrees >= 11.7 px. On trained CPU fields
    # (bench_correspond.py) no threshold reaches <= 2 % false accepts: their wrong depths are multi-view
    # consistent, so the share grows from 31 % (0.5 px) to 40 % (6 px); the sweep's rule then picks 0.5 px
    round_trip_px: float = 2.0
    min_opacity: float = 0.5  # rays less opaque have no surface
    depth_abs: float = 0.005  # single-depth arms: B's depth agrees within max(depth_abs, depth_rel * z)
    depth_rel: float = 0.01
    box: Optional[tuple[float, ...]] = None  # (xmin, ymin, zmin, xmax, ymax, zmax): points outside are dropped

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise NeuralLabelError(f"mode {self.mode!r}: choose from {', '.join(MODES)}", field="mode")
        if not self.round_trip_px > 0:
            raise NeuralLabelError(f"round_trip_px must be more than 0 (got {self.round_trip_px})",
                                   field="round_trip_px")


@dataclass
class PairCorrespondences:
    """Per query (N): pixels in OpenCV convention (float32), A's z-depth, the point (field frame), the mass of
    the interval its depth was drawn from, the round-trip distance (px; inf when it does not come back), kept or
    not, why, and whether A's ray is layered."""

    uv_a: np.ndarray
    uv_b: np.ndarray
    depth_a: np.ndarray
    xyz: np.ndarray
    probability: np.ndarray
    round_trip_px: np.ndarray
    accepted: np.ndarray
    reason: np.ndarray
    transparent: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)

    def counts(self) -> dict[str, int]:
        return {name: int((self.reason == code).sum()) for name, code in REASONS.items()}


def chunk_generator(seed: int, chunk: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(chunk)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _draw(source: DepthSource, origins: np.ndarray, directions: np.ndarray, mode: str,
          generator: torch.Generator, min_opacity: float) -> tuple[np.ndarray, np.ndarray, DepthDistribution]:
    dist = source(torch.from_numpy(origins).float(), torch.from_numpy(directions).float())
    t, mass = sample_depths(dist, mode, 1, generator, min_opacity=min_opacity)
    return t[:, 0].double().cpu().numpy(), mass[:, 0].double().cpu().numpy(), dist


def near_share(dist: DepthDistribution, t: np.ndarray, window: float = LAYER_WINDOW) -> np.ndarray:
    """(n_rays,) share of each ray's weight within ``window`` (relative) of its distance ``t``."""
    if len(dist) == 0:
        return np.zeros(dist.n_rays)
    tt = torch.from_numpy(np.nan_to_num(t, nan=-1.0)).to(dist.t_starts.device).float()[dist.ray_indices]
    mids = (dist.t_starts + dist.t_ends) / 2
    near = (mids - tt).abs() <= window * tt.abs()
    share = torch.zeros(dist.n_rays, device=mids.device).index_add_(0, dist.ray_indices, dist.pdf * near)
    return share.cpu().numpy().astype(np.float64)


def _pair_chunk(source: DepthSource, view_a: View, view_b: View, pixels_a: np.ndarray, options: PairOptions,
                generator: torch.Generator) -> PairCorrespondences:
    n = len(pixels_a)
    reason = np.full(n, REASONS["accepted"], dtype=np.uint8)
    o_a, d_a, zpd_a = pixel_rays(view_a, pixels_a)
    t_a, mass, dist_a = _draw(source, o_a, d_a, options.mode, generator, options.min_opacity)
    transparent = near_share(dist_a, t_a) < LAYERED_SHARE
    surface = np.isfinite(t_a)
    reason[~surface] = REASONS["no_surface"]
    xyz = o_a + np.nan_to_num(t_a)[:, None] * d_a
    if options.box is not None:
        box = np.asarray(options.box, dtype=np.float64)
        inside = np.all((xyz >= box[:3]) & (xyz <= box[3:]), axis=1)
        reason[surface & ~inside] = REASONS["outside_box"]
    uv_b, z_b, in_view = project_to_view(view_b, xyz)
    reason[(reason == 0) & ~in_view] = REASONS["out_of_view"]
    live = np.flatnonzero(reason == 0)
    round_trip = np.full(n, np.inf)
    if live.size:
        o_b, d_b, zpd_b = pixel_rays(view_b, uv_b[live])
        t_b, _, _ = _draw(source, o_b, d_b, options.mode, generator, options.min_opacity)
        back, _, back_ok = project_to_view(view_a, o_b + np.nan_to_num(t_b)[:, None] * d_b)
        ok = back_ok & np.isfinite(t_b)
        round_trip[live[ok]] = np.linalg.norm(back[ok] - pixels_a[live[ok]], axis=1)
        if options.mode == "sample":
            reason[live[~(round_trip[live] < options.round_trip_px)]] = REASONS["round_trip"]
        else:
            z_seen = t_b * zpd_b
            z_point = z_b[live]
            agree = np.abs(z_seen - z_point) <= np.maximum(options.depth_abs, options.depth_rel * z_point)
            reason[live[~(np.isfinite(t_b) & agree)]] = REASONS["occluded"]
    return PairCorrespondences(
        uv_a=to_opencv(pixels_a).astype(np.float32),
        uv_b=np.where(in_view[:, None], to_opencv(uv_b), np.nan).astype(np.float32),
        depth_a=(t_a * zpd_a).astype(np.float32), xyz=np.where(surface[:, None], xyz, np.nan).astype(np.float32),
        probability=mass.astype(np.float32), round_trip_px=round_trip.astype(np.float32),
        accepted=reason == REASONS["accepted"], reason=reason, transparent=transparent & surface)


def correspond_pair(source: DepthSource, view_a: View, view_b: View, pixels_a: np.ndarray,
                    options: PairOptions = PairOptions(), *, seed: int = 0, chunk: int = CHUNK
                    ) -> PairCorrespondences:
    """Correspondences of the continuous ``pixels_a`` (N, 2; transforms.json convention) of ``view_a`` in
    ``view_b``, by ``options.mode``; see the module text."""
    pixels_a = np.asarray(pixels_a, dtype=np.float64).reshape(-1, 2)
    parts = [_pair_chunk(source, view_a, view_b, pixels_a[begin:begin + chunk], options,
                         chunk_generator(seed, begin // chunk))
             for begin in range(0, len(pixels_a), chunk)]
    if not parts:
        parts = [_pair_chunk(source, view_a, view_b, pixels_a, options, chunk_generator(seed, 0))]
    return PairCorrespondences(**{key: np.concatenate([getattr(p, key) for p in parts])
                                  for key in parts[0].__dict__})
