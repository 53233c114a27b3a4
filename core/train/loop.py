"""Training a :class:`~..field.model.Field` on a dataset's train split, as small stages.

One step: draw random pixels of the train images (as many rays as keep ~``samples_per_step`` samples, the
nerfacc "dynamic batch"), march them through the occupancy grid (stratified), evaluate density and colour
with gradients at the surviving samples, composite over a random background colour per ray (photos are
opaque: :func:`.batch.background_variance`), and take an Adam step on the sum of the loss terms
(:mod:`.losses`: photometric, distortion, sparsity, DS-NeRF depth and opacity when asked). :mod:`.schedules`
says what changes over the run: the occupancy grid follows nerfacc's schedule (every 16 steps; all cells during
warm-up, then a quarter plus the occupied ones), the density grid grows coarse-to-fine, the learning
rates decay.

The run is bounded by ``steps`` or ``minutes`` and checkpoints itself atomically every
``checkpoint_every_s`` seconds and at the end, so training again with the same output resumes after a kill.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..data.dataset import Dataset, Frame, load_dataset
from ..devices import resolve_device  # noqa: F401  (re-exported: the CLI imports it from here)
from ..errors import NeuralLabelError
from ..field.checkpoint import check_dataset, dataset_fingerprint, load_checkpoint, save_checkpoint
from ..field.model import Field, from_channel_first
from ..progress import ProgressFn, report
from ..render.march import MARCHERS, choose_backend
from .batch import (DepthTargets, RayBank, TrainBatch, TrainRender, check_background, check_one_size,
                    draw_batch, load_depth_targets, load_ray_bank, render_batch)
from .bounds import (default_near, density_lr_scale, field_config_for, median_camera_distance,
                     views_per_vertex)
from .losses import DEPTH_LOSSES, LossTerm, default_terms, total_loss
from .schedules import (LEARNING_RATES, density_resolution_at, finest_density_resolution, learning_rate_factor,
                        occupancy_share_at)


@dataclass
class TrainOptions:
    steps: Optional[int] = None  # stop after this many steps (in total, counting a resumed run) ...
    minutes: Optional[float] = None  # ... or after this much training time (default 5 minutes)
    device: str = "auto"  # auto | cpu | cuda
    marcher: str = "auto"  # auto (numba on the CPU, nerfacc on CUDA) | nerfacc | torch | numba: see march.choose_backend
    downscale: float = 1.0
    strict: bool = False
    depth_supervision: bool = False
    depth_loss: str = "kl"  # with depth_supervision: DS-NeRF's KL form, or "mse" of the expected distance
    # the colour behind each training ray (batch.BACKGROUNDS, batch.background_variance): "random", a uniform
    # random colour drawn per ray; "expected", its closed form (no noise); "learned", the field's own
    background: str = "random"
    # a loss pulling every training ray to full opacity (the other way to ask for opaque photos): with a
    # learned background colour it sank the floor of open scenes below its true height, so it is off
    opacity_weight: float = 0.0
    # mip-NeRF 360's distortion loss, in normalised contracted distance. None: losses.DISTORTION
    distortion_weight: Optional[float] = None
    distortion_final: Optional[float] = None  # the weight decays exponentially to this share of it
    # the opacity of every sample, summed per ray (losses.sparsity_loss). None: losses.SPARSITY
    sparsity_weight: Optional[float] = None
    sparsity_final: Optional[float] = None
    # the sample opacity past which the sparsity price flattens (losses.sparsity_loss); None: linear. 0.1 closes
    # the light that objects let through, and lets opaque floaters live (scripts/bench_labels.py)
    sparsity_knee: Optional[float] = None
    min_views: int = 3  # density-grid vertices seen by fewer train cameras stay empty (see views_per_vertex)
    # "Floaters No More" (Philip & Deschaintre 2023): the photometric gradient of a sample closer to its camera
    # than this x the median camera distance to the look-at point is scaled by
    # (distance / it) ** batch.GRADIENT_SCALING_POWER, so a fog in front of one camera cannot outvote the other
    # cameras and the sparsity term. 0: off
    gradient_scaling: float = 0.8
    near: Optional[float] = None  # training rays start here; None: 0.2 x median camera distance to the
    # point the cameras look at (a per-view "fog" right in front of each camera is the easiest way to
    # memorise the train views; nothing the cameras photograph sits that close)
    # None: by device (see batch_sizes): more on CUDA, where a step's cost is mostly launch overhead
    samples_per_step: Optional[int] = None
    max_rays_per_step: Optional[int] = None
    checkpoint_every_s: float = 60.0
    seed: int = 0
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)

    def budget(self) -> tuple[str, float]:
        if self.steps is not None:
            if self.steps < 1:
                raise NeuralLabelError(f"steps must be at least 1 (got {self.steps})", field="steps")
            return "steps", float(self.steps)
        minutes = 5.0 if self.minutes is None else self.minutes
        if not minutes > 0:
            raise NeuralLabelError(f"minutes must be positive (got {self.minutes})", field="minutes")
        return "seconds", minutes * 60.0

    def batch_sizes(self, device: torch.device) -> tuple[int, int]:
        """(samples per step, most rays per step): the options', else 2^16 / 8192 on the CPU and
        nerfacc's instant-NGP example's 2^18 samples (at most 2^16 rays) on CUDA."""
        cuda = device.type == "cuda"
        samples = self.samples_per_step or (1 << 18 if cuda else 1 << 16)
        rays = self.max_rays_per_step or (1 << 16 if cuda else 8192)
        return samples, rays


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
    marcher: str = "numba"  # nerfacc (CUDA kernels), numba (the CPU) or torch (CUDA without nerfacc kernels)
    marcher_notice: Optional[str] = None  # one line when CUDA fell back to the torch marcher

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


# --- set-up and resume ---------------------------------------------------------------------------------------


@dataclass
class TrainSetup:
    """What a run trains on; fixed for the whole run."""

    out: Path
    options: TrainOptions
    device: torch.device
    dataset: Dataset
    frames: list[Frame]
    fingerprint: str
    bank: RayBank
    depth_targets: Optional[DepthTargets]
    near: float
    view_count: torch.Tensor  # (1, 1, R, R, R) train cameras seeing each vertex of the finest density grid
    terms: list[LossTerm]
    scaling_distance: float = 0.0  # see TrainOptions.gradient_scaling (world units; 0: off)

    def lr_scale_at(self, resolution: int) -> torch.Tensor:
        """DVGO's per-vertex learning-rate factor for a density grid of ``resolution``^3."""
        count = torch.nn.functional.interpolate(self.view_count, size=(resolution,) * 3, mode="trilinear",
                                                align_corners=True)
        return density_lr_scale(count, self.options.min_views).to(self.device)


