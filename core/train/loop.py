"""Training a :class:`~.field.Field` on a dataset's train split.

One step: draw random pixels of the train images (as many rays as keep ~``samples_per_step`` samples, the
nerfacc "dynamic batch"), march them through the occupancy grid (stratified), evaluate density and colour
with gradients at the surviving samples, composite, and take an Adam step on the photometric loss (plus the
DS-NeRF sparse depth loss when asked). The occupancy grid follows nerfacc's schedule (every 16 steps; all
cells during warm-up, then a quarter plus the occupied ones); the density grid grows coarse-to-fine.

The run is bounded by ``steps`` or ``minutes`` and checkpoints itself atomically every
``checkpoint_every_s`` seconds and at the end, so training again with the same output resumes after a kill.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..geometry.cameras import camera_directions
from ..field.checkpoint import load_checkpoint, save_checkpoint
from ..data.dataset import Dataset, Frame, load_dataset
from ..errors import NeuralLabelError
from ..field.model import Field, FieldConfig
from ..progress import ProgressFn, report
from ..render.volume import composite, march_cpu, march_nerfacc

#: density grid sizes and the share of the run after which each takes over (coarse to fine)
DENSITY_SCHEDULE = ((64, 0.0), (96, 0.12), (128, 0.25), (160, 0.4))


@dataclass
class TrainOptions:
    steps: Optional[int] = None  # stop after this many steps (in total, counting a resumed run) ...
    minutes: Optional[float] = None  # ... or after this much training time (default 5 minutes)
    device: str = "auto"  # auto | cpu | cuda
    downscale: float = 1.0
    strict: bool = False
    depth_supervision: bool = False
    random_background: bool = False  # a random colour behind each training ray (see _render_train)
    opacity_weight: float = 0.01  # pull every training ray to full opacity: photos see a surface everywhere
    # mip-NeRF 360's distortion loss. None: by the kind of scene (see distortion_for). Closed scenes start
    # strong: it is what clears the fog in free space (its pull towards transparent rays also empties space
    # no surface explains), decayed to 1/10 by the end so the surfaces close up (400x300 bench scene: 0.002
    # leaves depth 17 % off on objects). Open scenes keep it weak: measured in world distance, the long
    # contracted stretches behind the subject would dominate it and punch holes (fox: 15.0 dB vs 22.6 dB).
    distortion_weight: Optional[float] = None
    distortion_final: Optional[float] = None  # the weight decays exponentially to this share of it
    min_views: int = 3  # density-grid vertices seen by fewer train cameras stay empty (see views_per_vertex)
    near: Optional[float] = None  # training rays start here; None: 0.2 x median camera distance to the
    # point the cameras look at (a per-view "fog" right in front of each camera is the easiest way to
    # memorise the train views; nothing the cameras photograph sits that close)
    samples_per_step: int = 65536
    max_rays_per_step: int = 8192
    checkpoint_every_s: float = 60.0
    seed: int = 0
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)

    def budget(self) -> tuple[str, float]:
        if self.steps is not None:
            if self.steps < 1:
                raise NeuralLabelError(f"--steps must be at least 1 (got {self.steps})")
            return "steps", float(self.steps)
        minutes = 5.0 if self.minutes is None else self.minutes
        if not minutes > 0:
            raise NeuralLabelError(f"--minutes must be positive (got {self.minutes})")
        return "seconds", minutes * 60.0


@dataclass
class TrainResult:
    out: Path
    steps: int
    elapsed_s: float
    resumed: bool
    device: str
    train_frames: int
    final_loss: float
    train_psnr: float
    cpu_share: float  # process CPU time / (wall time x threads): how much of the CPU the run got

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NeuralLabelError("--device cuda: no CUDA device is available to torch on this machine "
                               "(use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise NeuralLabelError(f"--device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


# --- scene bounds ------------------------------------------------------------------------------------------


def look_at_centre(frames: list[Frame]) -> np.ndarray:
    """The point closest (least squares) to all optical axes: where an orbit of cameras looks."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for f in frames:
        origin = f.cam_to_data[:3, 3]
        axis = -f.cam_to_data[:3, 2]
        axis = axis / np.linalg.norm(axis)
        projector = np.eye(3) - np.outer(axis, axis)
        a += projector
        b += projector @ origin
    if np.linalg.cond(a) > 1e8:  # parallel axes: use the cameras' centroid
        return np.mean([f.cam_to_data[:3, 3] for f in frames], axis=0)
    return np.linalg.solve(a, b)


