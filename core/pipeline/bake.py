"""Bake: labels for every frame of a label spec, written as BOP, COCO and raw datasets.

``bake(spec, out_dir)`` runs three stages:

1. :func:`prepare` checks everything it can before touching the output folder (formats, frames, meshes, every
   object seen by some camera), then claims the folder -- refusing one that holds another bake (a different
   spec/data/field fingerprint, formats or options) or files that are not a NeuralLabel bake, so nothing of
   someone else's is overwritten -- writes the manifest, the object models (annotated meshes as given; box
   objects' meshes extracted from the field's density, cached in ``DIR/.neurallabel/models`` so shards and
   re-runs share one extraction) and the writers' static files;
2. :func:`bake_frames` labels each selected frame's :class:`~..geometry.view.View`
   (:class:`~..labels.frame.FrameLabeler`), writes its files atomically, then its fragment
   ``DIR/.neurallabel/frames/NNNNNN.json`` -- the mark that the frame is finished (a re-run skips it);
3. :func:`assemble` writes the aggregate files (scene_gt.json, annotations.json, ...) from *all* finished
   fragments, sorted by frame, so ``--frames`` / ``--shard`` pieces baked into one folder equal one unsharded
   run byte for byte.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..data.dataset import load_dataset
from ..errors import NeuralLabelError
from ..export import FORMATS, ExportContext, Writer, get_writer
from ..geometry.box import Box
from ..geometry.projection import backproject, projected_region, region_pixels
from ..geometry.transforms import Similarity
from ..geometry.view import View
from ..io.atomic import json_bytes, write_bytes, write_bytes_if_changed
from ..labels.frame import FrameLabeler, FrameLabels, LabelObject, LabelOptions, make_label_object
from ..labels.raycast import MeshCaster, default_backend, world_mesh
from ..progress import ProgressFn, report
from ..scene.queries import DensityQuery
from ..spec import LabelSpec
from .frames import select_frames
from .model_cache import cached_mesh

STATE_DIR = ".neurallabel"
MANIFEST = f"{STATE_DIR}/bake.json"
FRAGMENTS = f"{STATE_DIR}/frames"
BAKE_FORMAT = 1


@dataclass
class BakeJob:
    """A prepared bake: the claimed output folder, the frames to do and everything that labels and writes them."""

    out_dir: Path
    views: dict[int, View]  # every loaded frame of the dataset, by frame index (world pose computed once)
    todo: list[int]  # the frame indices of this run (or piece of a run)
    labeler: FrameLabeler
    writers: list[Writer]  # in the canonical order of ``FORMATS``
    ctx: ExportContext
    depth_source_name: str

    @property
    def fragments_dir(self) -> Path:
        return self.out_dir / FRAGMENTS


@dataclass
class FramesDone:
    baked: int = 0
    skipped: int = 0
    instances: int = 0
    label_seconds: float = 0.0


def bake(spec: LabelSpec, out_dir: str | Path, *, formats: Sequence[str] | str = FORMATS, frames: Any = None,
         shard: Any = None, device: str = "cpu", progress: Optional[ProgressFn] = None, depth_source=None,
         options: LabelOptions = LabelOptions(), box_resolution: int = 128, backend: Optional[str] = None
         ) -> dict:
    """Bake ``spec`` into ``out_dir`` (:func:`prepare`, :func:`bake_frames`, :func:`assemble`); returns a
    summary (frames baked/skipped, instances, seconds per frame).

    ``depth_source`` defaults to the spec's field (:class:`~..scene.queries.FieldQuery`); tests and benchmarks
    pass a :class:`~..scene.queries.TruthQuery`. Without either, labels come from the meshes alone.
    """
    t_start = time.perf_counter()
    job = prepare(spec, Path(out_dir), formats=formats, frames=frames, shard=shard, device=device,
                  progress=progress, depth_source=depth_source, options=options, box_resolution=box_resolution,
                  backend=backend)
    done = bake_frames(job, progress)
    finished = assemble(job)
    return {"out": str(job.out_dir), "formats": [w.name for w in job.writers], "frames": done.baked,
            "skipped": done.skipped, "frames_in_dataset": finished, "instances": done.instances,
            "seconds_per_frame": (done.label_seconds / done.baked) if done.baked else None,
            "seconds": time.perf_counter() - t_start, "depth_source": job.depth_source_name}


def prepare(spec: LabelSpec, out_dir: Path, *, formats: Sequence[str] | str = FORMATS, frames: Any = None,
            shard: Any = None, device: str = "cpu", progress: Optional[ProgressFn] = None, depth_source=None,
            options: LabelOptions = LabelOptions(), box_resolution: int = 128, backend: Optional[str] = None
            ) -> BakeJob:
    """Stage 1: check the request, claim ``out_dir`` and write the manifest, the models and the static files."""
    writers = check_formats(formats)
    dataset = load_dataset(spec.data_path)
    todo = select_frames(spec, dataset, frames, shard)
    if depth_source is None and spec.field_path is not None:
        from ..scene.queries import FieldQuery

        depth_source = FieldQuery.load(spec.field_path, device=device)
    source_name = "none" if depth_source is None else depth_source.name
    if depth_source is None and any(o.kind == "box" for o in spec.objects):
        raise NeuralLabelError("the spec has box objects but no 'field': a box object's pixels and mesh come "
                               "from the field")
    # Everything that can be checked before touching the output folder is checked first.
    for obj in spec.objects:
        if obj.kind == "mesh" and obj.mesh is None:
            from ..io.meshes import load_mesh

            obj.mesh = load_mesh(obj.mesh_path, what=f"object {obj.name!r}: mesh")
    world_from_data = Similarity(spec.world_from_data)
    views = {frame.index: View.from_frame(frame, world_from_data) for frame in dataset.frames}
    _check_objects_seen(spec, views, [make_label_object(o, o.mesh, None) for o in spec.objects])

    manifest = {"neurallabel_bake": BAKE_FORMAT, "fingerprint": spec.fingerprint(),
                "formats": [w.name for w in writers], "depth_source": source_name, "options": options.to_json(),
                "box_resolution": box_resolution}
    _claim_out_dir(out_dir, manifest, allowed=_spec_entries(spec, out_dir))

    models = _object_models(spec, views, out_dir, depth_source, box_resolution, progress)
    labeler = frame_labeler(spec, models, depth_source, options, backend=backend, device=device)
    ctx = ExportContext(spec, dataset, _category_models(spec, models))
    for writer in writers:
        _write_all(out_dir, writer.static_files(ctx), write_bytes_if_changed)
    return BakeJob(out_dir, views, todo, labeler, writers, ctx, source_name)


def bake_frames(job: BakeJob, progress: Optional[ProgressFn] = None) -> FramesDone:
    """Stage 2: label and write every frame of ``job.todo`` without a fragment (unfinished), fragment last."""
    done = FramesDone()
    report(progress, 0, len(job.todo), "bake")
    for n, index in enumerate(job.todo):
        fragment_path = job.fragments_dir / f"{index:06d}.json"
        if fragment_path.is_file():
            done.skipped += 1
            report(progress, n + 1, len(job.todo), "bake")
            continue
        view = job.views[index]
        t0 = time.perf_counter()
        labels = label_view(job, view)
        fragment = {}
        for writer in job.writers:
            _write_all(job.out_dir, writer.frame_files(job.ctx, view, labels), write_bytes)
            fragment[writer.name] = writer.fragment(job.ctx, view, labels)
        write_bytes(fragment_path, json_bytes(fragment))  # last: marks the frame finished
        done.label_seconds += time.perf_counter() - t0
        done.baked += 1
        done.instances += len(labels.instances)
        report(progress, n + 1, len(job.todo), "bake")
    return done


def label_view(job: BakeJob, view: View) -> FrameLabels:
    """The labels of one view, with the maps the job's writers store (full depth maps, confidence)."""
    full_depth = any(w.needs_depth for w in job.writers)
    confidence = any(w.needs_confidence for w in job.writers)
    return job.labeler.label(view, full_depth=full_depth, confidence=confidence)


