"""Synthetic views: cameras with no photo (:meth:`~..geometry.view.View.synthetic`), their RGB rendered from
the field, their labels baked by the ordinary bake (:mod:`..pipeline.bake`) into a BOP scene of their own.

One render per view gives RGB, the peak-depth surface and its confidence (:class:`RenderedQuery`): the
labeler's depth source and the writers' image come from it. A trust gate drops (or, with ``keep_untrusted``,
only flags) views whose mean field confidence over object pixels is below ``min_confidence``; cameras inside
geometry (opaque field density at the camera, or inside an object's box) are dropped before rendering.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.cameras import Intrinsics, camera_rays
from ..geometry.transforms import Similarity, apply_points, rigid_inverse
from ..geometry.view import View
from ..io.meshes import load_mesh
from ..labels.frame import FrameLabels, make_label_object
from ..scene.queries import ScenePixels
from .distribution import Draws
from .poses import orbit_pose

#: the BOP scene id of synthetic views (the photos' bakes use 0)
SYNTH_SCENE = 1


@dataclass(frozen=True)
class Rendered:
    rgb: np.ndarray  # (H, W, 3) uint8
    z_depth: np.ndarray  # (H, W) peak z-depth (FieldQuery's default surface), data units, NaN where opacity < 1/2
    confidence: np.ndarray  # (H, W) in [0, 1]
    opacity: np.ndarray  # (H, W)


class RenderedQuery:
    """A field as the bake's depth source that renders each view whole, once (RGB, surface, confidence) and
    answers every later question about that view from the render (one view held at a time)."""

    name = "FieldRender"
    measures_confidence = True

    def __init__(self, field, device: str = "cpu", chunk: int = 65536) -> None:
        from ..scene.queries import FieldQuery

        self.field = field
        self._density = FieldQuery(field, device=device)
        self.device = device
        self.chunk = chunk
        self._held: tuple[Optional[View], Optional[Rendered]] = (None, None)

    @property
    def step(self) -> Optional[float]:
        return self._density.step

    def density(self, points: np.ndarray) -> np.ndarray:
        return self._density.density(points)

    def render(self, view: View) -> Rendered:
        held_view, held = self._held
        if held_view is view:
            return held
        import torch

        from ..render.views import render_rays
        from ..scene.queries import weight_near_surface

        origins, directions, z_per_distance = camera_rays(view.intrinsics, view.cam_to_data)
        n = len(origins)
        rgb, z, conf, opacity = np.empty((n, 3)), np.empty(n), np.empty(n), np.empty(n)
        with torch.no_grad():
            for start in range(0, n, self.chunk):
                sl = slice(start, start + self.chunk)
                o = torch.as_tensor(origins[sl], dtype=torch.float32, device=self.device)
                d = torch.as_tensor(directions[sl], dtype=torch.float32, device=self.device)
                out = render_rays(self.field, o, d, return_samples=True)
                opacity[sl] = out["opacity"].double().cpu().numpy()
                rgb[sl] = out["rgb"].double().cpu().numpy()
                z[sl] = out["peak_distance"].double().cpu().numpy() * z_per_distance[sl]
                conf[sl] = weight_near_surface(out, out["peak_distance"].double(), len(o)).cpu().numpy()
        z[opacity < 0.5] = np.nan
        shape = (view.height, view.width)
        rgb8 = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8).reshape(shape + (3,))
        rendered = Rendered(rgb8, z.reshape(shape), conf.reshape(shape), opacity.reshape(shape))
        self._held = (view, rendered)
        return rendered

    def rgb(self, view: View) -> np.ndarray:
        return self.render(view).rgb

    def at_pixels(self, view: View, rows: np.ndarray, cols: np.ndarray, *, confidence: bool = False
                  ) -> ScenePixels:
        r = self.render(view)
        return ScenePixels(r.z_depth[rows, cols], r.confidence[rows, cols] if confidence else None)


def synthetic_intrinsics(base: Intrinsics, size: Optional[tuple[int, int]] = None) -> Intrinsics:
    """A pinhole camera like ``base`` (its focal length and centre; no distortion: a render needs none),
    scaled to ``size`` (width, height) when given."""
    width, height = size or (base.width, base.height)
    sx, sy = width / base.width, height / base.height
    return Intrinsics(int(width), int(height), base.fx * sx, base.fy * sy, base.cx * sx, base.cy * sy)


def synthetic_views(draws: Draws, centre: np.ndarray, intrinsics: Intrinsics,
                    world_from_data: Similarity) -> dict[int, View]:
    """The views of ``draws`` around ``centre`` (world frame), numbered from 0."""
    views = {}
    for i, (az, el, dist) in enumerate(draws.coords):
        pose = orbit_pose(centre, float(az), float(el), float(dist))
        views[i] = View.synthetic(i, intrinsics, pose, world_from_data, name=f"synth_{i:06d}")
    return views


def opaque_density(step: Optional[float]) -> float:
    """The density whose one render step is at least half opaque (alpha = 1 - exp(-sigma * step) >= 1/2)."""
    return math.log(2.0) / (step or 0.01)


def inside_geometry(views: dict[int, View], spec, density: Optional[Callable[[np.ndarray], np.ndarray]],
                    step: Optional[float]) -> list[int]:
    """The views whose camera sits inside geometry: opaque field density at the camera centre, or inside
    an annotated object's bounding box."""
    centres_world = np.array([views[i].cam_to_world[:3, 3] for i in sorted(views)])
    centres_data = np.array([views[i].cam_to_data[:3, 3] for i in sorted(views)])
    inside = np.zeros(len(views), dtype=bool)
    if density is not None and len(views):
        inside |= density(centres_data) >= opaque_density(step)
    for obj in spec.objects:
        if obj.kind == "mesh" and obj.mesh is None:
            obj.mesh = load_mesh(obj.mesh_path, what=f"object {obj.name!r}: mesh")
        lo_hi = make_label_object(obj, obj.mesh, None).local_corners
        local = apply_points(rigid_inverse(obj.pose), centres_world)
        inside |= np.all((local >= lo_hi.min(axis=0)) & (local <= lo_hi.max(axis=0)), axis=1)
    return [i for i, flag in zip(sorted(views), inside) if flag]