def field_config_for(dataset: Dataset) -> FieldConfig:
    """Field bounds from the dataset: its ``scene_aabb`` when given (generated scenes), else the cameras.

    Without ``scene_aabb``: a box around the point the cameras look at, half as wide as the median camera
    distance, with ``1 + log2(aabb_scale)`` nested levels for the background (instant-ngp's aabb_scale).
    With ``scene_aabb``: that box, 4 % larger, one level (a closed room).
    """
    extra = dataset.extra or {}
    scene_aabb = extra.get("scene_aabb")
    if scene_aabb is not None:
        box = np.asarray(scene_aabb, dtype=np.float64).reshape(2, 3)
        if not np.all(box[1] > box[0]):
            raise NeuralLabelError(f"{dataset.path}: scene_aabb {scene_aabb} is not a box (min < max)")
        centre, half = box.mean(axis=0), (box[1] - box[0]) / 2 * 1.04
        levels = 1
    else:
        centre = look_at_centre(dataset.frames)
        distances = [np.linalg.norm(f.cam_to_data[:3, 3] - centre) for f in dataset.frames]
        half = np.full(3, 0.5 * float(np.median(distances)))
        aabb_scale = max(1.0, float(dataset.aabb_scale or 1.0))
        levels = int(min(5, 1 + math.ceil(math.log2(aabb_scale)))) if aabb_scale > 1 else 2
    roi = [list(map(float, centre - half)), list(map(float, centre + half))]
    # open scenes: coarser occupancy cells per level (the levels multiply the cells to refresh)
    return FieldConfig(roi_aabb=roi, levels=levels, density_resolution=DENSITY_SCHEDULE[0][0],
                       occupancy_resolution=128 if levels == 1 else 64)


def dataset_fingerprint(frames: list[Frame]) -> str:
    digest = hashlib.sha256()
    for f in frames:
        digest.update(f.image_path.name.encode())
        digest.update(np.asarray(f.cam_to_data, dtype=np.float64).round(6).tobytes())
        i = f.intrinsics
        digest.update(json.dumps([i.width, i.height, i.fx, i.fy, i.cx, i.cy, list(i.distortion)]).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def views_per_vertex(field: Field, frames: list[Frame], near: float, resolution: int) -> torch.Tensor:
    """(R, R, R) how many train cameras see each density-grid vertex (in the image, beyond ``near``).

    DVGO's per-voxel learning rate: space seen by one or two cameras only (right in front of each camera) can
    take any density that paints those views (a per-view "fog") without the other views objecting, so its
    density learns in proportion to the number of views and space seen by fewer than ``min_views`` stays
    empty. Pinhole projection (distortion moves points by a few pixels: irrelevant for a count)."""
    device = field.density_grid.device
    axis = torch.linspace(-1.0, 1.0, resolution, device=device)
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    if field.config.levels > 1:  # invert the L-inf contraction of Field.normalize
        contracted = coords * 2.0
        norm = contracted.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)
        u = torch.where(norm <= 1.0, contracted, contracted / norm / (2.0 - norm.clamp_max(1.999)))
    else:
        u = coords
    points = field.roi_centre + u * field.roi_half
    count = torch.zeros(points.shape[0], dtype=torch.int16, device=device)
    for f in frames:
        c2w = torch.tensor(f.cam_to_data, dtype=torch.float32, device=device)
        p = (points - c2w[:3, 3]) @ c2w[:3, :3]  # camera axes (OpenGL: looking down -z)
        z = -p[:, 2]
        i = f.intrinsics
        zs = z.clamp_min(1e-9)
        x = i.fx * p[:, 0] / zs + i.cx
        y = -i.fy * p[:, 1] / zs + i.cy
        count += ((z > near) & (x >= 0) & (x <= i.width) & (y >= 0) & (y <= i.height)).to(torch.int16)
    return count.view(1, 1, resolution, resolution, resolution).float()


