"""Bake: labels for every frame of a label spec, written as BOP, COCO and raw datasets.

``bake(spec, out_dir)``:
1. refuses an output folder that holds another bake (a different spec/data/field fingerprint, formats or
   options) or files that are not a NeuralLabel bake -- nothing of someone else's is overwritten;
2. prepares the object models: annotated meshes as given; box objects' meshes extracted from the field's
   density (cached in ``DIR/.neurallabel/models``, so shards and re-runs share one extraction);
3. labels each selected frame (:class:`~.labels.FrameLabeler`) and writes its files atomically, then its
   fragment ``DIR/.neurallabel/frames/NNNNNN.json`` -- the mark that the frame is finished (a re-run skips it);
4. assembles the aggregate files (scene_gt.json, annotations.json, ...) from *all* finished fragments, sorted
   by frame, so ``--frames`` / ``--shard`` pieces baked into one folder equal one unsharded run byte for byte.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..data.dataset import Dataset, load_dataset
from ..errors import NeuralLabelError
from ..export import FORMATS, ExportContext, get_writer
from ..geometry.box import Box
from ..io.atomic import json_bytes, npy_bytes, write_bytes
from ..geometry.projection import backproject, projected_region, region_pixels
from ..geometry.transforms import Similarity
from ..geometry.view import View
from ..labels.frame import FrameLabeler, LabelObject, LabelOptions, inside_rigid_box, make_label_object
from ..progress import ProgressFn, report
from ..labels.raycast import MeshCaster, default_backend, world_mesh
from .frames import select_frames
from ..scene.queries import DensityQuery
from ..spec import LabelSpec

STATE_DIR = ".neurallabel"
MANIFEST = f"{STATE_DIR}/bake.json"
BAKE_FORMAT = 1


def bake(spec: LabelSpec, out_dir: str | Path, *, formats: Sequence[str] = FORMATS, frames: Any = None,
         shard: Any = None, device: str = "cpu", progress: Optional[ProgressFn] = None, depth_source=None,
         options: LabelOptions = LabelOptions(), box_resolution: int = 128, backend: Optional[str] = None
         ) -> dict:
    """Bake ``spec`` into ``out_dir``; returns a summary (frames baked/skipped, instances, seconds per frame).

    ``depth_source`` defaults to the spec's field (:class:`~.depth_source.FieldDepth`); tests and benchmarks
    pass a :class:`~.depth_source.TruthDepth`. Without either, labels come from the meshes alone.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    formats = _check_formats(formats)
    dataset = load_dataset(spec.data_path)
    todo = select_frames(spec, dataset, frames, shard)
    source_name = "none"
    if depth_source is None and spec.field_path is not None:
        from ..scene.queries import FieldQuery

        depth_source = FieldQuery.load(spec.field_path, device=device)
    if depth_source is not None:
        source_name = depth_source.name
    if depth_source is None and any(o.kind == "box" for o in spec.objects):
        raise NeuralLabelError("the spec has box objects but no 'field': a box object's pixels and mesh come "
                               "from the field")

    # Everything that can be checked before touching the output folder is checked first.
    for obj in spec.objects:
        if obj.kind == "mesh" and obj.mesh is None:
            from ..io.meshes import load_mesh

            obj.mesh = load_mesh(obj.mesh_path, what=f"object {obj.name!r}: mesh")
    _check_objects_seen(spec, dataset, [make_label_object(o, o.mesh, None) for o in spec.objects])

    manifest = {"neurallabel_bake": BAKE_FORMAT, "fingerprint": spec.fingerprint(), "formats": list(formats),
                "depth_source": source_name, "options": options.to_json(), "box_resolution": box_resolution}
    _claim_out_dir(out_dir, manifest, allowed=_spec_entries(spec, out_dir))

    models = _object_models(spec, dataset, out_dir, depth_source, box_resolution, progress)
    labeler = frame_labeler(spec, models, depth_source, options, backend=backend, device=device)
    ctx = ExportContext(spec, dataset, _category_models(spec, models))
    writers = [get_writer(name) for name in formats]
    for writer in writers:
        for rel, data in writer.static_files(ctx).items():
            _write_if_changed(out_dir / rel, data)

    needs_depth = "bop" in formats or "raw" in formats
    frames_dir = out_dir / STATE_DIR / "frames"
    baked = skipped = instances = 0
    label_seconds = 0.0
    report(progress, 0, len(todo), "bake")
    for n, index in enumerate(todo):
        fragment_path = frames_dir / f"{index:06d}.json"
        if fragment_path.is_file():
            skipped += 1
            report(progress, n + 1, len(todo), "bake")
            continue
        frame = dataset.frames[index]
        t0 = time.perf_counter()
        labels = labeler.label(View.from_frame(frame, Similarity(spec.world_from_data)), full_depth=needs_depth,
                               confidence="raw" in formats)
        fragment = {}
        for name, writer in zip(formats, writers):
            for rel, data in writer.frame_files(ctx, frame, labels).items():
                write_bytes(out_dir / rel, data)
            fragment[name] = writer.fragment(ctx, frame, labels)
        write_bytes(fragment_path, json_bytes(fragment))  # last: marks the frame finished
        label_seconds += time.perf_counter() - t0
        baked += 1
        instances += len(labels.instances)
        report(progress, n + 1, len(todo), "bake")

    fragments = _read_fragments(frames_dir)
    for name, writer in zip(formats, writers):
        for rel, data in writer.assemble(ctx, [(i, f[name]) for i, f in fragments]).items():
            _write_if_changed(out_dir / rel, data)

    return {"out": str(out_dir), "formats": list(formats), "frames": baked, "skipped": skipped,
            "frames_in_dataset": len(fragments), "instances": instances,
            "seconds_per_frame": (label_seconds / baked) if baked else None,
            "seconds": time.perf_counter() - t_start, "depth_source": source_name}


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


