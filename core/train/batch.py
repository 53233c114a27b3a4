"""A training step's data: the rays of the train images (and SfM depth targets), one step's random
batch of them, and its render with gradients."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..data.dataset import Dataset, Frame
from ..errors import NeuralLabelError
from ..field.model import Field, compiled_kernels
from ..geometry.cameras import camera_directions
from ..progress import ProgressFn, report
from ..render.march import march
from ..render.samples import RaySamples, in_contracted_distance
from ..render.volrend import composite, scale_gradient


@dataclass
class RayBank:
    """Every pixel of the train images: its colour (3 bytes) and nothing else per pixel.

    Pixel ``i`` is pixel ``i % P`` of frame ``i // P`` (P pixels per image: the train images share one
    size); its camera-axes direction comes from the one table of that frame's intrinsics. ``rgb`` is an
    array in RAM or, past the RAM budget, a memory-mapped temporary file (see :func:`load_ray_bank`)."""

    rgb: np.ndarray  # (N, 3) uint8 (np.memmap past the RAM budget)
    directions_cam: Tensor  # (K, P, 3) float32 unit directions, OpenGL camera axes, one table per intrinsics
    table: Tensor  # (F,) int64: each frame's direction table
    rotations: Tensor  # (F, 3, 3)
    origins: Tensor  # (F, 3)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes the bank holds (pixels and tables; the pixels may live in a file)."""
        tensors = (self.directions_cam, self.table, self.rotations, self.origins)
        return int(self.rgb.nbytes) + sum(t.numel() * t.element_size() for t in tensors)

    @property
    def mapped(self) -> bool:
        return isinstance(self.rgb, np.memmap)

    def rays(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Origins, world directions and colours in [0, 1] of the pixels ``index`` (CPU int64)."""
        pixels = self.directions_cam.shape[1]
        frame = torch.div(index, pixels, rounding_mode="floor")
        directions_cam = self.directions_cam[self.table[frame], index - frame * pixels]
        directions = torch.einsum("nij,nj->ni", self.rotations[frame], directions_cam)
        rgb = torch.from_numpy(np.ascontiguousarray(self.rgb[index.numpy()]))
        return self.origins[frame], directions, rgb.float() / 255.0


def default_ram_budget() -> int:
    """A quarter of the machine's physical memory: beyond it the ray bank goes to a memory-mapped file."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def pixel_array(count: int, ram_budget: int, spill_dir: Optional[Path] = None) -> np.ndarray:
    """(count, 3) uint8 for the bank's pixels: in RAM within ``ram_budget`` bytes, else memory-mapped onto an
    anonymous temporary file in ``spill_dir`` (default: the system's temp folder), gone when unmapped."""
    if count * 3 <= ram_budget:
        return np.empty((count, 3), dtype=np.uint8)
    with tempfile.TemporaryFile(dir=spill_dir, prefix="neurallabel-rays-") as handle:
        # the map keeps its own handle to the (already unlinked) file
        return np.memmap(handle, dtype=np.uint8, mode="w+", shape=(count, 3))


def check_one_size(frames: list[Frame]) -> tuple[int, int]:
    """The (width, height) all train images share; an error listing the sizes when they differ."""
    sizes = {(f.intrinsics.width, f.intrinsics.height) for f in frames}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise NeuralLabelError(f"the train images have mixed sizes ({listed}); NeuralLabel trains on images "
                               "of one size: resize them or pass one camera size per dataset", field="data")
    (width, height), = sizes
    return width, height


def load_ray_bank(frames: list[Frame], progress: Optional[ProgressFn] = None, *,
                  ram_budget: Optional[int] = None, spill_dir: Optional[Path] = None,
                  load: Optional[Callable[[Frame], np.ndarray]] = None) -> RayBank:
    """The ray bank of ``frames``; ``load`` gives a frame's float image (default: its photo)."""
    if load is None:
        from ..io.images import load_image as load

    width, height = check_one_size(frames)
    pixels = width * height
    budget = default_ram_budget() if ram_budget is None else ram_budget
    rgb = pixel_array(len(frames) * pixels, budget, spill_dir)
    tables: dict[Any, int] = {}
    directions, table = [], []
    for n, f in enumerate(frames):
        image = load(f)
        rgb[n * pixels:(n + 1) * pixels] = np.round(np.clip(image[..., :3], 0, 1) * 255).astype(np.uint8).reshape(-1, 3)
        if f.intrinsics not in tables:
            tables[f.intrinsics] = len(directions)
            d = camera_directions(f.intrinsics)
            directions.append((d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32))
        table.append(tables[f.intrinsics])
        report(progress, n + 1, len(frames), "load images")
    rotations = torch.tensor(np.stack([f.cam_to_data[:3, :3] for f in frames]), dtype=torch.float32)
    origins = torch.tensor(np.stack([f.cam_to_data[:3, 3] for f in frames]), dtype=torch.float32)
    return RayBank(rgb, torch.from_numpy(np.stack(directions)), torch.tensor(table, dtype=torch.long), rotations,
                   origins)


@dataclass
class DepthTargets:
    """DS-NeRF targets: rays through observed SfM points and the distance to the point along each."""

    origins: Tensor
    directions: Tensor
    distance: Tensor
    sigma: Tensor  # allowed spread (world units)

    def __len__(self) -> int:
        return int(self.distance.shape[0])


def load_depth_targets(dataset: Dataset, frames: list[Frame]) -> DepthTargets:
    from ..data.dataset import load_sparse_points
    from ..geometry.cameras import camera_rays

    sparse = load_sparse_points(dataset)
    if sparse is None or len(sparse.obs_point) == 0:
        raise NeuralLabelError(f"{dataset.path}: depth supervision needs SfM points, and this dataset has none: "
                               "triangulate them with `neurallabel sfm IMAGES --known-poses TRANSFORMS`, recover "
                               "cameras and points from the photos with `neurallabel sfm`, or load a COLMAP model",
                               field="depth_supervision")
    by_index = {f.index: f for f in frames}
    origins, directions, distance, sigma = [], [], [], []
    for frame_index in np.unique(sparse.obs_frame):
        frame = by_index.get(int(frame_index))
        if frame is None:
            continue  # a test frame: its points must not leak into training
        rows = np.nonzero(sparse.obs_frame == frame_index)[0]
        o, d, _ = camera_rays(frame.intrinsics, frame.cam_to_data, sparse.obs_pixel[rows])
        points = sparse.points[sparse.obs_point[rows]]
        t = np.einsum("ij,ij->i", points - o, d)
        # reprojection error (pixels) as an angle, times distance; at least 0.5 % of the distance
        err = sparse.errors[sparse.obs_point[rows]] / frame.intrinsics.fx * frame.downscale
        origins.append(o)
        directions.append(d)
        distance.append(t)
        sigma.append(np.maximum(err * t, 0.005 * t))
    if not origins:
        raise NeuralLabelError(f"{dataset.path}: no SfM point is observed in a train frame",
                               field="depth_supervision")
    cat = lambda xs: torch.tensor(np.concatenate(xs), dtype=torch.float32)  # noqa: E731
    o, d, t, s = cat(origins), cat(directions), cat(distance), cat(sigma)
    keep = t > 0
    return DepthTargets(o[keep], d[keep], t[keep], s[keep])


# --- one step ------------------------------------------------------------------------------------------------


@dataclass
class TrainBatch:
    """One step's rays (on the training device) and what they should render."""

    origins: Tensor  # (N, 3)
    directions: Tensor  # (N, 3) unit
    target_rgb: Tensor  # (N, 3) in [0, 1]
    depth: Optional[DepthTargets] = None  # SfM rays of this step, when depth supervision is on


def draw_batch(bank: RayBank, depth_targets: Optional[DepthTargets], rays_per_step: int,
               generator: torch.Generator, device: torch.device) -> TrainBatch:
    """``rays_per_step`` random pixels of the train images (and an eighth as many SfM rays, at least 64)."""
    index = torch.randint(0, len(bank), (rays_per_step,), generator=generator)
    origins, directions, target = bank.rays(index)
    depth = None
    if depth_targets is not None:
        k = min(len(depth_targets), max(64, rays_per_step // 8))
        pick = torch.randint(0, len(depth_targets), (k,), generator=generator)
        depth = DepthTargets(depth_targets.origins[pick].to(device), depth_targets.directions[pick].to(device),
                             depth_targets.distance[pick].to(device), depth_targets.sigma[pick].to(device))
    return TrainBatch(origins.to(device), directions.to(device), target.to(device), depth)


@dataclass
class TrainRender:
    """A batch rendered with gradients: per-ray outputs (``rgb``, ``opacity``, ...) and the packed samples
    with their weights; the same, depth only, for the batch's SfM rays."""

    rays: dict[str, Tensor]
    samples: RaySamples
    depth_rays: Optional[dict[str, Tensor]] = None
    depth_samples: Optional[RaySamples] = None
    #: ``samples`` with their intervals in the field's normalised contracted distance (regularisers use it)
    contracted: Optional[RaySamples] = None
    #: the variance per channel of the colour behind the rays that the render left out of ``rgb``
    #: (:func:`background_variance`): the photometric loss adds ``(1 - opacity) ** 2`` times it
    background_variance: float = 0.0


#: the power of the gradient scaling's ramp, ``min(1, t / scaling_distance) ** power``. The sparsity term is not
#: scaled, so wherever the ramp damps the photometric gradient the sparsity erodes density: with the paper's
#: square reaching up to the camera distance, the photographed surfaces themselves were damped and sank
#: behind their true place. A steep ramp that ends before the subject damps the fog in front of it at least
#: as much and leaves the surfaces alone (scripts/bench_field.py: in-front / behind shares)
GRADIENT_SCALING_POWER = 4


def gradient_scale(distances: Tensor, scaling_distance: float) -> Tensor:
    """The factor on the photometric gradient of samples at ``distances`` from their camera: 1 from
    ``scaling_distance`` on, falling as ``(t / scaling_distance) ** GRADIENT_SCALING_POWER`` before it."""
    return (distances / scaling_distance).clamp(max=1.0) ** GRADIENT_SCALING_POWER


#: what lies behind a training ray (``TrainOptions.background``)
BACKGROUNDS = ("expected", "random", "learned")
#: the variance of a uniform random colour channel in [0, 1]
UNIFORM_VARIANCE = 1.0 / 12.0


def render_train(field: Field, origins: Tensor, directions: Tensor, *, near: float = 0.0,
                 depth_only: bool = False, background: str = "learned", scaling_distance: float = 0.0,
                 backend: str = "auto") -> tuple[dict[str, Tensor], RaySamples]:
    """Stratified samples (no gradient), then density/colour with gradients at those samples.

    ``background``: the colour behind each ray. "random": a uniform random colour per ray; "expected": its
    mean, grey (the loss adds the rest of the expectation, :func:`background_variance`); "learned": the
    field's background colour.

    ``scaling_distance`` > 0: the rendered outputs' gradients reach each sample's density and colour scaled by
    :func:`gradient_scale` (:func:`..render.volrend.scale_gradient`). The returned samples keep
    the unscaled densities, so the sparsity term acts at full strength everywhere; their weights carry the
    scaled gradient (as the photometric loss does)."""
    check_background(background)
    samples = march(field, origins, directions, near=near, stratified=True, backend=backend)
    sigmas = field.density(samples.points(origins, directions))
    samples = samples.with_values(sigmas=sigmas)
    behind = None
    if background == "random":
        behind = torch.rand(origins.shape[0], 3, device=origins.device)
    elif background == "expected":
        behind = torch.full((origins.shape[0], 3), 0.5, device=origins.device)
    factor = None
    if scaling_distance > 0 and len(samples):
        factor = gradient_scale(samples.mids, scaling_distance)
        samples = samples.with_values(sigmas=scale_gradient(sigmas, factor))
    # no median distance: no loss uses it (it costs a cumulative sum and a scatter per step)
    out, weighted = composite(field, origins, directions, samples, depth_only=depth_only, background=behind,
                              median=False, sample_gradient_scale=factor)
    return out, weighted.with_values(sigmas=sigmas)


def check_background(background: str) -> None:
    """Refuse a background that is not one of :data:`BACKGROUNDS`, naming the field."""
    if background not in BACKGROUNDS:
        raise NeuralLabelError(f"background {background!r} is not one of {', '.join(BACKGROUNDS)}",
                               field="background")


def background_variance(background: str) -> float:
    """The variance per colour channel of what lies behind a training ray.

    The photos are opaque: every pixel sees a surface. A random colour behind each ray makes light that
    passes through the field cost its share of that colour's variance, so the field must explain each pixel
    with density; a constant colour would stand in for the missing surface. "expected" takes the
    expectation of the squared error over that random colour in closed form, ``(c + (1 - o) / 2 - t) ** 2
    + (1 - o) ** 2 / 12``: the same mean gradient without the noise of a draw per ray, whose zero-mean part
    Adam would weigh as much as the sparsity term's steady push towards letting light through."""
    return UNIFORM_VARIANCE if background == "expected" else 0.0


def contracted_samples(field: Field, samples: RaySamples, origins: Tensor, directions: Tensor, near: float
                       ) -> RaySamples:
    """:func:`..render.samples.in_contracted_distance` for the field (compiled on the CPU)."""
    kernels = compiled_kernels()
    if origins.device.type != "cpu" or len(samples) == 0 or kernels is None:
        return in_contracted_distance(samples, origins, directions, field.normalize, near)
    s_starts, s_ends = kernels.contracted_intervals(origins, directions, samples.ray_indices, samples.t_starts,
                                            samples.t_ends, near, field.roi_centre, field.roi_half,
                                            field.config.levels > 1)
    return replace(samples, t_starts=s_starts, t_ends=s_ends)


def render_batch(field: Field, batch: TrainBatch, *, near: float, background: str,
                 scaling_distance: float = 0.0, backend: str = "auto") -> TrainRender:
    rays, samples = render_train(field, batch.origins, batch.directions, near=near, background=background,
                                 scaling_distance=scaling_distance, backend=backend)
    render = TrainRender(rays, samples, contracted=contracted_samples(field, samples, batch.origins,
                                                                      batch.directions, near),
                         background_variance=background_variance(background))
    if batch.depth is not None:
        render.depth_rays, render.depth_samples = render_train(
            field, batch.depth.origins, batch.depth.directions, near=near, depth_only=True, backend=backend)
    return render