def density_lr_scale(view_count: torch.Tensor, min_views: int) -> torch.Tensor:
    """Per-vertex factor on the density grid's update: views / most views, 0 under ``min_views``."""
    scale = view_count / view_count.max().clamp_min(1.0)
    return torch.where(view_count >= min_views, scale, torch.zeros_like(scale))


def distortion_for(config: FieldConfig, options: TrainOptions) -> tuple[float, float]:
    """Distortion weight at the start and the share of it left at the end (options win where given)."""
    start, final = (1.0, 0.1) if config.levels == 1 else (0.002, 1.0)
    if options.distortion_weight is not None:
        start = options.distortion_weight
    if options.distortion_final is not None:
        final = options.distortion_final
    return start, final


# --- rays of the train images --------------------------------------------------------------------------------


@dataclass
class RayBank:
    """Every pixel of the train images: colour, and the camera each pixel's ray comes from."""

    rgb: torch.Tensor  # (N, 3) uint8
    directions_cam: torch.Tensor  # (N, 3) float32, OpenGL camera axes, unit length
    camera: torch.Tensor  # (N,) int64 index into rotations/origins
    rotations: torch.Tensor  # (F, 3, 3)
    origins: torch.Tensor  # (F, 3)

    def rays(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cam = self.camera[index]
        directions = torch.einsum("nij,nj->ni", self.rotations[cam], self.directions_cam[index])
        return self.origins[cam], directions, self.rgb[index].float() / 255.0


def load_ray_bank(frames: list[Frame], progress: Optional[ProgressFn] = None) -> RayBank:
    from ..io.images import load_image

    sizes = {(f.intrinsics.width, f.intrinsics.height) for f in frames}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise NeuralLabelError(f"the train images have mixed sizes ({listed}); NeuralLabel trains on images "
                               "of one size: resize them or pass one camera size per dataset")
    rgbs, dirs, cams = [], [], []
    direction_cache: dict[Any, np.ndarray] = {}
    for n, f in enumerate(frames):
        image = load_image(f)
        if image.shape[2] > 3:
            image = image[..., :3]
        rgbs.append(torch.from_numpy(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).reshape(-1, 3)))
        key = f.intrinsics
        if key not in direction_cache:
            d = camera_directions(f.intrinsics)
            direction_cache[key] = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)
        dirs.append(torch.from_numpy(direction_cache[key]))
        cams.append(torch.full((len(direction_cache[key]),), n, dtype=torch.long))
        report(progress, n + 1, len(frames), "load images")
    rotations = torch.tensor(np.stack([f.cam_to_data[:3, :3] for f in frames]), dtype=torch.float32)
    origins = torch.tensor(np.stack([f.cam_to_data[:3, 3] for f in frames]), dtype=torch.float32)
    return RayBank(torch.cat(rgbs), torch.cat(dirs), torch.cat(cams), rotations, origins)


@dataclass
class DepthTargets:
    """DS-NeRF targets: rays through observed SfM points and the distance to the point along each."""

    origins: torch.Tensor
    directions: torch.Tensor
    distance: torch.Tensor
    sigma: torch.Tensor  # allowed spread (world units)


def load_depth_targets(dataset: Dataset, frames: list[Frame]) -> DepthTargets:
    from ..geometry.cameras import camera_rays
    from ..data.dataset import load_sparse_points

    sparse = load_sparse_points(dataset)
    if sparse is None or len(sparse.obs_point) == 0:
        raise NeuralLabelError(f"{dataset.path}: --depth-supervision needs SfM points (run `neurallabel sfm`, "
                               "or load a COLMAP model); this dataset has none")
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
        raise NeuralLabelError(f"{dataset.path}: no SfM point is observed in a train frame")
    cat = lambda xs: torch.tensor(np.concatenate(xs), dtype=torch.float32)  # noqa: E731
    o, d, t, s = cat(origins), cat(directions), cat(distance), cat(sigma)
    keep = t > 0
    return DepthTargets(o[keep], d[keep], t[keep], s[keep])


