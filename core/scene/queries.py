"""What the scene holds at a view's pixels: the one interface the label math and snap ask the scene through.

A :class:`SceneQuery` answers, for some pixels of a :class:`~..geometry.view.View`, the z-depth of the surface
along each pixel's ray (and, when it measures one, how confident it is of that surface). Every query works in
the dataset's own frame (``data`` units, the view's ``cam_to_data``); callers scale to world units with
``world_from_data``'s scale. What "the surface" is, is decided here once: for a field, its *median* depth
(where the ray's accumulated weight reaches 1/2), NaN where its opacity stays under 1/2. The bake's occlusion
and snap's surface points both use it.

- :class:`FieldQuery` renders a trained radiance field (``core.render.render_rays``); its weight distribution
  along each ray gives a confidence, and it is also a :class:`DensityQuery` (box-mesh extraction).
- :class:`DepthMapQuery` reads whole z-depth maps per view; :class:`TruthQuery` those of a generated scene
  (``gt/depth/NNNNNN.npy``): it isolates the label math from the field's errors in tests and benchmarks.
- :func:`cached` remembers another query's whole-view answers (benchmarks try many options on one render).

Later research features extend :class:`ScenePixels` with optional fields (class logits, ray samples) and the
``at_pixels`` request with a matching keyword; queries that cannot answer leave them None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

from ..geometry.cameras import camera_rays
from ..geometry.view import View
from ..errors import NeuralLabelError

#: The confidence of a pixel is the share of the ray's weight that lies within this fraction of the reported
#: depth (e.g. 0.02: within 2 %). A crisp opaque surface puts almost all weight there (-> ~1); fog,
#: floaters, or weight split between a glass and what is behind it spread it out (-> low).
CONFIDENCE_WINDOW = 0.02


#: :class:`FieldQuery`'s surface depths and the render output each reads
FIELD_DEPTHS = {"peak": "peak_distance", "median": "median_distance", "expected": "distance"}

#: a ray at least this opaque has a surface (its reported depth); below it the ray sees no surface
SURFACE_OPACITY = 0.5


@dataclass(frozen=True)
class RayWeights:
    """What N pixel rays cross: packed samples sorted by ray, then by depth (data units).

    A sample is a short stretch of its ray with an opacity ``alpha`` (the probability that the ray stops in it,
    given that it got there). A surface from a depth map is one sample with ``alpha`` 1. The label math asks
    from these how much of the ray reaches a depth when some samples are not counted (an annotated object's
    own blurred surface), and how much of its weight lies in a region (a box)."""

    ray: np.ndarray  # (M,) int64: which of the N rays
    z: np.ndarray  # (M,) z-depth of the sample's midpoint
    alpha: np.ndarray  # (M,) in [0, 1]

    def weights(self, n_rays: int) -> np.ndarray:
        """(M,) each sample's volume-rendering weight: ``alpha`` times the transmittance before it."""
        log_pass = np.log1p(-np.minimum(self.alpha, 1.0 - 1e-12))
        before = _exclusive_segment_cumsum(log_pass, self.ray, n_rays)
        return self.alpha * np.exp(before)

    def transmittance(self, n_rays: int, counted: np.ndarray) -> np.ndarray:
        """(N,) the probability that each ray passes all of its ``counted`` samples (M,) bool."""
        log_pass = np.log1p(-np.minimum(self.alpha, 1.0 - 1e-12)) * counted
        return np.exp(np.bincount(self.ray, weights=log_pass, minlength=n_rays))

    def median_z(self, n_rays: int) -> np.ndarray:
        """(N,) z of the sample where the accumulated weight reaches 1/2; NaN where it never does."""
        weights = self.weights(n_rays)
        cum = weights + _exclusive_segment_cumsum(weights, self.ray, n_rays)
        return self._first_z(np.flatnonzero(cum >= 0.5), n_rays)

    def peak_z(self, n_rays: int) -> np.ndarray:
        """(N,) z of each ray's most-weighted sample (the first of equal weights; ``z``: its midpoint); NaN where
        it has no weight. :func:`..render.volrend.peak_distance` takes that sample's start."""
        weights = self.weights(n_rays)
        most = np.zeros(n_rays)
        np.maximum.at(most, self.ray, weights)
        return self._first_z(np.flatnonzero((weights == most[self.ray]) & (weights > 0)), n_rays)

    def _first_z(self, picked: np.ndarray, n_rays: int) -> np.ndarray:
        """(N,) z of each ray's first sample among ``picked`` (sample indices); NaN where none is picked."""
        first = np.full(n_rays, len(self.z))
        np.minimum.at(first, self.ray[picked], picked)
        hit = first < len(self.z)
        out = np.full(n_rays, np.nan)
        out[hit] = self.z[first[hit]]
        return out

    def select(self, keep: np.ndarray) -> "RayWeights":
        return RayWeights(self.ray[keep], self.z[keep], self.alpha[keep])