@dataclass
class Gate:
    """The trust gate's threshold and counts; ``keep`` is the bake's per-view decision."""

    rendered: Callable[[View], Rendered]
    min_confidence: float = 0.5
    drop: bool = True  # False: keep untrusted views, only flag them
    untrusted: list[int] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)  # no annotated object visible: kept as negatives
    mean_confidence: dict[int, float] = field(default_factory=dict)

    def keep(self, view: View, labels: FrameLabels) -> bool:
        objects = labels.instance > 0
        if not objects.any():
            self.negatives.append(view.index)
            return True
        conf = self.rendered(view).confidence[objects]
        score = float(np.nanmean(conf)) if np.isfinite(conf).any() else 0.0
        self.mean_confidence[view.index] = score
        if score < self.min_confidence:
            self.untrusted.append(view.index)
            return not self.drop
        return True


def draws_fingerprint(draws: Draws, intrinsics: Intrinsics) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(draws.coords, dtype=np.float64).tobytes())
    digest.update(repr(dataclasses.astuple(intrinsics)).encode())
    return digest.hexdigest()[:16]


def transforms_json(views: dict[int, View], draws: Draws, world_from_data: Similarity, *, kept: list[int],
                    flagged: list[int], with_rgb: bool = True) -> dict:
    """``DIR/synth/transforms.json``: the synthetic cameras, OpenGL camera-to-data poses (the dataset's own
    convention and frame, as its transforms.json), nerfstudio intrinsics (pixel centre at 0.5); ``file_path``
    is the view's BOP render (``with_rgb``: the bake wrote BOP), else None."""
    frames = []
    for i in sorted(views):
        v = views[i]
        k = v.intrinsics
        rgb = f"../bop/train/{SYNTH_SCENE:06d}/rgb/{i:06d}.png" if with_rgb and i in kept else None
        frames.append({"file_path": rgb, "name": v.name,
                       "fl_x": k.fx, "fl_y": k.fy, "cx": k.cx, "cy": k.cy, "w": k.width, "h": k.height,
                       "transform_matrix": np.asarray(v.cam_to_data).tolist(),
                       "azimuth": float(draws.coords[i, 0]), "elevation": float(draws.coords[i, 1]),
                       "distance": float(draws.coords[i, 2]), "bin": int(draws.bins[i]),
                       "baked": i in kept, "untrusted": i in flagged})
    return {"camera_model": "PINHOLE", "world_from_data": np.asarray(world_from_data.matrix).tolist(),
            "synthetic": True, "frames": frames}