def assemble(job: BakeJob) -> int:
    """Stage 3: every writer's aggregate files from all finished fragments; returns how many frames are done."""
    fragments = read_fragments(job.fragments_dir)
    for writer in job.writers:
        _write_all(job.out_dir, writer.assemble(job.ctx, [(i, f[writer.name]) for i, f in fragments]),
                   write_bytes_if_changed)
    return len(fragments)


# --- steps ----------------------------------------------------------------------------------------------


def frame_labeler(spec: LabelSpec, models: dict[int, Any], depth_source, options: LabelOptions, *,
                  backend: Optional[str] = None, device: str = "cpu") -> FrameLabeler:
    """The per-frame labeler of a spec: every object with a model (mesh) is ray-cast at its pose
    (``backend``: embree on CPU, torch on CUDA unless named)."""
    meshes, label_objects = [], []
    for obj in spec.objects:
        model = models.get(obj.instance_id)
        cast_index = None
        if model is not None:
            cast_index = len(meshes)
            meshes.append(world_mesh(model, obj.pose))
        label_objects.append(make_label_object(obj, model, cast_index))
    caster = MeshCaster(meshes, backend=backend or default_backend(device), device=device)
    return FrameLabeler(label_objects, caster, depth_source, data_scale=spec.data_scale,
                        units_to_mm=spec.units_to_mm, options=options)


