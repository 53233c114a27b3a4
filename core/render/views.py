"""Rendering rays, cameras and a dataset's views through a :class:`~..field.model.Field`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..field.model import Field
from ..geometry.cameras import Intrinsics, camera_rays
from ..io.atomic import npy_bytes, write_bytes
from ..io.outdir import OutputClaim, check_inputs_outside, claim_output_dir
from ..progress import ProgressFn, report
from .march import choose_backend, march
from .volrend import SURFACE_OUTPUTS, composite


#: what :func:`render_views` writes into its folder: never where a photo lies
RENDER_OUTPUTS = ("rgb", "depth", "strip", "depth_colour")


def field_device(field: Field) -> torch.device:
    return field.aabb.device


def _empty_outputs(device: torch.device, depth_only: bool, return_samples: bool) -> dict[str, Tensor]:
    empty = torch.zeros(0, device=device)
    out = {key: empty for key in SURFACE_OUTPUTS}
    if not depth_only:
        out["rgb"] = torch.zeros(0, 3, device=device)
    if return_samples:
        out.update(ray_indices=torch.zeros(0, dtype=torch.long, device=device), t_starts=empty,
                   t_ends=empty, weights=empty)
    return out


def ray_chunk(device: torch.device) -> int:
    """Rays rendered at once: on the CPU few enough that a chunk's packed samples stay in the caches and the
    allocator's reused memory (a bigger chunk spends its time faulting in fresh pages); on a GPU enough to
    fill it."""
    return 1 << 13 if device.type == "cpu" else 1 << 18


@torch.no_grad()
def render_rays(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0,
                depth_only: bool = False, return_samples: bool = False, chunk: Optional[int] = None,
                far: float = 1e10, backend: str = "auto", exact_rgb: bool = False) -> dict[str, Tensor]:
    """Render rays (unit ``directions``) through a field, in chunks of ``chunk`` rays (default
    :func:`ray_chunk`); outputs on the rays' device.

    Sampling starts at ``near`` or at the field's own training near plane (``field.config.near``), whichever
    is further. Returns ``rgb`` (N, 3) unless ``depth_only``, ``opacity`` (N,), ``distance`` (N,) (expected distance
    given a hit; ``inf`` where the ray meets no density), ``median_distance`` (N,), and with
    ``return_samples`` the packed ``ray_indices``, ``t_starts``, ``t_ends``, ``weights`` (M,).
    ``rgb`` skips the colour of faint samples (:func:`.volrend.coloured_samples`: each pixel within
    :data:`.volrend.COLOUR_MAX_SKIPPED` of the full sum); ``exact_rgb`` colours every sample, as training does.
    """
    out_device = origins.device
    device = field_device(field)
    near = max(float(near), field.config.near)  # the field knows nothing closer than its training near
    origins = origins.to(device=device, dtype=torch.float32)
    directions = directions.to(device=device, dtype=torch.float32)
    chunk = chunk or ray_chunk(device)
    parts: list[dict[str, Tensor]] = []
    numba_marched = choose_backend(device, backend)[0] == "numba"
    if numba_marched:
        from .march_numba import composite_numba
    for begin in range(0, origins.shape[0], chunk):
        o, d = origins[begin:begin + chunk], directions[begin:begin + chunk]
        samples = march(field, o, d, near=near, far=far, backend=backend)
        if depth_only and numba_marched:  # the same outputs, composited per ray in compiled loops
            part, weights = composite_numba(samples)
            samples = samples.with_values(weights=weights)
        else:
            part, samples = composite(field, o, d, samples, depth_only=depth_only, skip_faint=not exact_rgb)
        if return_samples:
            part.update(ray_indices=samples.ray_indices + begin, t_starts=samples.t_starts,
                        t_ends=samples.t_ends, weights=samples.weights)
        parts.append(part)
    if not parts:
        return _empty_outputs(out_device, depth_only, return_samples)
    return {key: torch.cat([p[key] for p in parts]).to(out_device) for key in parts[0]}


@torch.no_grad()
def render_surface(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0, far: float = 1e10,
                   chunk: Optional[int] = None, backend: str = "auto") -> dict[str, Tensor]:
    """``opacity``, ``distance``, ``median_distance`` and ``peak_distance`` (N,) of :func:`render_rays` with
    ``depth_only``, on the rays' device. On the CPU's numba marcher each ray is composited where it is marched
    (no packed samples: a depth map at every pixel costs about the march alone); elsewhere it is
    :func:`render_rays`."""
    device = field_device(field)
    if choose_backend(device, backend)[0] != "numba":
        out = render_rays(field, origins, directions, near=near, far=far, depth_only=True, chunk=chunk,
                          backend=backend)
        return {key: out[key] for key in SURFACE_OUTPUTS}
    from .march_numba import surface_numba

    near = max(float(near), field.config.near)  # as render_rays: nothing closer than the training near
    out = surface_numba(field, origins.to(device=device, dtype=torch.float32),
                        directions.to(device=device, dtype=torch.float32), near=near, far=far)
    return {key: value.to(origins.device) for key, value in out.items()}


@torch.no_grad()
def render_peak(field: Field, origins: Tensor, directions: Tensor, *, min_opacity: float, near: float = 0.0,
                far: float = 1e10, chunk: Optional[int] = None, backend: str = "auto") -> Tensor:
    """(N,) each ray's ``peak_distance`` (:func:`.volrend.peak_distance`, the surface the labels use) where its
    opacity reaches ``min_opacity`` (in (0, 1]), inf elsewhere: :func:`render_surface`'s numbers, for less
    work on the CPU, where a ray stops as soon as they are decided (``surface_numba``'s ``peak_stop``)."""
    if not 0.0 < min_opacity <= 1.0:
        raise ValueError(f"min_opacity must be in (0, 1], got {min_opacity}")
    device = field_device(field)
    if choose_backend(device, backend)[0] != "numba":
        out = render_surface(field, origins, directions, near=near, far=far, chunk=chunk, backend=backend)
    else:
        from .march_numba import surface_numba

        out = surface_numba(field, origins.to(device=device, dtype=torch.float32),
                            directions.to(device=device, dtype=torch.float32),
                            near=max(float(near), field.config.near), far=far, peak_stop=min_opacity)
        out = {key: value.to(origins.device) for key, value in out.items()}
    peak = out["peak_distance"]
    return torch.where(out["opacity"] >= min_opacity, peak, torch.full_like(peak, float("inf")))


def render_frame(field: Field, intrinsics: Intrinsics, cam_to_world: np.ndarray, *,
                 pixels: Optional[np.ndarray] = None, depth_only: bool = False, near: float = 0.0,
                 chunk: Optional[int] = None, min_opacity: float = 0.5, exact_rgb: bool = False
                 ) -> dict[str, np.ndarray]:
    """Render one camera (through its lens distortion) at every pixel centre, or at ``pixels`` (N, 2).

    Returns numpy arrays shaped (H, W, ...) or (N, ...): ``rgb`` (unless ``depth_only``), ``opacity``,
    ``z_depth`` (expected z-depth along the optical axis), ``distance``, ``median_z_depth`` and
    ``peak_z_depth`` (:func:`.volrend.peak_distance`); depths and distances are NaN where opacity <
    ``min_opacity`` (nothing solid hit). ``exact_rgb``: as :func:`render_rays`.
    """
    origins, directions, z_per_distance = camera_rays(intrinsics, cam_to_world, pixels)
    device = field_device(field)
    origins = torch.from_numpy(origins).float().to(device)
    directions = torch.from_numpy(directions).float().to(device)
    if depth_only:  # the same outputs without packed samples (compiled per ray on the CPU)
        out = render_surface(field, origins, directions, near=near, chunk=chunk)
    else:
        out = render_rays(field, origins, directions, near=near, chunk=chunk, exact_rgb=exact_rgb)
    opacity = out["opacity"].cpu().numpy()
    hit = opacity >= min_opacity
    distance = np.where(hit, out["distance"].cpu().numpy(), np.nan).astype(np.float32)
    median = np.where(hit, out["median_distance"].cpu().numpy(), np.nan)
    peak = np.where(hit, out["peak_distance"].cpu().numpy(), np.nan)
    result = {
        "opacity": opacity.astype(np.float32),
        "distance": distance,
        "z_depth": (distance * z_per_distance).astype(np.float32),
        "median_z_depth": (median * z_per_distance).astype(np.float32),
        "peak_z_depth": (peak * z_per_distance).astype(np.float32),
    }
    if not depth_only:
        result["rgb"] = out["rgb"].cpu().numpy().astype(np.float32)
    if pixels is None:
        shape = (intrinsics.height, intrinsics.width)
        result = {key: value.reshape(shape + value.shape[1:]) for key, value in result.items()}
    return result


def render_views(field: Field, frames, out_dir, *, progress: Optional[ProgressFn] = None,
                 with_metrics: bool = True) -> dict:
    """Render ``frames`` into ``out_dir/rgb/<stem>.png`` and float32 z-depth ``out_dir/depth/<stem>.npy`` (the
    peak depth, the surface the bake's labels use; NaN where nothing is hit), with pictures:
    ``depth_colour/<stem>.png`` (turbo, near = red, no depth black: :func:`~..eval.inspect.colour_depth`) and,
    for a view with a photo, ``strip/<stem>.png`` (truth | render | error:
    :func:`~..eval.image.comparison_strip`); PSNR/SSIM per view and on average where the photo exists."""
    from ..eval.image import comparison_strip, psnr, ssim, to_uint8
    from ..eval.inspect import colour_depth
    from ..io.atomic import png_bytes
    from ..io.images import load_image

    out_dir = Path(out_dir)
    # photos often live in DATA/rgb: a render there would overwrite them (and then score itself)
    check_inputs_outside(out_dir, {"photo": [f.image_path for f in frames]}, RENDER_OUTPUTS)
    views = []
    for n, frame in enumerate(frames):
        out = render_frame(field, frame.intrinsics, frame.cam_to_data)
        write_bytes(out_dir / "rgb" / f"{frame.name}.png", png_bytes(to_uint8(out["rgb"])))
        surface = out["peak_z_depth"]
        write_bytes(out_dir / "depth" / f"{frame.name}.npy", npy_bytes(surface.astype(np.float32)))
        write_bytes(out_dir / "depth_colour" / f"{frame.name}.png", png_bytes(colour_depth(surface)))
        view = {"frame": frame.index, "name": frame.name}
        if frame.image_path is not None and Path(frame.image_path).is_file():
            truth = load_image(frame)[..., :3]
            write_bytes(out_dir / "strip" / f"{frame.name}.png", png_bytes(comparison_strip(truth, out["rgb"])))
            if with_metrics:
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


def claim_render_dir(out_dir: str | Path, dataset, *, field_path: str | Path, trained_on: Optional[str],
                     split: str, downscale: float) -> OutputClaim:
    """Claim ``out_dir`` for :func:`render_views` of ``dataset``'s ``split`` through the field saved at
    ``field_path`` (trained on the frames fingerprinted ``trained_on``), before anything is rendered.

    Refused (NeuralLabelError, field ``out``): a file; a folder holding anything but this render (a re-run of
    the same render overwrites its own output, also after the field trained on); a folder holding the photos,
    the dataset's files or the field."""
    manifest = {"field": str(Path(field_path).resolve()), "trained_on": trained_on,
                "data": str(Path(dataset.path).resolve()), "split": split, "downscale": float(downscale)}
    inputs = {"photo": [f.image_path for f in dataset.frames], "dataset file": dataset.source_paths(),
              "field": [Path(field_path)]}
    return claim_output_dir(out_dir, kind="render", manifest=manifest, inputs=inputs, reserved=RENDER_OUTPUTS)
