"""The radiance field: density from a dense voxel grid, colour from multi-scale tri-planes + a tiny MLP.

Encoding chosen by measurement on a 2-core CPU (``scripts/bench_field.py`` records the numbers): trilinear
``F.grid_sample`` on a one-channel 3D grid evaluates ~10 M points/s forward, tri-planes (3 x 512^2 x 8)
~10 M points/s, whereas a gather-based multi-resolution hash table (Instant-NGP without tiny-cuda-nn) runs
at ~0.2 M points/s. So density, which every sample needs, is a dense grid (DVGO-style, post-activation
softplus so surfaces are sharper than a voxel); colour, needed only at visible samples, is the Hadamard
product of tri-plane features at two scales (K-Planes) fed with the view direction's spherical harmonics
into a one-hidden-layer MLP.

Space: a bounded scene lives in ``roi_aabb`` (``levels = 1``). An open scene (``levels > 1``) adds nested
boxes of 2x, 4x ... the size for the background; the field contracts everything outside ``roi_aabb``
(mip-NeRF 360 style, L-inf norm) so the grids keep their detail inside. ``aabb`` is the outermost box.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .occupancy import OccupancyGrid, level_aabbs

#: the coordinate pair each tri-plane looks up: plane p is indexed [H = second, W = first]
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
#: points per chunk of a render's colour evaluation (:meth:`Field.rgb` without autograd)
RGB_CHUNK = 1 << 16


@dataclass
class FieldConfig:
    """Everything needed to rebuild a field's modules (stored in the checkpoint as plain JSON values)."""

    roi_aabb: list[list[float]]  # [[xmin, ymin, zmin], [xmax, ymax, zmax]] of the detailed region
    levels: int = 1  # nested boxes; > 1 for open scenes (background contracted)
    density_resolution: int = 160  # current density grid size (grows during training)
    plane_resolutions: tuple[int, ...] = (128, 512)
    plane_features: int = 8
    hidden: int = 64
    occupancy_resolution: int = 128
    steps_per_roi: int = 512  # render step = roi diagonal / steps_per_roi (~ half a voxel at 160^3)
    alpha_init: float = 1e-3  # opacity of one step before training
    alpha_thre: float = 1e-3  # samples with lower opacity are skipped (nerfacc's alpha_thre)
    early_stop_eps: float = 1e-4  # rays stop when transmittance drops below this
    background: tuple[float, float, float] = (0.5, 0.5, 0.5)  # colour beyond the field (learned when levels > 1)
    near: float = 0.0  # training rays started this far from the camera: closer than that is unknown space
    # Steps grow as distance x cone_angle past background_from (and past step / cone_angle), 0: uniform
    cone_angle: float = 0.0
    background_from: float = 0.0
    # density outside roi_aabb is per contracted length (scaled by the contraction's radial derivative), so a
    # far voxel, which spans metres, is no quicker to turn opaque than one on the subject (False: fields
    # trained before this existed)
    contracted_density: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FieldConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            from ..errors import NeuralLabelError

            raise NeuralLabelError(f"field config has unknown keys: {', '.join(sorted(unknown))}")
        values = dict(data)
        for key in ("plane_resolutions", "background"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def sh_basis_deg2(directions: Tensor) -> Tensor:
    """(N, 9) real spherical harmonics up to degree 2 of unit directions."""
    x, y, z = directions.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479),
        -0.48860251 * y, 0.48860251 * z, -0.48860251 * x,
        1.09254843 * x * y, -1.09254843 * y * z, 0.31539157 * (2 * z * z - x * x - y * y),
        -1.09254843 * x * z, 0.54627421 * (x * x - y * y),
    ], dim=-1)