def check_formats(formats: Sequence[str] | str) -> list[Writer]:
    """The writers of ``formats`` (names, or one comma-separated string), in the canonical order."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    if not formats:
        raise NeuralLabelError(f"no format given: choose from {', '.join(FORMATS)}", field="formats")
    names = {get_writer(name).name for name in formats}
    return [get_writer(name) for name in FORMATS if name in names]


def _write_all(out_dir: Path, files: dict[str, bytes], write) -> None:
    for rel, data in files.items():
        write(out_dir / rel, data)


def _spec_entries(spec: LabelSpec, out_dir: Path) -> set[Path]:
    """Entries of ``out_dir`` that hold the spec itself or its meshes (Blender exports DIR/spec.json and
    DIR/meshes/ before it bakes into DIR): they do not make the folder someone else's."""
    entries = set()
    out = out_dir.resolve()
    for path in [spec.path] + [o.mesh_path for o in spec.objects if o.mesh_path is not None]:
        if path is None:
            continue
        path = Path(path).resolve()
        if out in path.parents:
            entries.add(out / path.relative_to(out).parts[0])
    return entries


def _claim_out_dir(out_dir: Path, manifest: dict, allowed: set[Path] = frozenset()) -> None:
    """Make ``out_dir`` ours: new or empty (but for ``allowed`` entries: the spec's own files), or holding a
    bake of the same spec with the same settings."""
    path = out_dir / MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise NeuralLabelError(f"--out {out_dir} is a file, not a folder")
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NeuralLabelError(f"{path}: unreadable bake manifest; refusing to write into {out_dir}") from None
        if existing != manifest:
            what = [k for k in manifest if existing.get(k) != manifest[k]] or ["manifest"]
            reason = {"fingerprint": "another scene's dataset (a different spec, data, field or meshes)"}.get(
                what[0], f"a bake with different {what[0]}")
            raise NeuralLabelError(f"--out {out_dir} already holds {reason}; choose an empty folder or the "
                                   f"same spec and settings")
        return
    if out_dir.is_dir() and any(p.resolve() not in allowed and p.name != STATE_DIR for p in out_dir.iterdir()):
        raise NeuralLabelError(f"--out {out_dir} is not empty and holds no NeuralLabel bake; refusing to write "
                               f"into it (choose an empty or new folder)")
    write_bytes(path, json_bytes(manifest))