def concentrated_weight(ray: np.ndarray, z: np.ndarray, weights: np.ndarray, n_rays: int,
                        window: float = CONFIDENCE_WINDOW) -> np.ndarray:
    """(N,) per ray, the part of ``weights`` (samples sorted by ray, then z) within ``window`` (a fraction of the
    depth) of their own weighted median: high for a surface, low for the same weight smeared as fog."""
    if len(ray) == 0:
        return np.zeros(n_rays)
    total = np.bincount(ray, weights=weights, minlength=n_rays)
    cum = weights + _exclusive_segment_cumsum(weights, ray, n_rays)
    reached = np.flatnonzero(cum >= 0.5 * total[ray])
    first = np.full(n_rays, len(z))
    np.minimum.at(first, ray[reached], reached)
    has = first < len(z)
    median = np.full(n_rays, np.nan)
    median[has] = z[first[has]]
    with np.errstate(invalid="ignore"):
        near = np.abs(z - median[ray]) <= window * median[ray]
    return np.bincount(ray[near], weights=weights[near], minlength=n_rays)


def _exclusive_segment_cumsum(values: np.ndarray, ray: np.ndarray, n_rays: int) -> np.ndarray:
    """Per sample, the sum of the values of the samples before it on its ray (samples sorted by ray)."""
    if len(values) == 0:
        return np.zeros(0)
    total = np.cumsum(values)
    starts = np.searchsorted(ray, np.arange(n_rays))  # first sample of each ray
    before_ray = np.concatenate([[0.0], total])[starts]
    return total - values - before_ray[ray]


def samples_from_depth(z_depth: np.ndarray) -> RayWeights:
    """A depth map's surface as ray samples: one opaque sample at each finite depth."""
    hit = np.flatnonzero(np.isfinite(z_depth))
    return RayWeights(hit.astype(np.int64), np.asarray(z_depth, dtype=np.float64)[hit], np.ones(len(hit)))


@dataclass(frozen=True)
class ScenePixels:
    """A query's answer for N pixels of one view, in data units."""

    z_depth: np.ndarray  # (N,) z-depth of the surface along each pixel's ray; NaN = no surface
    confidence: Optional[np.ndarray] = None  # (N,) in [0, 1]; None unless asked for
    samples: Optional[RayWeights] = None  # of the rays asked for with ``samples_for`` (others have none)


@runtime_checkable
class SceneQuery(Protocol):
    """What surface (z-depth) and confidence lie at pixels (rows, cols) of a view (pixel centres)."""

    #: the name a bake records as its depth source (the first manifests' names, so older bakes re-run)
    name: str
    #: True when ``at_pixels(..., confidence=True)`` measures a confidence (a field's weights); a query
    #: without one (true depth) answers 1 wherever it has a surface, and the label math writes no confidence
    measures_confidence: bool
    #: (optional attribute, False when absent) True when ``at_pixels(..., samples_for=mask)`` answers the
    #: rays' samples (:class:`RayWeights`); otherwise the label math treats ``z_depth`` as an opaque surface

    def at_pixels(self, view: View, rows: np.ndarray, cols: np.ndarray, *, confidence: bool = False
                  ) -> ScenePixels:
        ...


@runtime_checkable
class DensityQuery(Protocol):
    """A scene with a volume density (a field): what box-mesh extraction needs."""

    #: the renderer's step length (data units), which sets the rendered surface's density level; None: unknown
    step: Optional[float]

    def density(self, points: np.ndarray) -> np.ndarray:
        """Volume density (per data unit of length) at ``points`` (N, 3), data frame."""
        ...


