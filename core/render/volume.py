"""Volume rendering of a :class:`~.field.Field`: ray marching through the occupancy grid, packed samples.

Sampling is nerfacc's ``OccGridEstimator.sampling`` with a constant step: candidate samples sit at the
midpoints ``near + (k + 1/2) * step`` (the same lattice for every ray), a sample is kept when its cell is
occupied, its opacity reaches ``alpha_thre`` and the transmittance before it is still above
``early_stop_eps``. On CUDA nerfacc does the marching; on CPU :func:`march_cpu` yields the same samples in
pure torch: it jumps over empty space with the occupancy grid's chessboard distance, looks at a short
window of lattice points once near occupied cells, and stops each ray as soon as it is opaque (early ray
termination), evaluating the density only where a sample survives.

Outputs per ray: ``rgb``, ``opacity``, ``distance`` (expected distance of the surface, i.e. the weighted
mean of sample distances normalised by opacity; ``inf`` where a ray meets no density), ``median_distance``
(where the accumulated weight reaches half the opacity, interpolated inside the sample), and optionally the
packed samples ``ray_indices``, ``t_starts``, ``t_ends``, ``weights`` (sorted by ray, then distance).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..geometry.cameras import Intrinsics, camera_rays
from ..field.model import Field

SigmaFn = Callable[[Tensor], Tensor]


# --- rays and boxes --------------------------------------------------------------------------------------


def ray_box(origins: Tensor, directions: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through an axis-aligned box (6,); exit < entry = miss."""
    d = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    inv = 1.0 / d
    t0 = (box[:3] - origins) * inv
    t1 = (box[3:] - origins) * inv
    return torch.minimum(t0, t1).amax(dim=-1), torch.maximum(t0, t1).amin(dim=-1)


# --- sampling --------------------------------------------------------------------------------------------