@dataclass(frozen=True)
class SynthOptions:
    """What ``neurallabel synth`` makes: ``views`` draws from the bins (None ranges: the training hull)."""

    views: int = 100
    azimuth: Optional[object] = None  # a poses.Range, "A0:A1:K" or None
    elevation: Optional[object] = None
    distance: Optional[object] = None
    weights: Optional[str] = None  # "uniform", a JSON file of weights, or a psi.json
    logits: Optional[tuple[float, ...]] = None  # the bins' logits themselves (an optimised distribution)
    tau: float = 0.1
    seed: int = 0
    allow_extrapolation: bool = False
    size: Optional[tuple[int, int]] = None  # (width, height); None: the dataset's first camera
    min_confidence: float = 0.5
    keep_untrusted: bool = False  # flag untrusted views instead of dropping them


@dataclass
class SynthPlan:
    """The distribution of a synth run, in the world frame around the training cameras' orbit."""

    orbit: object  # poses.Orbit
    bins: object  # distribution.Bins
    logits: np.ndarray
    clamped: list[str]  # what was cut to the training hull (one warning line)


def plan_distribution(dataset, world_from_data: Similarity, options: SynthOptions) -> SynthPlan:
    """The bins (given ranges, or the hull of the training cameras), clamped to the hull unless
    ``allow_extrapolation``, and their logits (``weights``)."""
    from .distribution import Bins, check_tau, load_weights
    from .poses import clamp_to_hull, parse_range, training_orbit

    check_tau(options.tau)
    train = dataset.split("train") or dataset.frames
    orbit = training_orbit(train, world_from_data)
    defaults = orbit.default_ranges()
    ranges = tuple(parse_range(getattr(options, name), name) or default
                   for name, default in zip(("azimuth", "elevation", "distance"), defaults))
    clamped: list[str] = []
    if not options.allow_extrapolation:
        ranges, clamped = clamp_to_hull(ranges, orbit)
    bins = Bins(ranges)
    if options.logits is not None:
        logits = np.asarray(options.logits, dtype=np.float64)
        if logits.shape != (bins.count,) or not np.all(np.isfinite(logits)):
            raise NeuralLabelError(f"logits: {logits.size} finite values needed for {bins.count} bins",
                                   field="weights")
    else:
        logits = load_weights(options.weights, bins)
    return SynthPlan(orbit, bins, logits, clamped)


@dataclass(frozen=True)
class DrawnViews:
    """A run's synthetic cameras as drawn, before anything is rendered (the add-on shows them)."""

    plan: SynthPlan
    draws: Draws
    intrinsics: Intrinsics
    views: dict[int, View]
    extrapolated: np.ndarray  # (N,) bool: outside the training cameras' hull

    def to_json(self) -> dict:
        """Per view its world and data poses (OpenGL camera-to-world), spherical coordinates, bin and whether
        it is extrapolated; the shared intrinsics (nerfstudio: pixel centre at 0.5), orbit and ranges."""
        k = self.intrinsics
        views = [{"index": i, "name": v.name, "cam_to_world": np.asarray(v.cam_to_world).tolist(),
                  "cam_to_data": np.asarray(v.cam_to_data).tolist(), "bin": int(self.draws.bins[i]),
                  "azimuth": float(self.draws.coords[i, 0]), "elevation": float(self.draws.coords[i, 1]),
                  "distance": float(self.draws.coords[i, 2]), "extrapolated": bool(self.extrapolated[i])}
                 for i, v in sorted(self.views.items())]
        return {"views": views, "intrinsics": {"w": k.width, "h": k.height, "fl_x": k.fx, "fl_y": k.fy,
                                               "cx": k.cx, "cy": k.cy},
                "orbit": self.plan.orbit.to_json(), "ranges": self.plan.bins.to_json(),
                "clamped": self.plan.clamped, "extrapolated": int(self.extrapolated.sum())}


def draw_views(dataset, world_from_data: Similarity, options: SynthOptions,
               notice: Optional[Callable[[str], None]] = None) -> DrawnViews:
    """Draw ``options.views`` cameras (world frame) from the run's distribution: the one path from options to
    poses, for the bake and for showing the cameras. ``notice`` hears what was clamped to the hull."""
    from .distribution import sample
    from .poses import outside_hull

    if options.views < 1:
        raise NeuralLabelError(f"views {options.views}: need at least 1", field="views")
    plan = plan_distribution(dataset, world_from_data, options)
    if plan.clamped and notice is not None:
        notice(f"warning: clamped to the training cameras' hull: {'; '.join(plan.clamped)} "
               f"(--allow-extrapolation keeps them)")
    draws = sample(plan.logits, plan.bins, options.views, np.random.default_rng(options.seed), options.tau)
    intrinsics = synthetic_intrinsics(dataset.frames[0].intrinsics, options.size)
    views = synthetic_views(draws, plan.orbit.centre, intrinsics, world_from_data)
    return DrawnViews(plan, draws, intrinsics, views, outside_hull(draws.coords, plan.orbit))