def _check_formats(formats: Sequence[str] | str) -> list[str]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise NeuralLabelError(f"unknown format {bad[0] if bad else '(none)'!r}: choose from "
                               f"{', '.join(FORMATS)}")
    return [f for f in FORMATS if f in formats]  # canonical order


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
    if out_dir.is_dir() and any(p.resolve() not in allowed for p in out_dir.iterdir()):
        raise NeuralLabelError(f"--out {out_dir} is not empty and holds no NeuralLabel bake; refusing to write "
                               f"into it (choose an empty or new folder)")
    write_bytes(path, json_bytes(manifest))


def _object_models(spec: LabelSpec, dataset: Dataset, out_dir: Path, depth_source, resolution: int,
                   progress: Optional[ProgressFn]) -> dict[int, Any]:
    """instance_id -> model mesh in the object's own frame (world units); box objects need a field."""
    import trimesh

    from ..labels.box_mesh import extract_box_mesh

    models: dict[int, Any] = {}
    cache = out_dir / STATE_DIR / "models"
    for obj in spec.objects:
        if obj.kind == "mesh":
            models[obj.instance_id] = obj.mesh
            continue
        if not isinstance(depth_source, DensityQuery):
            continue  # no field: the box object's labels come from depth alone, it gets no model
        v_path = cache / f"instance_{obj.instance_id:06d}_vertices.npy"
        f_path = cache / f"instance_{obj.instance_id:06d}_faces.npy"
        if not (v_path.is_file() and f_path.is_file()):
            level = surface_density_level(spec, dataset, depth_source, obj)
            mesh = extract_box_mesh(depth_source.density, obj.pose, obj.size, spec.world_from_data,
                                    resolution=resolution, step=depth_source.step,
                                    threshold=level, progress=progress, name=obj.name)
            if mesh is None:
                raise NeuralLabelError(f"object {obj.name!r}: the field holds no surface inside its box")
            write_bytes(v_path, npy_bytes(np.asarray(mesh.vertices, dtype=np.float64)))
            write_bytes(f_path, npy_bytes(np.asarray(mesh.faces, dtype=np.int64)))
        # Always use the cached copy, so a fresh run and a re-run label with the very same mesh.
        models[obj.instance_id] = trimesh.Trimesh(np.load(v_path), np.load(f_path), process=False)
    return models


def surface_density_level(spec: LabelSpec, dataset: Dataset, depth_source, obj, *, max_frames: int = 6,
                          max_pixels: int = 4096, min_points: int = 32) -> Optional[float]:
    """The field's density where it renders the surface of a box object: the median density at the points of
    its depth maps (median depth) inside the box, from up to ``max_frames`` evenly spread dataset cameras.
    None when fewer than ``min_points`` such points are found."""
    count = len(dataset.frames)
    picks = sorted({int(round(x)) for x in np.linspace(0, count - 1, min(count, max_frames))})
    box = Box(obj.pose, obj.size)
    corners = box.corners()
    data_from_world = np.linalg.inv(spec.world_from_data)
    densities = []
    for index in picks:
        view = View.from_frame(dataset.frames[index], Similarity(spec.world_from_data))
        intr, cam = view.intrinsics, view.cam_to_world
        region = projected_region(intr, cam, corners, (0, 0, intr.width, intr.height))
        if region is None:
            continue
        rows, cols = region_pixels(region)
        stride = max(1, int(np.ceil(len(rows) * len(picks) / max_pixels)))
        rows, cols = rows[::stride], cols[::stride]
        z = depth_source.at_pixels(view, rows, cols).z_depth
        ok = np.isfinite(z)
        points = backproject(intr, cam, rows[ok], cols[ok], z[ok] * spec.data_scale)
        inside = inside_rigid_box(box, points)
        if inside.any():
            data_points = points[inside] @ data_from_world[:3, :3].T + data_from_world[:3, 3]
            densities.append(depth_source.density(data_points))
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


def _check_objects_seen(spec: LabelSpec, dataset: Dataset, objects: list[LabelObject]) -> None:
    """Every object must project into at least one of the spec's frames (else the pose is surely wrong)."""
    indices = range(len(dataset.frames)) if spec.frames is None else spec.frames
    unseen = []
    for obj in objects:
        for i in indices:
            frame = dataset.frames[i]
            intr = frame.intrinsics
            cam = spec.cam_to_world(frame.cam_to_data)
            if projected_region(intr, cam, obj.bound_points, (0, 0, intr.width, intr.height), pad=0) is not None:
                break
        else:
            unseen.append(obj.spec.name)
    if unseen:
        raise NeuralLabelError(f"object {unseen[0]!r} is outside every camera of the dataset (check its pose, "
                               f"and world_from_data)" + (f"; also {', '.join(unseen[1:])}" if unseen[1:] else ""))


def _read_fragments(frames_dir: Path) -> list[tuple[int, dict]]:
    out = []
    if frames_dir.is_dir():
        for path in sorted(frames_dir.glob("[0-9]*.json")):
            out.append((int(path.stem), json.loads(path.read_text())))
    out.sort(key=lambda x: x[0])
    return out


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_bytes(path, data)