@torch.no_grad()
def march_cpu(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e10,
              stratified: bool = False, window: int = 8, max_window: int = 64
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Samples of nerfacc's occupancy-grid marcher, in pure torch (runs on any device).

    Returns ``ray_indices`` (M,), ``t_starts`` (M,), ``t_ends`` (M,) sorted by ray then distance, and the
    densities ``sigmas`` (M,) evaluated there.
    """
    grid = field.occupancy
    step = field.render_step_size
    eps = field.config.early_stop_eps
    alpha_thre = min(field.config.alpha_thre, float(torch.nan_to_num(grid.occs, posinf=0.0).mean()))
    n = origins.shape[0]
    device = origins.device
    t_enter, t_exit = ray_box(origins, directions, grid.aabbs[-1])
    t_enter = t_enter.clamp_min(near)
    t_exit = t_exit.clamp_max(far)
    start = torch.full((n,), float(near), device=device)
    if stratified:
        start = start + torch.rand(n, device=device) * step
    # lattice index of the first midpoint at or after the entry, and one past the last before the exit
    k = torch.ceil((t_enter - start) / step - 0.5).clamp_min(0).long()
    k_end = torch.ceil((t_exit - start) / step - 0.5).long()
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
        mid = start[alive] + (k[alive].float() + 0.5) * step
        points = origins[alive] + mid[:, None] * directions[alive]
        _, safe = grid.lookup(points)
        jump = torch.floor(safe / step).long() + 1
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
        mids = start[alive][:, None] + (kk.float() + 0.5) * step
        points = (origins[alive][:, None, :] + mids[..., None] * directions[alive][:, None, :]).reshape(-1, 3)
        occupied = grid.occupied_fast(points).view(-1, window) & valid
        sigma = torch.zeros(occupied.shape, device=device)
        if bool(occupied.any()):
            sigma[occupied] = field.density(points[occupied.reshape(-1)])
        alpha = 1.0 - torch.exp(-sigma * step)
        trans_before = transmittance[alive][:, None] * torch.cumprod(
            torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
        keep = occupied & (trans_before >= eps) & (alpha >= alpha_thre)
        if bool(keep.any()):
            rows, cols = keep.nonzero(as_tuple=True)
            kept_rays.append(alive[rows])
            kept_k.append(kk[rows, cols])
            kept_sigma.append(sigma[rows, cols])
        transmittance[alive] = trans_before[:, -1] * (1.0 - alpha[:, -1])
        k[alive] += window
        alive = torch.cat([jumpers, alive])
        alive = alive[(k[alive] < k_end[alive]) & (transmittance[alive] >= eps)]
    if not kept_rays:
        empty = torch.zeros(0, device=device)
        return torch.zeros(0, dtype=torch.long, device=device), empty, empty.clone(), empty.clone()
    ray_indices = torch.cat(kept_rays)
    lattice = torch.cat(kept_k)
    sigmas = torch.cat(kept_sigma)
    order = torch.argsort(ray_indices * (int(lattice.max()) + 1) + lattice)
    ray_indices, lattice, sigmas = ray_indices[order], lattice[order], sigmas[order]
    t_starts = start[ray_indices] + lattice.float() * step
    return ray_indices, t_starts, t_starts + step, sigmas


@torch.no_grad()
def march_nerfacc(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0,
                  far: float = 1e10, stratified: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The same samples from nerfacc's CUDA ``OccGridEstimator.sampling`` (needs a CUDA device)."""
    estimator = field.occupancy.to_nerfacc()

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        mids = (t_starts + t_ends)[:, None] / 2.0
        return field.density(origins[ray_indices] + mids * directions[ray_indices])

    return estimator.sampling(origins, directions, sigma_fn=sigma_fn, near_plane=near, far_plane=far,
                              render_step_size=field.render_step_size,
                              early_stop_eps=field.config.early_stop_eps,
                              alpha_thre=field.config.alpha_thre, stratified=stratified, cone_angle=0.0)


def sample_rays(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e10,
                stratified: bool = False, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """Packed samples (ray_indices, t_starts, t_ends): nerfacc on CUDA, :func:`march_cpu` elsewhere."""
    use_nerfacc = backend == "nerfacc" or (backend == "auto" and origins.device.type == "cuda")
    if use_nerfacc:
        return march_nerfacc(field, origins, directions, near=near, far=far, stratified=stratified)
    ray_indices, t_starts, t_ends, _ = march_cpu(field, origins, directions, near=near, far=far,
                                                 stratified=stratified)
    return ray_indices, t_starts, t_ends


# --- compositing -----------------------------------------------------------------------------------------


def weights_from_density(ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, sigmas: Tensor,
                         n_rays: int) -> tuple[Tensor, Tensor]:
    """Packed volume-rendering weights and transmittance before each sample (samples sorted by ray).

    Differentiable; the per-ray exclusive sum is a global cumulative sum (in float64, so long packs keep
    their precision) minus its value where each ray's pack begins.
    """
    tau = sigmas * (t_ends - t_starts)
    if tau.numel() == 0:
        return tau, tau
    counts = torch.bincount(ray_indices, minlength=n_rays)
    pack_start = torch.cumsum(counts, 0) - counts
    inclusive = torch.cumsum(tau.double(), 0)
    exclusive = inclusive - tau.double()
    exclusive = (exclusive - exclusive[pack_start[ray_indices]]).float()
    trans = torch.exp(-exclusive)
    return trans * (1.0 - torch.exp(-tau)), trans


def _median_distance(ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, weights: Tensor,
                     opacity: Tensor) -> Tensor:
    n_rays = opacity.shape[0]
    median = torch.full((n_rays,), float("inf"), device=opacity.device)
    if weights.numel() == 0:
        return median
    counts = torch.bincount(ray_indices, minlength=n_rays)
    pack_start = torch.cumsum(counts, 0) - counts
    inclusive = torch.cumsum(weights.double(), 0)
    before_pack = inclusive[pack_start[ray_indices]] - weights[pack_start[ray_indices]].double()
    cum = (inclusive - before_pack).float()  # accumulated weight up to and including each sample
    target = 0.5 * opacity[ray_indices]
    crossing = cum >= target
    index = torch.arange(len(weights), device=weights.device)
    first = torch.full((n_rays,), len(weights), device=weights.device, dtype=torch.long)
    first.scatter_reduce_(0, ray_indices[crossing], index[crossing], reduce="amin")
    has = (first < len(weights)) & (opacity > 0)
    i = first[has]
    fraction = ((target[i] - (cum[i] - weights[i])) / weights[i].clamp_min(1e-12)).clamp(0.0, 1.0)
    median[has] = t_starts[i] + fraction * (t_ends[i] - t_starts[i])
    return median


def composite(field: Field, origins: Tensor, directions: Tensor, ray_indices: Tensor, t_starts: Tensor,
              t_ends: Tensor, sigmas: Tensor, *, depth_only: bool = False, return_samples: bool = False,
              background: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Per-ray outputs from packed samples and their densities (differentiable).

    ``background``: (N, 3) colours behind each ray; default the field's learned background colour."""
    n_rays = origins.shape[0]
    weights, _ = weights_from_density(ray_indices, t_starts, t_ends, sigmas, n_rays)
    mids = (t_starts + t_ends) / 2.0
    zeros = torch.zeros(n_rays, device=origins.device)
    opacity = zeros.index_add(0, ray_indices, weights)
    weighted = zeros.index_add(0, ray_indices, weights * mids)
    distance = torch.where(opacity > 0, weighted / opacity.clamp_min(1e-12), torch.full_like(opacity, float("inf")))
    out = {"opacity": opacity, "distance": distance}
    if not depth_only:
        if ray_indices.numel():
            rgb = field.rgb(origins[ray_indices] + mids[:, None] * directions[ray_indices],
                            directions[ray_indices])
            colour = torch.zeros(n_rays, 3, device=origins.device).index_add(0, ray_indices,
                                                                              weights[:, None] * rgb)
        else:
            colour = torch.zeros(n_rays, 3, device=origins.device)
        if background is None:
            background = field.background_rgb.clamp(0.0, 1.0)
        out["rgb"] = colour + (1.0 - opacity[:, None]) * background
    with torch.no_grad():
        out["median_distance"] = _median_distance(ray_indices, t_starts, t_ends, weights.detach(),
                                                  opacity.detach())
    if return_samples:
        out.update(ray_indices=ray_indices, t_starts=t_starts, t_ends=t_ends, weights=weights)
    return out


# --- public API ------------------------------------------------------------------------------------------


def _field_device(field: Field) -> torch.device:
    return field.aabb.device


@torch.no_grad()
def render_rays(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0,
                depth_only: bool = False, return_samples: bool = False, chunk: int = 65536,
                far: float = 1e10, backend: str = "auto") -> dict[str, Tensor]:
    """Render rays (unit ``directions``) through a field, in chunks; outputs on the rays' device.

    Sampling starts at ``near`` or at the field's own training near plane (``field.config.near``), whichever
    is further. Returns ``rgb`` (N, 3) unless ``depth_only``, ``opacity`` (N,), ``distance`` (N,) (expected distance
    given a hit; ``inf`` where the ray meets no density), ``median_distance`` (N,), and with
    ``return_samples`` the packed ``ray_indices``, ``t_starts``, ``t_ends``, ``weights`` (M,).
    """
    out_device = origins.device
    device = _field_device(field)
    near = max(float(near), field.config.near)  # the field knows nothing closer than its training near
    origins = origins.to(device=device, dtype=torch.float32)
    directions = directions.to(device=device, dtype=torch.float32)
    use_nerfacc = backend == "nerfacc" or (backend == "auto" and device.type == "cuda")
    parts: list[dict[str, Tensor]] = []
    for begin in range(0, origins.shape[0], chunk):
        o, d = origins[begin:begin + chunk], directions[begin:begin + chunk]
        if use_nerfacc:
            ray_indices, t_starts, t_ends = march_nerfacc(field, o, d, near=near, far=far)
            mids = (t_starts + t_ends)[:, None] / 2.0
            sigmas = field.density(o[ray_indices] + mids * d[ray_indices])
        else:
            ray_indices, t_starts, t_ends, sigmas = march_cpu(field, o, d, near=near, far=far)
        part = composite(field, o, d, ray_indices, t_starts, t_ends, sigmas, depth_only=depth_only,
                         return_samples=return_samples)
        if return_samples:
            part["ray_indices"] = part["ray_indices"] + begin
        parts.append(part)
    if not parts:
        empty = torch.zeros(0, device=out_device)
        out = {"opacity": empty, "distance": empty, "median_distance": empty}
        if not depth_only:
            out["rgb"] = torch.zeros(0, 3, device=out_device)
        if return_samples:
            out.update(ray_indices=torch.zeros(0, dtype=torch.long, device=out_device), t_starts=empty,
                       t_ends=empty, weights=empty)
        return out
    return {key: torch.cat([p[key] for p in parts]).to(out_device) for key in parts[0]}


def render_frame(field: Field, intrinsics: Intrinsics, cam_to_world: np.ndarray, *,
                 pixels: Optional[np.ndarray] = None, depth_only: bool = False, near: float = 0.0,
                 chunk: int = 65536, min_opacity: float = 0.5) -> dict[str, np.ndarray]:
    """Render one camera (through its lens distortion) at every pixel centre, or at ``pixels`` (N, 2).

    Returns numpy arrays shaped (H, W, ...) or (N, ...): ``rgb`` (unless ``depth_only``), ``opacity``,
    ``z_depth`` (expected z-depth along the optical axis), ``distance`` and ``median_z_depth``; depths and
    distances are NaN where opacity < ``min_opacity`` (nothing solid hit).
    """
    origins, directions, z_per_distance = camera_rays(intrinsics, cam_to_world, pixels)
    device = _field_device(field)
    out = render_rays(field, torch.from_numpy(origins).float().to(device),
                      torch.from_numpy(directions).float().to(device), near=near, depth_only=depth_only,
                      chunk=chunk)
    opacity = out["opacity"].cpu().numpy()
    hit = opacity >= min_opacity
    distance = np.where(hit, out["distance"].cpu().numpy(), np.nan).astype(np.float32)
    median = np.where(hit, out["median_distance"].cpu().numpy(), np.nan)
    result = {
        "opacity": opacity.astype(np.float32),
        "distance": distance,
        "z_depth": (distance * z_per_distance).astype(np.float32),
        "median_z_depth": (median * z_per_distance).astype(np.float32),
    }
    if not depth_only:
        result["rgb"] = out["rgb"].cpu().numpy().astype(np.float32)
    if pixels is None:
        shape = (intrinsics.height, intrinsics.width)
        result = {key: value.reshape(shape + value.shape[1:]) for key, value in result.items()}
    return result


# --- rendering a dataset's views ----------------------------------------------------------------------------


def _write_atomic(path, write) -> None:
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_views(field: Field, frames, out_dir, *, progress=None, with_metrics: bool = True) -> dict:
    """Render ``frames`` into ``out_dir/rgb/<stem>.png`` and float32 z-depth ``out_dir/depth/<stem>.npy``
    (NaN where nothing is hit); PSNR/SSIM per view and on average where the frame's image exists."""
    from pathlib import Path

    from PIL import Image

    from ..io.images import load_image
    from ..eval.image import psnr, ssim
    from ..progress import report

    out_dir = Path(out_dir)
    views = []
    for n, frame in enumerate(frames):
        out = render_frame(field, frame.intrinsics, frame.cam_to_data)
        rgb8 = np.round(np.clip(out["rgb"], 0.0, 1.0) * 255).astype(np.uint8)
        _write_atomic(out_dir / "rgb" / f"{frame.name}.png", lambda p: Image.fromarray(rgb8).save(p, format="PNG"))
        depth = out["z_depth"].astype(np.float32)
        _write_atomic(out_dir / "depth" / f"{frame.name}.npy", lambda p: np.save(p, depth))
        view = {"frame": frame.index, "name": frame.name}
        if with_metrics and Path(frame.image_path).is_file():
            truth = load_image(frame)[..., :3]
            view["psnr"] = psnr(out["rgb"], truth)
            view["ssim"] = ssim(np.clip(out["rgb"], 0, 1), truth)
        views.append(view)
        report(progress, n + 1, len(frames), "render")
    scored = [v for v in views if "psnr" in v]
    summary = {"views": views, "count": len(views)}
    if scored:
        summary["psnr"] = float(np.mean([v["psnr"] for v in scored]))
        summary["ssim"] = float(np.mean([v["ssim"] for v in scored]))
    return summary