@dataclass
class TrainState:
    """What changes from step to step (and goes into the checkpoint)."""

    field: Field
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    step: int
    elapsed: float
    # density-grid vertices that ever received a gradient; the others (e.g. within `near` of a camera, or
    # never seen) keep their initial faint density, which is cleared when training ends
    visited: torch.Tensor
    lr_scale: torch.Tensor
    resumed: bool
    rays_per_step: int = 256
    loss: float = float("nan")
    psnr_ema: float = float("nan")


def param_groups(field: Field) -> list[dict[str, Any]]:
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


def make_optimizer(field: Field) -> torch.optim.Optimizer:
    # fused: one kernel over each grid instead of ~10 passes (4x faster on CPU for the 10 M grid values)
    return torch.optim.Adam(param_groups(field), betas=(0.9, 0.99), eps=1e-15, fused=True)


def optimiser_moments_like_planes(optimizer: torch.optim.Optimizer, field: Field) -> None:
    """Adam's moments of the tri-planes in the planes' channel-last layout: a checkpoint from before the
    planes were stored so holds them as (3, C, H, W)."""
    for plane in field.planes:
        for key, value in optimizer.state.get(plane, {}).items():
            if torch.is_tensor(value):
                optimizer.state[plane][key] = from_channel_first(value, plane)


def resume_or_create(out: Path, dataset: Dataset, frames: list[Frame]) -> tuple[Field, Optional[dict[str, Any]]]:
    """The field saved at ``out`` (on the CPU) and its training record, or a new field for ``dataset``."""
    if not out.exists():
        return Field(field_config_for(dataset)), None
    checkpoint = load_checkpoint(out, device="cpu")
    check_dataset(checkpoint, frames, dataset.path, source=out, what="out")
    return checkpoint.field, checkpoint.training