def _object_models(spec: LabelSpec, views: dict[int, View], out_dir: Path, depth_source, resolution: int,
                   progress: Optional[ProgressFn]) -> dict[int, Any]:
    """instance_id -> model mesh in the object's own frame (world units); box objects need a field."""
    from ..labels.box_mesh import extract_box_mesh

    models: dict[int, Any] = {}
    cache = out_dir / STATE_DIR / "models"
    for obj in spec.objects:
        if obj.kind == "mesh":
            models[obj.instance_id] = obj.mesh
            continue
        if not isinstance(depth_source, DensityQuery):
            continue  # no field: the box object's labels come from depth alone, it gets no model

        def extract(obj=obj):  # only when not cached yet
            level = surface_density_level(spec, views, depth_source, Box(obj.pose, obj.size))
            mesh = extract_box_mesh(depth_source.density, obj.pose, obj.size, spec.world_from_data,
                                    resolution=resolution, step=depth_source.step,
                                    threshold=level, progress=progress, name=obj.name)
            if mesh is None:
                raise NeuralLabelError(f"object {obj.name!r}: the field holds no surface inside its box")
            return mesh

        models[obj.instance_id] = cached_mesh(cache / f"instance_{obj.instance_id:06d}.npz", extract)
    return models


def surface_density_level(spec: LabelSpec, views: dict[int, View], depth_source, box: Box, *, max_frames: int = 6,
                          max_pixels: int = 4096, min_points: int = 32) -> Optional[float]:
    """The field's density where it renders the surface inside ``box`` (world frame): the median density at
    the points of its depth maps (median depth) inside the box, from up to ``max_frames`` evenly spread views.
    None when fewer than ``min_points`` such points are found."""
    ordered = [views[i] for i in sorted(views)]
    count = len(ordered)
    picks = sorted({int(round(x)) for x in np.linspace(0, count - 1, min(count, max_frames))})
    corners = box.corners()
    data_from_world = Similarity(spec.world_from_data).inverse()
    densities = []
    for position in picks:
        view = ordered[position]
        intr = view.intrinsics
        region = projected_region(intr, view.cam_to_world, corners, (0, 0, intr.width, intr.height))
        if region is None:
            continue
        rows, cols = region_pixels(region)
        stride = max(1, int(np.ceil(len(rows) * len(picks) / max_pixels)))
        rows, cols = rows[::stride], cols[::stride]
        z = depth_source.at_pixels(view, rows, cols).z_depth
        ok = np.isfinite(z)
        points = backproject(intr, view.cam_to_world, rows[ok], cols[ok], z[ok] * spec.data_scale)
        inside = box.contains(points)
        if inside.any():
            densities.append(depth_source.density(data_from_world.apply(points[inside])))
    if not densities or sum(len(d) for d in densities) < min_points:
        return None
    return float(np.median(np.concatenate(densities)))


def _category_models(spec: LabelSpec, models: dict[int, Any]) -> dict[int, Any]:
    """category_id -> the model of its lowest instance_id (BOP has one model per obj_id)."""
    out: dict[int, Any] = {}
    for obj in sorted(spec.objects, key=lambda o: o.instance_id):
        if obj.instance_id in models and obj.category_id not in out:
            out[obj.category_id] = models[obj.instance_id]
    return out


def _check_objects_seen(spec: LabelSpec, views: dict[int, View], objects: list[LabelObject]) -> None:
    """Every object must project into at least one of the spec's frames (else the pose is surely wrong)."""
    indices = sorted(views) if spec.frames is None else spec.frames
    unseen = []
    for obj in objects:
        for i in indices:
            view = views[i]
            extent = (0, 0, view.width, view.height)
            if projected_region(view.intrinsics, view.cam_to_world, obj.bound_points, extent, pad=0) is not None:
                break
        else:
            unseen.append(obj.spec.name)
    if unseen:
        raise NeuralLabelError(f"object {unseen[0]!r} is outside every camera of the dataset (check its pose, "
                               f"and world_from_data)" + (f"; also {', '.join(unseen[1:])}" if unseen[1:] else ""))


def read_fragments(frames_dir: Path) -> list[tuple[int, dict]]:
    """The finished frames' fragments, ``[(frame index, {format: fragment})]`` sorted by index."""
    out = []
    if frames_dir.is_dir():
        for path in sorted(frames_dir.glob("[0-9]*.json")):
            out.append((int(path.stem), json.loads(path.read_text())))
    out.sort(key=lambda x: x[0])
    return out