class DepthMapQuery:
    """Whole z-depth maps per view (``depth_map(view) -> (H, W)``, data units; inf/NaN = nothing hit)."""

    name = "DepthMap"
    measures_confidence = False

    def __init__(self, depth_map: Callable[[View], np.ndarray]) -> None:
        self.depth_map = depth_map
        self._cache: dict[str, np.ndarray] = {}

    def _view_depth(self, view: View) -> np.ndarray:
        if view.name not in self._cache:
            depth = np.asarray(self.depth_map(view)).astype(np.float64)
            if depth.shape != (view.height, view.width):
                raise NeuralLabelError(f"depth map of {view.name} is {depth.shape[1]}x{depth.shape[0]}, the "
                                       f"camera is {view.width}x{view.height}")
            depth[~np.isfinite(depth)] = np.nan
            self._cache = {view.name: depth}  # one view at a time
        return self._cache[view.name]

    def at_pixels(self, view: View, rows: np.ndarray, cols: np.ndarray, *, confidence: bool = False
                  ) -> ScenePixels:
        depth = self._view_depth(view)[rows, cols]
        return ScenePixels(depth, np.isfinite(depth).astype(np.float64) if confidence else None)


class TruthQuery(DepthMapQuery):
    """True z-depth of a generated scene (``SCENE/gt/depth/<image stem>.npy``; inf/NaN = nothing hit)."""

    name = "TruthDepth"

    def __init__(self, scene_dir: str | Path) -> None:
        self.scene_dir = Path(scene_dir)
        self.depth_dir = self.scene_dir / "gt" / "depth"
        if not self.depth_dir.is_dir():
            raise NeuralLabelError(f"{self.scene_dir}: no gt/depth folder (not a generated scene)")
        super().__init__(self._load)

    def _load(self, view: View) -> np.ndarray:
        path = self.depth_dir / f"{view.name}.npy"
        if not path.is_file():
            raise NeuralLabelError(f"{path}: true depth for frame {view.index} does not exist")
        return np.load(path)