def set_up(data: str | Path, out: str | Path, options: TrainOptions,
           progress: Optional[ProgressFn] = None) -> tuple[TrainSetup, TrainState]:
    """Load the data, resume or create the field, and prepare everything the steps need."""
    out = Path(out)
    device = resolve_device(options.device, "device")
    options.budget()  # refuse a bad budget or marcher before loading anything
    if options.marcher not in MARCHERS:
        raise NeuralLabelError(f"marcher {options.marcher!r} is not one of {', '.join(MARCHERS)}", field="marcher")
    if options.depth_loss not in DEPTH_LOSSES:
        raise NeuralLabelError(f"depth_loss {options.depth_loss!r} is not one of {', '.join(DEPTH_LOSSES)}",
                               field="depth_loss")
    if options.sparsity_knee is not None and not options.sparsity_knee > 0:
        raise NeuralLabelError(f"sparsity_knee must be positive, got {options.sparsity_knee}", field="sparsity_knee")
    check_background(options.background)
    if options.threads:
        torch.set_num_threads(options.threads)
    dataset = load_dataset(data, options.downscale, options.strict)
    frames = dataset.split("train")
    if not frames:
        raise NeuralLabelError(f"{dataset.path}: no frame in the train split ({len(dataset.frames)} frames, "
                               "all held out)", field="data")
    torch.manual_seed(options.seed)
    check_one_size(frames)  # before the cameras: the plainest thing a dataset can get wrong
    field, training = resume_or_create(out, dataset, frames)
    field = field.to(device).train()
    bank = load_ray_bank(frames, progress, spill_dir=out.parent if out.parent.is_dir() else None)
    depth_targets = load_depth_targets(dataset, frames) if options.depth_supervision else None
    optimizer = make_optimizer(field)
    resumed = training is not None
    training = training or {}
    if training.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(training["optimizer"])
        except (ValueError, KeyError):
            pass  # a changed parameter layout: start the moments afresh
        optimiser_moments_like_planes(optimizer, field)
    visited = torch.zeros(field.density_grid.shape, dtype=torch.bool, device=device)
    saved_visited = training.get("visited")
    if saved_visited is not None and saved_visited.shape == visited.shape:
        visited = saved_visited.to(device)
    near = float(default_near(frames) if options.near is None else options.near)
    field.config.near = near
    scaling_distance = options.gradient_scaling * median_camera_distance(frames)
    # counted once on the finest grid of the schedule (~0.1 s per million vertices and camera), resampled
    view_count = views_per_vertex(field, frames, near, finest_density_resolution())
    terms = default_terms(options, depth=depth_targets is not None)
    setup = TrainSetup(out, options, device, dataset, frames, dataset_fingerprint(frames), bank, depth_targets,
                       near, view_count, terms, scaling_distance)
    state = TrainState(field, optimizer, [g["lr"] for g in optimizer.param_groups],
                       int(training.get("step", 0)), float(training.get("elapsed_s", 0.0)), visited,
                       setup.lr_scale_at(field.config.density_resolution), resumed)
    if not resumed:
        with torch.no_grad():  # space too few cameras see starts (and stays) empty
            field.density_grid[state.lr_scale == 0] = -30.0
    return setup, state


# --- per-step stages -----------------------------------------------------------------------------------------


def grow_density(setup: TrainSetup, state: TrainState, resolution: int) -> None:
    """Resample the density grid to ``resolution``^3; the grown grid gets fresh Adam moments."""
    field = state.field
    field.resize_density(resolution)
    state.visited = torch.nn.functional.interpolate(state.visited.float(), size=(resolution,) * 3,
                                                    mode="trilinear", align_corners=True) > 0
    state.lr_scale = setup.lr_scale_at(resolution)
    old = state.optimizer.state_dict()
    state.optimizer = make_optimizer(field)
    for group, old_group in zip(state.optimizer.param_groups, old["param_groups"]):
        group["lr"] = old_group["lr"]
    if state.step >= 16:
        field.update_occupancy(fraction=1.0)


def apply_schedules(setup: TrainSetup, state: TrainState, fraction: float) -> None:
    """Before a step: coarse-to-fine density grid, nerfacc's occupancy refreshes, learning-rate decay."""
    resolution = density_resolution_at(fraction)
    if resolution != state.field.config.density_resolution:
        grow_density(setup, state, resolution)
    # march as finely as the grid is: a coarse grid early on needs (and pays for) fewer samples per ray
    state.field.sample_step_scale = finest_density_resolution() / resolution
    share = occupancy_share_at(state.step)
    if share is not None:
        state.field.update_occupancy(fraction=share)
    for group, base in zip(state.optimizer.param_groups, state.base_lrs):
        group["lr"] = base * learning_rate_factor(fraction)


def optimiser_step(state: TrainState, loss: torch.Tensor) -> None:
    """Backward and Adam step, with DVGO's per-vertex learning rate on the density grid."""
    field = state.field
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if field.density_grid.grad is not None:
        state.visited |= field.density_grid.grad != 0
    density_before = field.density_grid.detach().clone()
    state.optimizer.step()
    with torch.no_grad():  # Adam normalises gradients, so scale the step itself (in place, one pass)
        torch.lerp(density_before, field.density_grid, state.lr_scale, out=field.density_grid.data)