def depth_loss(out: dict[str, torch.Tensor], distance: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """DS-NeRF: -log of the ray's termination weight near the SfM point, Gaussian-weighted."""
    ray = out["ray_indices"]
    mids = (out["t_starts"] + out["t_ends"]) / 2
    delta = out["t_ends"] - out["t_starts"]
    gauss = torch.exp(-((mids - distance[ray]) ** 2) / (2 * sigma[ray] ** 2))
    per_sample = -torch.log(out["weights"] + 1e-5) * gauss * delta / (sigma[ray] * math.sqrt(2 * math.pi))
    return torch.zeros(len(distance), device=distance.device).index_add(0, ray, per_sample).mean()


def distortion_loss(out: dict[str, torch.Tensor], n_rays: int) -> torch.Tensor:
    """mip-NeRF 360's distortion loss on packed samples: pulls each ray's weight into one compact
    surface, which removes floaters. sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 delta_i, in O(samples)."""
    ray = out["ray_indices"]
    if ray.numel() == 0:
        return torch.zeros((), device=ray.device)
    w = out["weights"]
    mids = (out["t_starts"] + out["t_ends"]) / 2
    delta = out["t_ends"] - out["t_starts"]
    counts = torch.bincount(ray, minlength=n_rays)
    pack_start = torch.cumsum(counts, 0) - counts

    def exclusive(x: torch.Tensor) -> torch.Tensor:
        inclusive = torch.cumsum(x.double(), 0)
        excl = inclusive - x.double()
        return (excl - excl[pack_start[ray]]).float()

    inter = 2 * w * (mids * exclusive(w) - exclusive(w * mids))
    intra = w * w * delta / 3
    return (inter + intra).sum() / n_rays


# --- the loop ----------------------------------------------------------------------------------------------


#: Adam learning rates at the start (decayed to 1/10 by the end)
LEARNING_RATES = {"density": 0.2, "planes": 0.05, "mlp": 0.005}


def _param_groups(field: Field) -> list[dict[str, Any]]:
    mlp = list(field.mlp.parameters())
    if field.config.levels > 1:
        # an open scene: rays leaving the outermost box see sky / far background, whose colour is learned.
        # A closed scene (one level) has none: a learned colour there would stand in for the surfaces
        # while they are still forming and leave them transparent; fixed, it asks for opaque surfaces.
        mlp.append(field.background_rgb)
    return [
        {"params": [field.density_grid], "lr": LEARNING_RATES["density"], "name": "density"},
        {"params": list(field.planes.parameters()), "lr": LEARNING_RATES["planes"], "name": "planes"},
        {"params": mlp, "lr": LEARNING_RATES["mlp"], "name": "mlp"},
    ]


def _make_optimizer(field: Field) -> torch.optim.Optimizer:
    # fused: one kernel over each grid instead of ~10 passes (4x faster on CPU for the 10 M grid values)
    return torch.optim.Adam(_param_groups(field), betas=(0.9, 0.99), eps=1e-15, fused=True)


def _density_resolution_at(fraction: float) -> int:
    resolution = DENSITY_SCHEDULE[0][0]
    for r, start in DENSITY_SCHEDULE:
        if fraction >= start:
            resolution = r
    return resolution


def train_field(data: str | Path, out: str | Path, options: TrainOptions,
                progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train (or resume training) a field on ``data``'s train split and save it to ``out``."""
    out = Path(out)
    device = resolve_device(options.device)
    budget_kind, budget = options.budget()
    if options.threads:
        torch.set_num_threads(options.threads)
    dataset = load_dataset(data, options.downscale, options.strict)
    frames = dataset.split("train")
    if not frames:
        raise NeuralLabelError(f"{dataset.path}: no frame in the train split ({len(dataset.frames)} frames, "
                               "all held out)")
    fingerprint = dataset_fingerprint(frames)
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)

    resumed = False
    step, elapsed = 0, 0.0
    optimizer_state = None
    if out.exists():
        checkpoint = load_checkpoint(out, device="cpu")
        if checkpoint.dataset.get("fingerprint") != fingerprint:
            raise NeuralLabelError(f"{out}: this checkpoint was trained on other frames "
                                   f"({checkpoint.dataset.get('path')}); choose another --out")
        field = checkpoint.field
        step = int(checkpoint.training.get("step", 0))
        elapsed = float(checkpoint.training.get("elapsed_s", 0.0))
        optimizer_state = checkpoint.training.get("optimizer")
        checkpoint_visited = checkpoint.training.get("visited")
        resumed = True
    else:
        field = Field(field_config_for(dataset))
    field = field.to(device).train()

    bank = load_ray_bank(frames, progress)
    depth_targets = load_depth_targets(dataset, frames) if options.depth_supervision else None
    optimizer = _make_optimizer(field)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError):
            pass  # a changed parameter layout: start the moments afresh
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    def done_fraction() -> float:
        return min(1.0, (step if budget_kind == "steps" else elapsed) / budget)

    def save(done: bool) -> None:
        save_checkpoint(out, field, dataset={"path": str(dataset.path), "fingerprint": fingerprint,
                                             "frames": len(frames)},
                        training={"step": step, "elapsed_s": elapsed, "done": done,
                                  "options": {k: v for k, v in asdict(options).items()},
                                  "optimizer": optimizer.state_dict(), "visited": visited})

    # density-grid vertices that ever received a gradient; the others (e.g. within `near` of a camera, or
    # never seen) keep their initial faint density, which is cleared when training ends
    visited = torch.zeros(field.density_grid.shape, dtype=torch.bool, device=device)
    saved_visited = checkpoint_visited if resumed else None
    if saved_visited is not None and saved_visited.shape == visited.shape:
        visited = saved_visited.to(device)
    rays_per_step = 256
    near = options.near
    if near is None:
        centre = look_at_centre(frames)
        near = 0.2 * float(np.median([np.linalg.norm(f.cam_to_data[:3, 3] - centre) for f in frames]))
    field.config.near = float(near)
    # counted once on the finest grid of the schedule (~0.1 s per million vertices and camera), resampled
    view_count = views_per_vertex(field, frames, near, max(r for r, _ in DENSITY_SCHEDULE))

    def lr_scale_at(resolution: int) -> torch.Tensor:
        count = torch.nn.functional.interpolate(view_count, size=(resolution,) * 3, mode="trilinear",
                                                align_corners=True)
        return density_lr_scale(count, options.min_views).to(device)

    lr_scale = lr_scale_at(field.config.density_resolution)
    if not resumed:
        with torch.no_grad():  # space too few cameras see starts (and stays) empty
            field.density_grid[lr_scale == 0] = -30.0
    distortion_start, distortion_final = distortion_for(field.config, options)
    loss_value, psnr_ema = float("nan"), float("nan")
    last_save = time.monotonic()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    n_pixels = bank.rgb.shape[0]
    total_units = int(budget)
    while done_fraction() < 1.0:
        t0 = time.monotonic()
        fraction = done_fraction()
        # coarse-to-fine density grid; a grown grid gets fresh Adam moments
        resolution = _density_resolution_at(fraction)
        if resolution != field.config.density_resolution:
            field.resize_density(resolution)
            visited = torch.nn.functional.interpolate(visited.float(), size=(resolution,) * 3, mode="trilinear",
                                                      align_corners=True) > 0
            lr_scale = lr_scale_at(resolution)
            old = optimizer.state_dict()
            optimizer = _make_optimizer(field)
            for group, old_group in zip(optimizer.param_groups, old["param_groups"]):
                group["lr"] = old_group["lr"]
            if step >= 16:
                field.update_occupancy(fraction=1.0)
        # occupancy grid: nerfacc's schedule
        if step % 16 == 0 and step >= 16:  # before that every cell stays occupied (all of space is seen)
            field.update_occupancy(fraction=1.0 if step < 256 else 0.25)
        # learning rate: exponential decay to 1/10
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * (0.1 ** fraction)

        index = torch.randint(0, n_pixels, (rays_per_step,), generator=generator)
        origins, directions, target = bank.rays(index)
        origins, directions, target = origins.to(device), directions.to(device), target.to(device)
        out_rays = _render_train(field, origins, directions, device, near=near,
                                 random_background=options.random_background)
        loss = torch.nn.functional.mse_loss(out_rays["rgb"], target)
        if options.opacity_weight > 0:
            # every pixel of a photo sees a surface (the box boundary stands in for the sky), so a learned
            # background colour must not replace geometry: that would leave holes in the depth
            loss = loss + options.opacity_weight * (1.0 - out_rays["opacity"]).mean()
        if distortion_start > 0:
            scale = 1.0 / field.render_step_size / field.config.steps_per_roi  # distances in roi diagonals
            weight = distortion_start * distortion_final ** fraction
            loss = loss + weight * scale * distortion_loss(out_rays, origins.shape[0])
        if depth_targets is not None:
            k = min(len(depth_targets.distance), max(64, rays_per_step // 8))
            pick = torch.randint(0, len(depth_targets.distance), (k,), generator=generator)
            d_out = _render_train(field, depth_targets.origins[pick].to(device),
                                  depth_targets.directions[pick].to(device), device, near=near, depth_only=True)
            loss = loss + 0.1 * depth_loss(d_out, depth_targets.distance[pick].to(device),
                                           depth_targets.sigma[pick].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if field.density_grid.grad is not None:
            visited |= field.density_grid.grad != 0
        density_before = field.density_grid.detach().clone()
        optimizer.step()
        with torch.no_grad():  # DVGO's per-voxel learning rate (Adam normalises gradients, so scale the step)
            field.density_grid.copy_(density_before + (field.density_grid - density_before) * lr_scale)

        loss_value = float(loss.detach())
        mse = float(torch.nn.functional.mse_loss(out_rays["rgb"].detach(), target))
        psnr = -10 * math.log10(max(mse, 1e-10))
        psnr_ema = psnr if math.isnan(psnr_ema) else 0.95 * psnr_ema + 0.05 * psnr
        # dynamic batch: keep the number of samples per step near the target
        n_samples = max(1, int(out_rays["ray_indices"].numel()))
        rays_per_step = int(min(options.max_rays_per_step, max(
            256, rays_per_step * options.samples_per_step / n_samples * 0.5 + rays_per_step * 0.5)))
        step += 1
        elapsed += time.monotonic() - t0
        report(progress, min(total_units, int(step if budget_kind == "steps" else elapsed)), total_units,
               "train")
        if time.monotonic() - last_save > options.checkpoint_every_s:
            save(done=False)
            last_save = time.monotonic()
    with torch.no_grad():  # space no training ray reached holds nothing we know of
        field.density_grid[~visited] = -30.0
    # a thorough occupancy refresh so rendering skips exactly the empty space
    field.update_occupancy(fraction=1.0, samples_per_cell=4, decay=0.0)
    field.eval()
    save(done=True)
    report(progress, total_units, total_units, "train")
    wall = time.monotonic() - wall_start
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    cpu_share = (time.process_time() - cpu_start) / max(1e-9, wall * threads)
    return TrainResult(out, step, elapsed, resumed, device.type, len(frames), loss_value, psnr_ema,
                       round(cpu_share, 3))


def _render_train(field: Field, origins: torch.Tensor, directions: torch.Tensor, device: torch.device,
                  near: float = 0.0, depth_only: bool = False, random_background: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Stratified samples (no gradient), then density/colour with gradients at those samples."""
    if device.type == "cuda":
        ray_indices, t_starts, t_ends = march_nerfacc(field, origins, directions, near=near, stratified=True)
    else:
        ray_indices, t_starts, t_ends, _ = march_cpu(field, origins, directions, near=near, stratified=True)
    mids = (t_starts + t_ends)[:, None] / 2
    sigmas = field.density(origins[ray_indices] + mids * directions[ray_indices])
    # A random colour behind every ray: the photos are opaque, so the field must explain each pixel with
    # density instead of leaning on a background colour (which would leave holes in the depth).
    background = torch.rand(origins.shape[0], 3, device=origins.device) if random_background else None
    return composite(field, origins, directions, ray_indices, t_starts, t_ends, sigmas,
                     depth_only=depth_only, return_samples=True, background=background)