class FieldQuery:
    """Surface depth and confidence rendered from a trained radiance field (``core.field.load_field``).

    ``depth``: which single depth stands for a ray's surface (:data:`FIELD_DEPTHS`). "peak" (default): the
    start of the ray's most-weighted sample, where it most likely stops (:func:`..render.volrend.peak_distance`).
    "median": where the ray has stopped with probability 1/2, given that it stops; the light a surface lets
    through stops on the floor or wall behind it, and that weight drags the median behind the surface.
    "expected": the opacity-normalised mean distance (for experiments only: it smears between a floater and
    the surface behind it).
    """

    name = "FieldDepth"
    measures_confidence = True
    gives_samples = True

    def __init__(self, field, device: str = "cpu", depth: str = "peak", chunk: int = 65536) -> None:
        if depth not in FIELD_DEPTHS:
            raise NeuralLabelError(f"field depth must be one of {', '.join(FIELD_DEPTHS)}, got {depth!r}",
                                   field="depth")
        self.field = field
        self.device = device
        self.depth = depth
        self.chunk = chunk

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", **kwargs) -> "FieldQuery":
        from ..field.model import load_field

        return cls(load_field(path, device=device), device=device, **kwargs)

    def at_pixels(self, view: View, rows: np.ndarray, cols: np.ndarray, *, confidence: bool = False,
                  samples_for: Optional[np.ndarray] = None) -> ScenePixels:
        """``samples_for``: (N,) bool, the rays whose samples to return too (one render serves the depth, the
        occlusion and the confidence of a frame). Rays that need neither samples nor a confidence (a depth map's
        pixels outside every decision) are composited as they are marched (:func:`..render.views.render_surface`;
        :func:`..render.views.render_peak` for the peak, which stops each ray once its peak is known)."""
        import torch

        from ..render.views import render_peak, render_rays, render_surface

        n = len(rows)
        if n == 0:
            return ScenePixels(np.zeros(0), np.zeros(0) if confidence else None,
                               None if samples_for is None else samples_from_depth(np.zeros(0)))
        pixels = np.stack([np.asarray(cols) + 0.5, np.asarray(rows) + 0.5], axis=-1)
        origins, directions, z_per_distance = camera_rays(view.intrinsics, view.cam_to_data, pixels)
        rich = np.ones(n, bool) if confidence else (
            np.zeros(n, bool) if samples_for is None else np.asarray(samples_for, bool))
        distance = np.empty(n)
        opacity = np.empty(n)
        weight_near = np.empty(n) if confidence else None
        parts: list[RayWeights] = []
        key = FIELD_DEPTHS[self.depth]
        tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        with torch.no_grad():
            plain = np.flatnonzero(~rich)
            if len(plain) and key == "peak_distance":  # marched only until the peak is known
                peak = render_peak(self.field, tensor(origins[plain]), tensor(directions[plain]),
                                   min_opacity=SURFACE_OPACITY).double().cpu().numpy()
                distance[plain] = peak
                opacity[plain] = np.where(np.isfinite(peak), 1.0, 0.0)
            elif len(plain):
                out = render_surface(self.field, tensor(origins[plain]), tensor(directions[plain]))
                distance[plain] = out[key].double().cpu().numpy()
                opacity[plain] = out["opacity"].double().cpu().numpy()
            rich_ids = np.flatnonzero(rich)
            for start in range(0, len(rich_ids), self.chunk):
                ids = rich_ids[start:start + self.chunk]
                out = render_rays(self.field, tensor(origins[ids]), tensor(directions[ids]), depth_only=True,
                                  return_samples=True)
                distance[ids] = out[key].double().cpu().numpy()
                opacity[ids] = out["opacity"].double().cpu().numpy()
                if confidence:
                    weight_near[ids] = weight_near_surface(out, out[key].double(), len(ids)).cpu().numpy()
                if samples_for is not None:
                    parts.append(_field_samples(out, ids, z_per_distance, samples_for))
        z = distance * z_per_distance
        z[opacity < SURFACE_OPACITY] = np.nan
        ray_weights = None
        if samples_for is not None:
            ray_weights = RayWeights(*(np.concatenate([getattr(p, k) for p in parts]) if parts else
                                       np.zeros(0, dtype=np.int64 if k == "ray" else np.float64)
                                       for k in ("ray", "z", "alpha")))
        return ScenePixels(z, weight_near, ray_weights)

    @property
    def step(self) -> Optional[float]:
        """The field renderer's step length (data units), which sets the surface's density level."""
        step = getattr(self.field, "render_step_size", None)
        return float(step) if step else None

    def density(self, points: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """The field's volume density (per data unit of length) at ``points`` (N, 3), data frame."""
        import torch

        out = np.empty(len(points))
        with torch.no_grad():
            for start in range(0, len(points), chunk):
                p = torch.as_tensor(points[start:start + chunk], dtype=torch.float32, device=self.device)
                out[start:start + chunk] = self.field.density(p).reshape(-1).double().cpu().numpy()
        return out


def _field_samples(out: dict, ids: np.ndarray, z_per_distance: np.ndarray, keep_rays: np.ndarray) -> RayWeights:
    """The rendered samples of the rays ``ids`` (increasing: the samples stay sorted by ray) as
    :class:`RayWeights` (z-depth), only of the rays in ``keep_rays``. A sample's opacity is its weight over the
    transmittance before it (the renderer keeps only samples with weight, which are the ones that occlude)."""
    chunk_ray = out["ray_indices"].long().cpu().numpy()
    ray = ids[chunk_ray]
    mid = (0.5 * (out["t_starts"].reshape(-1) + out["t_ends"].reshape(-1))).double().cpu().numpy()
    weights = out["weights"].reshape(-1).double().cpu().numpy()
    n_chunk = int(chunk_ray.max()) + 1 if len(chunk_ray) else 0
    passed = 1.0 - _exclusive_segment_cumsum(weights, chunk_ray, n_chunk)
    alpha = np.clip(weights / np.maximum(passed, 1e-12), 0.0, 1.0)
    keep = keep_rays[ray]
    return RayWeights(ray[keep].astype(np.int64), (mid * z_per_distance[ray])[keep], alpha[keep])


class DensityMarchQuery:
    """A scene given by a volume density (``density(points_data (N, 3)) -> (N,)``), marched in fixed steps
    from ``near`` to ``far`` along each pixel's ray: an analytic stand-in for a field (tests, benchmarks),
    answering like :class:`FieldQuery` (peak depth, confidence, samples, density)."""

    name = "DensityMarch"
    measures_confidence = True
    gives_samples = True

    def __init__(self, density: Callable[[np.ndarray], np.ndarray], *, step: float, near: float, far: float
                 ) -> None:
        self._density = density
        self.step = float(step)
        self.near, self.far = float(near), float(far)

    def density(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(self._density(points), dtype=np.float64)

    def at_pixels(self, view: View, rows: np.ndarray, cols: np.ndarray, *, confidence: bool = False,
                  samples_for: Optional[np.ndarray] = None) -> ScenePixels:
        n = len(rows)
        pixels = np.stack([np.asarray(cols) + 0.5, np.asarray(rows) + 0.5], axis=-1)
        origins, directions, z_per_distance = camera_rays(view.intrinsics, view.cam_to_data, pixels)
        t = np.arange(self.near + self.step / 2, self.far, self.step)
        points = origins[:, None, :] + directions[:, None, :] * t[None, :, None]
        sigma = np.maximum(self.density(points.reshape(-1, 3)), 0.0)
        alpha = 1.0 - np.exp(-sigma * self.step)
        ray = np.repeat(np.arange(n, dtype=np.int64), len(t))
        z = (t[None, :] * z_per_distance[:, None]).reshape(-1)
        weights = RayWeights(ray, z, alpha)
        keep = alpha > 0
        surface = weights.select(keep).peak_z(n) - 0.5 * self.step * z_per_distance  # the peak's start, as a field's
        surface[weights.transmittance(n, keep) > 1.0 - SURFACE_OPACITY] = np.nan  # as FieldQuery: no surface
        near_weight = None
        if confidence:
            w = weights.weights(n)
            with np.errstate(invalid="ignore"):
                near = np.abs(z - surface[ray]) <= CONFIDENCE_WINDOW * surface[ray]
            near_weight = np.clip(np.bincount(ray, weights=np.where(near, w, 0.0), minlength=n), 0.0, 1.0)
        samples = None
        if samples_for is not None:
            samples = weights.select(keep & np.asarray(samples_for)[ray])
        return ScenePixels(surface, near_weight, samples)


def weight_near_surface(out: dict, distance, n_rays: int):
    """Per ray: the weight whose sample lies within ``CONFIDENCE_WINDOW`` of ``distance`` (N,), the distance
    reported as the ray's surface."""
    import torch

    ray = out["ray_indices"].long()
    mid = 0.5 * (out["t_starts"].reshape(-1) + out["t_ends"].reshape(-1)).double()
    weights = out["weights"].reshape(-1).double()
    centre = distance[ray]
    near = (mid - centre).abs() <= CONFIDENCE_WINDOW * centre
    mass = torch.zeros(n_rays, dtype=torch.float64, device=weights.device)
    mass.index_add_(0, ray, torch.where(near, weights, torch.zeros_like(weights)))
    return mass.clamp(0.0, 1.0)


class CachedQuery:
    """Remembers another query's whole-view surface (and confidence) per view: for trying several label
    options on the same views (benchmarks) without rendering the field again. Build it with :func:`cached`."""

    def __init__(self, scene: SceneQuery) -> None:
        self.scene = scene
        self.name = scene.name
        self.measures_confidence = scene.measures_confidence
        self._views: dict[int, ScenePixels] = {}

    def at_pixels(self, view: View, rows: np.ndarray, cols: np.ndarray, *, confidence: bool = False
                  ) -> ScenePixels:
        cached = self._views.get(view.index)
        h, w = view.height, view.width
        if cached is None and len(rows) < h * w:  # a part of a view not seen whole yet: ask the scene
            return self.scene.at_pixels(view, rows, cols, confidence=confidence)
        if cached is None or (confidence and cached.confidence is None):
            all_rows, all_cols = np.divmod(np.arange(h * w), w)
            whole = self.scene.at_pixels(view, all_rows, all_cols, confidence=confidence)
            cached = ScenePixels(whole.z_depth.reshape(h, w),
                                 None if whole.confidence is None else whole.confidence.reshape(h, w))
            self._views[view.index] = cached
        return ScenePixels(cached.z_depth[rows, cols], cached.confidence[rows, cols] if confidence else None)


class CachedDensityQuery(CachedQuery):
    """A :class:`CachedQuery` of a scene with a density: the density is passed through (it is not cached)."""

    def __init__(self, scene: SceneQuery) -> None:
        if not isinstance(scene, DensityQuery):
            raise NeuralLabelError(f"{scene.name} has no density to pass through")
        super().__init__(scene)
        self.step = scene.step

    def density(self, points: np.ndarray) -> np.ndarray:
        return self.scene.density(points)


def cached(scene: SceneQuery) -> CachedQuery:
    """``scene`` behind a per-view cache; still a :class:`DensityQuery` when ``scene`` is one."""
    return CachedDensityQuery(scene) if isinstance(scene, DensityQuery) else CachedQuery(scene)


# The first name of TruthQuery, for tests outside this change that still import it.