def record_step(setup: TrainSetup, state: TrainState, batch: TrainBatch, render: TrainRender,
                loss: torch.Tensor) -> None:
    """Loss and PSNR (EMA) for the report; the next step's ray count (dynamic batch)."""
    mse = torch.nn.functional.mse_loss(render.rays["rgb"].detach(), batch.target_rgb)
    state.loss, mse = torch.stack([loss.detach(), mse]).tolist()  # one host sync, not two
    psnr = -10 * math.log10(max(mse, 1e-10))
    state.psnr_ema = psnr if math.isnan(state.psnr_ema) else 0.95 * state.psnr_ema + 0.05 * psnr
    # keep the number of samples per step near the target
    n_samples = max(1, len(render.samples))
    samples_per_step, max_rays_per_step = setup.options.batch_sizes(setup.device)
    state.rays_per_step = int(min(max_rays_per_step, max(
        256, state.rays_per_step * samples_per_step / n_samples * 0.5 + state.rays_per_step * 0.5)))


def save_state(setup: TrainSetup, state: TrainState, *, done: bool) -> None:
    save_checkpoint(setup.out, state.field,
                    dataset={"path": str(setup.dataset.path), "fingerprint": setup.fingerprint,
                             "frames": len(setup.frames)},
                    training={"step": state.step, "elapsed_s": state.elapsed, "done": done,
                              "options": {k: v for k, v in asdict(setup.options).items()},
                              "optimizer": state.optimizer.state_dict(), "visited": state.visited})


def finish_field(state: TrainState) -> None:
    field = state.field
    field.sample_step_scale = 1.0
    with torch.no_grad():  # space no training ray reached holds nothing we know of
        field.density_grid[~state.visited] = -30.0
    # a thorough occupancy refresh so rendering skips exactly the empty space (and, with the absolute
    # threshold, the faint haze that training kept marchable)
    field.update_occupancy(fraction=1.0, samples_per_cell=4, decay=0.0, absolute=True)
    field.eval()


# --- the loop ----------------------------------------------------------------------------------------------


def train_field(data: str | Path, out: str | Path, options: TrainOptions,
                progress: Optional[ProgressFn] = None,
                notice: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Train (or resume training) a field on ``data``'s train split and save it to ``out``.

    ``notice`` hears one line before the steps when CUDA marches without nerfacc's kernels (also in the
    result's ``marcher_notice``)."""
    budget_kind, budget = options.budget()
    setup, state = set_up(data, out, options, progress)
    marcher, marcher_notice = choose_backend(setup.device, options.marcher)
    if marcher_notice is not None and notice is not None:
        notice(marcher_notice)
    generator = torch.Generator().manual_seed(options.seed)

    def done_fraction() -> float:
        return min(1.0, (state.step if budget_kind == "steps" else state.elapsed) / budget)

    last_save = time.monotonic()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    total_units = int(budget)
    while done_fraction() < 1.0:
        t0 = time.monotonic()
        fraction = done_fraction()
        apply_schedules(setup, state, fraction)
        batch = draw_batch(setup.bank, setup.depth_targets, state.rays_per_step, generator, setup.device)
        render = render_batch(state.field, batch, near=setup.near, background=options.background,
                              scaling_distance=setup.scaling_distance, backend=marcher)
        loss, _ = total_loss(setup.terms, fraction, batch, render)
        optimiser_step(state, loss)
        record_step(setup, state, batch, render, loss)
        state.step += 1
        state.elapsed += time.monotonic() - t0
        report(progress, min(total_units, int(state.step if budget_kind == "steps" else state.elapsed)),
               total_units, "train")
        if time.monotonic() - last_save > options.checkpoint_every_s:
            save_state(setup, state, done=False)
            last_save = time.monotonic()
    finish_field(state)
    save_state(setup, state, done=True)
    report(progress, total_units, total_units, "train")
    wall = time.monotonic() - wall_start
    threads = torch.get_num_threads() if setup.device.type == "cpu" else 1
    cpu_share = (time.process_time() - cpu_start) / max(1e-9, wall * threads)
    return TrainResult(setup.out, state.step, state.elapsed, state.resumed, setup.device.type, len(setup.frames),
                       state.loss, state.psnr_ema, round(cpu_share, 3), marcher, marcher_notice)