def npz_bytes(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def bake_synthetic(spec, out_dir: str | Path, options: SynthOptions = SynthOptions(), *, formats=None,
                   device: str = "cpu", progress=None, notice: Optional[Callable[[str], None]] = None,
                   label_options=None, coco_masks: str = "rle", backend: Optional[str] = None,
                   psi_extra: Optional[dict] = None) -> dict:
    """Draw ``options.views`` poses, render and bake them into ``out_dir`` (BOP scene ``SYNTH_SCENE``,
    COCO, raw), and write ``synth/transforms.json``, ``synth/psi.json`` and ``synth/draws.npz`` (the noise:
    the run replays exactly). Returns a summary with the gate's counts."""
    from ..data.dataset import load_dataset
    from ..export import FORMATS
    from ..io.atomic import json_bytes, write_bytes
    from ..labels.frame import LabelOptions
    from ..pipeline.bake import assemble, bake_frames, check_request, load_checked_field, start, writing_into
    from .distribution import psi_json

    out_dir = Path(out_dir)
    if options.views < 1:
        raise NeuralLabelError(f"views {options.views}: need at least 1", field="views")
    if spec.field_path is None:
        raise NeuralLabelError("the spec has no 'field': synthetic views are rendered from it", field="spec")
    dataset = load_dataset(spec.data_path)
    world_from_data = Similarity(spec.world_from_data)
    drawn = draw_views(dataset, world_from_data, options, notice)
    plan, draws, intrinsics, views = drawn.plan, drawn.draws, drawn.intrinsics, drawn.views

    field_query = load_checked_field(spec, dataset, device)  # a field of another dataset is refused here
    query = RenderedQuery(field_query.field, device=device)
    # the views are part of what the folder holds: another draw must not resume into it
    synthetic = {"views": draws_fingerprint(draws, intrinsics), "tau": options.tau,
                 "min_confidence": options.min_confidence, "keep_untrusted": options.keep_untrusted,
                 "scene": SYNTH_SCENE}
    bake_plan = check_request(spec, out_dir, formats=formats or FORMATS, device=device, depth_source=query,
                              options=label_options or LabelOptions(), check_photos=False,
                              coco_masks=coco_masks, extra_manifest={"synthetic": synthetic})  # loads meshes
    inside = inside_geometry(views, spec, query.density, query.step)
    todo = [i for i in sorted(views) if i not in inside]
    if not todo:
        raise NeuralLabelError(f"all {len(views)} cameras sit inside geometry: choose larger distances",
                               field="distance")
    job = start(bake_plan, progress=progress, backend=backend)
    gate = Gate(query.render, options.min_confidence, drop=not options.keep_untrusted)
    job = dataclasses.replace(job, views=views, todo=todo, keep=gate.keep,
                              ctx=dataclasses.replace(job.ctx, bop_scene=SYNTH_SCENE, rendered_rgb=query.rgb))
    done = bake_frames(job, progress)
    finished = assemble(job)
    dropped = set(gate.untrusted) if gate.drop else set()
    kept = [i for i in todo if i not in dropped]
    psi = psi_json(plan.bins, plan.logits, options.tau, options.seed, orbit=plan.orbit.to_json(),
                   extra={"clamped": plan.clamped, "allow_extrapolation": options.allow_extrapolation,
                          **(psi_extra or {})})
    with writing_into(out_dir):
        write_bytes(out_dir / "synth" / "psi.json", json_bytes(psi))
        write_bytes(out_dir / "synth" / "transforms.json",
                    json_bytes(transforms_json(views, draws, world_from_data, kept=kept, flagged=gate.untrusted,
                                               with_rgb=any(w.name == "bop" for w in job.writers))))
        write_bytes(out_dir / "synth" / "draws.npz", npz_bytes(gumbel_uniform=draws.gumbel_uniform,
                                                                offsets=draws.offsets, bins=draws.bins,
                                                                coords=draws.coords))
    return {"out": str(out_dir), "formats": [w.name for w in job.writers], "views": len(views),
            "baked": done.baked, "skipped": done.skipped, "frames_in_dataset": finished,
            "inside_geometry": len(inside), "untrusted": len(gate.untrusted),
            "untrusted_dropped": done.dropped, "negatives": len(gate.negatives), "clamped": plan.clamped,
            "bop_scene": SYNTH_SCENE, "seconds_per_view": (done.label_seconds / done.baked) if done.baked else None}