class Field(torch.nn.Module):
    """Density grid + tri-plane colour field with its occupancy grid. ``aabb``: (2, 3) world bounds."""

    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        self.config = config
        roi = torch.tensor(config.roi_aabb, dtype=torch.float32).reshape(2, 3)
        outer = level_aabbs(roi.reshape(6), config.levels)[-1]
        self.register_buffer("aabb", outer.reshape(2, 3).clone())
        self.register_buffer("roi_centre", (roi[0] + roi[1]) / 2)
        self.register_buffer("roi_half", (roi[1] - roi[0]) / 2)
        r = config.density_resolution
        self.density_grid = torch.nn.Parameter(torch.zeros(1, 1, r, r, r))
        # channel-last, (3, H, W, C): a point's features side by side, as the CPU kernels read and write them
        self.planes = torch.nn.ParameterList([
            torch.nn.Parameter(torch.empty(3, pr, pr, config.plane_features).uniform_(0.1, 0.5))
            for pr in config.plane_resolutions])
        self._register_load_state_dict_pre_hook(_planes_channel_last, with_module=True)
        n_features = config.plane_features * len(config.plane_resolutions)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(n_features + 9, config.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(config.hidden, 3))
        self.occupancy = OccupancyGrid(roi.reshape(6), config.occupancy_resolution, config.levels)
        # colour where rays leave the field (sky, far background); learned
        self.background_rgb = torch.nn.Parameter(torch.tensor(config.background, dtype=torch.float32))
        # marching step / render_step_size: > 1 while training on a coarse density grid (set by the trainer;
        # a saved field renders at 1)
        self.sample_step_scale = 1.0

    # --- geometry of the field -------------------------------------------------------------------------

    @property
    def render_step_size(self) -> float:
        """The step that defines density units (``alpha_init``) and the occupancy threshold."""
        roi = self.config.roi_aabb
        diag = math.dist(roi[0], roi[1])
        return diag / self.config.steps_per_roi

    @property
    def sample_step_size(self) -> float:
        """The marchers' step along rays in the detailed region."""
        return self.render_step_size * self.sample_step_scale

    @property
    def density_scale(self) -> float:
        """Density is stored per grid voxel of the roi at 128^3 so that grid values stay O(1..10)."""
        size = float((2 * self.roi_half).max())
        return 128.0 / size

    @property
    def density_shift(self) -> float:
        # softplus(shift) * scale * step = -log(1 - alpha_init)
        target = -math.log1p(-self.config.alpha_init) / (self.density_scale * self.render_step_size)
        return math.log(math.expm1(target))

    def normalize(self, points: Tensor) -> Tensor:
        """World points -> grid coordinates in [-1, 1]^3 (contracted outside the roi when levels > 1)."""
        return self.contract(points)[0]

    def contract(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Grid coordinates of world points and their L-inf norm in roi half-widths (N,) (1 inside)."""
        if _compiled_lookup(self.roi_centre, points):
            return compiled_kernels().contract_points(points, self.roi_centre, self.roi_half, self.config.levels > 1)
        u = (points - self.roi_centre) / self.roi_half
        if self.config.levels == 1:
            return u, torch.ones_like(u[:, 0])
        norm = u.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)
        contracted = torch.where(norm <= 1.0, u, (2.0 - 1.0 / norm) * (u / norm))
        return contracted / 2.0, norm.squeeze(-1).clamp_min(1.0)

    def uncontract(self, coords: Tensor) -> Tensor:
        """World points at grid coordinates (N, 3) in [-1, 1]^3: the inverse of :meth:`contract` (the grid's
        outermost shell, infinitely far, is clamped to 1000 region half-widths)."""
        if self.config.levels == 1:
            return self.roi_centre + coords * self.roi_half
        contracted = coords * 2.0
        norm = contracted.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)
        u = torch.where(norm <= 1.0, contracted, contracted / norm / (2.0 - norm.clamp_max(1.999)))
        return self.roi_centre + u * self.roi_half

    # --- evaluation ------------------------------------------------------------------------------------

    def density_from_normalized(self, coords: Tensor) -> Tensor:
        if _compiled_lookup(self.density_grid, coords):
            raw = compiled_kernels().trilinear(self.density_grid[0, 0], coords)
        else:
            raw = F.grid_sample(self.density_grid, coords.view(1, 1, 1, -1, 3)[..., [2, 1, 0]],
                                mode="bilinear", padding_mode="border", align_corners=True).view(-1)
        return F.softplus(raw + self.density_shift) * self.density_scale

    def density(self, points: Tensor) -> Tensor:
        """(N,) density (1 / world unit) at world points (N, 3)."""
        coords, norm = self.contract(points)
        if not self.config.contracted_density:
            return self.density_from_normalized(coords)
        # d(contracted norm)/d(norm) = 1 / norm^2 outside the region: world density per contracted length
        return self.density_from_normalized(coords) / norm ** 2

    def rgb(self, points: Tensor, directions: Tensor) -> Tensor:
        """(N, 3) colour in [0, 1] at world points seen along unit ``directions``."""
        if not torch.is_grad_enabled() and len(points) > RGB_CHUNK:
            # rendering: in chunks, so the (N, hidden) activations stay small enough to live in the cache (the
            # same bits: each row's products do not depend on the other rows)
            out = torch.empty(len(points), 3, device=points.device)
            for begin in range(0, len(points), RGB_CHUNK):
                end = begin + RGB_CHUNK
                out[begin:end] = self._rgb(points[begin:end], directions[begin:end])
            return out
        return self._rgb(points, directions)

    def _rgb(self, points: Tensor, directions: Tensor) -> Tensor:
        coords = self.normalize(points)
        if _compiled_lookup(self.planes[0], coords):
            kernels = compiled_kernels()
            if torch.is_grad_enabled() and self.planes[0].requires_grad:
                features = [kernels.triplane_features(plane, coords) for plane in self.planes]
            else:  # rendering: the planes' own memory, no autograd
                features = [kernels.triplane_lookup(plane.detach().numpy(), coords) for plane in self.planes]
        else:
            plane_coords = torch.stack([coords[:, list(axes)] for axes in PLANE_AXES]).unsqueeze(1)
            features = []
            for plane in self.planes:
                sampled = F.grid_sample(plane.permute(0, 3, 1, 2), plane_coords, mode="bilinear",
                                        padding_mode="border", align_corners=True)  # (3, C, 1, N)
                features.append((sampled[0] * sampled[1] * sampled[2]).squeeze(1).t())
        compiled = _compiled_lookup(self.roi_centre, directions)
        sh = compiled_kernels().sh_deg2(directions) if compiled else sh_basis_deg2(directions)
        h = torch.cat(features + [sh], dim=-1)
        if torch.is_grad_enabled():
            return torch.sigmoid(self.mlp(h))
        # rendering: the same products, activations in place (no intermediate copies)
        first, last = self.mlp[0], self.mlp[2]
        hidden = torch.addmm(first.bias, h, first.weight.t()).relu_()
        return torch.addmm(last.bias, hidden, last.weight.t()).sigmoid_()

    def forward(self, points: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        return self.rgb(points, directions), self.density(points)

    # --- training helpers ------------------------------------------------------------------------------

    @torch.no_grad()
    def resize_density(self, resolution: int) -> None:
        """Trilinearly resample the density grid to ``resolution``^3 (coarse-to-fine training)."""
        grid = F.interpolate(self.density_grid.data, size=(resolution,) * 3, mode="trilinear",
                             align_corners=True)
        self.density_grid = torch.nn.Parameter(grid)
        self.config.density_resolution = resolution

    @torch.no_grad()
    def update_occupancy(self, **kwargs: Any) -> None:
        """Refresh the occupancy grid (nerfacc's EMA rule). With one level the density grid maps linearly
        onto the occupancy grid, so each cell gets the exact maximum density inside it (trilinear
        interpolation peaks at grid vertices); otherwise density is sampled at random points per cell."""
        if self.config.levels == 1:
            values = self.cell_max_density() * self.render_step_size
            self.occupancy.update_from_cell_values(
                values[None], **{k: v for k, v in kwargs.items() if k in ("threshold", "decay", "absolute")})
        else:
            self.occupancy.update(self.density, self.render_step_size, **kwargs)

    @torch.no_grad()
    def cell_max_density(self) -> Tensor:
        """(R, R, R) maximum density inside each occupancy cell (one level only)."""
        raw = self.density_grid[0, 0]
        vertices = raw.shape[0]
        cells = self.occupancy.resolution
        corner_max = F.max_pool3d(raw[None, None], kernel_size=2, stride=1)[0, 0]  # per density cell
        n = vertices - 1
        j = torch.arange(cells, device=raw.device)
        lo = torch.div(j * n, cells, rounding_mode="floor")
        hi = torch.div((j + 1) * n + cells - 1, cells, rounding_mode="floor") - 1
        hi = torch.maximum(hi, lo).clamp_max(n - 1)
        width = int((hi - lo).max()) + 1
        result = corner_max
        for axis in range(3):
            best = None
            for t in range(width):
                index = torch.minimum(lo + t, hi)
                part = result.index_select(axis, index)
                best = part if best is None else torch.maximum(best, part)
            result = best
        return F.softplus(result + self.density_shift) * self.density_scale


def from_channel_first(value: Tensor, plane: Tensor) -> Tensor:
    """``value`` laid out as the channel-last ``plane`` (3, H, W, C) where it holds a plane of that size channel
    first, (3, C, H, W), as checkpoints (planes and their Adam moments) from before the planes were stored
    channel-last do; otherwise ``value`` itself."""
    if value.dim() == 4 and value.shape != plane.shape and value.permute(0, 2, 3, 1).shape == plane.shape:
        return value.permute(0, 2, 3, 1).contiguous()
    return value


def _planes_channel_last(field: "Field", state_dict: dict, prefix: str, *args: Any) -> None:
    """Load hook: older checkpoints' planes (:func:`from_channel_first`)."""
    for i, plane in enumerate(field.planes):
        key = f"{prefix}planes.{i}"
        if key in state_dict:
            state_dict[key] = from_channel_first(state_dict[key], plane)


@functools.lru_cache(maxsize=None)
def compiled_kernels():
    """:mod:`.lookups_numba`, or None where numba is not installed (the GPU path does not need it)."""
    try:
        from . import lookups_numba
    except ImportError:
        return None
    return lookups_numba


def _compiled_lookup(values: Tensor, coords: Tensor) -> bool:
    """The compiled CPU kernels serve float32 CPU grids at positions that need no gradient (all of
    NeuralLabel's); anything else goes through torch (``grid_sample``)."""
    return (values.device.type == "cpu" and coords.device.type == "cpu" and values.dtype == torch.float32
            and coords.dtype == torch.float32 and not coords.requires_grad and compiled_kernels() is not None)


def load_field(path: str | Path, device: str = "cpu") -> Field:
    """Load a field checkpoint written by :func:`.checkpoint.save_checkpoint` onto ``device``.

    Raises :class:`~.errors.NeuralLabelError` for a missing file, another format or another version.
    """
    from .checkpoint import load_checkpoint

    return load_checkpoint(path, device=device).field
