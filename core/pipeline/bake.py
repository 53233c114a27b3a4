"""Bake: labels for every frame of a label spec, written as BOP, COCO and raw datasets.

``bake(spec, out_dir)`` runs three stages after one check:

0. :func:`check_request` checks everything it can while writing nothing: the device, formats, frames (a
   selection of no frame is an error), meshes, every object seen by some camera, the output folder (the
   read-only half of :func:`~..io.outdir.claim_output_dir`: no input of the bake may lie where it writes), the
   field (finite, trained on this dataset's train frames) and the photos of the frames to do (each decodes).
   The add-on calls it before it starts the worker (without the field and photos, which the worker checks);
1. :func:`prepare` claims the folder (:func:`~..io.outdir.claim_output_dir`, kind ``bake``) -- refusing one
   that holds another bake (a different spec/data/field fingerprint, photos, formats or options) or files that
   are not a NeuralLabel bake, so nothing of someone else's is overwritten -- which writes the manifest; then
   it writes the object models (annotated meshes as given; box objects' meshes extracted from the field's
   density, cached in ``DIR/.neurallabel/models`` so shards and re-runs share one extraction) and the writers'
   static files;
2. :func:`bake_frames` labels each selected frame's :class:`~..geometry.view.View`
   (:class:`~..labels.frame.FrameLabeler`), writes its files atomically, then its fragment
   ``DIR/.neurallabel/frames/NNNNNN.json`` -- the mark that the frame is finished (a re-run skips it);
3. :func:`assemble` writes the aggregate files (scene_gt.json, annotations.json, ...) from *all* finished
   fragments, sorted by frame, under a lock on the manifest, so ``--frames`` / ``--shard`` pieces baked into
   one folder, at once or one after another, equal one unsharded run byte for byte.

The manifest ``DIR/.neurallabel/bake.json`` identifies the bake: the spec's fingerprint (data, field, meshes,
poses), the photos' (which frames have one, each one's name and size: a re-run after a photo vanished or was
replaced would mix two numberings, so it is refused), formats and options. An OSError while writing (read-only
folder, full disk) is one NeuralLabelError naming the output folder (field ``out``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..data.dataset import Dataset, load_dataset
from ..errors import NeuralLabelError
from ..export import FORMATS, ExportContext, Writer, get_writer
from ..export.coco import MASK_FORMATS as COCO_MASKS
from ..geometry.box import Box
from ..geometry.projection import backproject, projected_region, region_pixels
from ..geometry.transforms import Similarity
from ..geometry.view import View, spread_views
from ..io.atomic import json_bytes, write_bytes, write_bytes_if_changed
from ..io.images import validate_images
from ..io.lock import file_lock
from ..io.outdir import STATE_DIR, OutputClaim, check_output_dir, claim_output_dir, output_error, within
from ..labels.frame import (FrameLabeler, FrameLabels, LabelObject, LabelOptions, LabelWarning, RenderedView,
                            make_label_object)
from ..labels.raycast import MeshCaster, default_backend, world_mesh
from ..progress import ProgressFn, report
from ..scene.queries import DensityQuery, FieldQuery
from ..spec import LabelSpec
from .frames import select_frames
from .model_cache import SharedModels, box_mesh_keys, cached_mesh

if TYPE_CHECKING:
    from ..labels.carve import LabelledView

KIND = "bake"
MANIFEST = f"{STATE_DIR}/{KIND}.json"
FRAGMENTS = f"{STATE_DIR}/frames"
BAKE_FORMAT = 1
#: top-level names of the output folder that the bake writes: no input may lie under them (the spec and its
#: meshes may lie elsewhere in the folder: Blender exports DIR/spec.json and DIR/meshes/ and bakes into DIR)
RESERVED = (*FORMATS, STATE_DIR)


@dataclass
class BakePlan:
    """A checked bake request (:func:`check_request`); nothing is written yet."""

    spec: LabelSpec
    out_dir: Path
    writers: list[Writer]  # in the canonical order of ``FORMATS``
    dataset: Dataset
    views: dict[int, View]  # every loaded frame of the dataset, by frame index
    todo: list[int]  # the frame indices of this run (or piece of a run)
    depth_source: Any  # a SceneQuery, or None (labels from the meshes alone; or the field was not loaded)
    depth_source_name: str
    device: Optional[str]  # None: not resolved (a pre-flight leaves that to the worker)
    options: LabelOptions
    box_resolution: int
    manifest: dict
    inputs: dict[str, list[Path]]  # what the bake reads, by kind: none of it may be written over
    allowed: list[Path]  # inputs that may lie in the output folder (the spec and its meshes)
    resumed: bool  # the output folder already holds this bake
    coco_masks: str = "rle"
    model_cache: Optional[Path] = None  # the box meshes shared between bakes (:class:`~.model_cache.SharedModels`)
    file_digests: Optional[dict[str, str]] = None  # the spec's input files' digests (``LabelSpec.file_digests``)

    def shared_models(self) -> Optional[SharedModels]:
        """The shared box-mesh cache of this bake's box objects; None without one (or without a device)."""
        if self.model_cache is None or self.device is None:
            return None
        return SharedModels(self.model_cache, partial(box_mesh_keys, self.spec, photos=self.manifest["photos"],
                                                      options=self.manifest["options"],
                                                      resolution=self.box_resolution, device=self.device,
                                                      digests=self.file_digests))

    def claim(self) -> OutputClaim:
        """Claim the output folder (writes the manifest of a new bake)."""
        return claim_output_dir(self.out_dir, kind=KIND, manifest=self.manifest, inputs=self.inputs,
                                reserved=RESERVED, allowed=self.allowed)


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
    #: whether to write a labelled view (None: all): a False leaves it without files or fragment, counted as
    #: dropped (synthetic views' trust gate)
    keep: Optional[Callable[[View, FrameLabels], bool]] = None

    @property
    def fragments_dir(self) -> Path:
        return self.out_dir / FRAGMENTS


@dataclass
class FramesDone:
    baked: int = 0
    skipped: int = 0
    instances: int = 0
    label_seconds: float = 0.0
    dropped: int = 0


def bake(spec: LabelSpec, out_dir: str | Path, *, formats: Sequence[str] | str = FORMATS, frames: Any = None,
         shard: Any = None, device: str = "cpu", progress: Optional[ProgressFn] = None, depth_source=None,
         options: LabelOptions = LabelOptions(), box_resolution: int = 128, backend: Optional[str] = None,
         coco_masks: str = "rle", model_cache: Optional[str | Path] = None) -> dict:
    """Bake ``spec`` into ``out_dir`` (:func:`prepare`, :func:`bake_frames`, :func:`assemble`); returns a
    summary (frames baked/skipped, instances, seconds per frame).

    ``depth_source`` defaults to the spec's field (:class:`~..scene.queries.FieldQuery`); tests and benchmarks
    pass a :class:`~..scene.queries.TruthQuery`. Without either, labels come from the meshes alone.
    ``model_cache``: a folder whose box meshes bakes share (:class:`~.model_cache.SharedModels`; used with the
    spec's own field only); None: none.
    """
    t_start = time.perf_counter()
    job = prepare(spec, Path(out_dir), formats=formats, frames=frames, shard=shard, device=device,
                  progress=progress, depth_source=depth_source, options=options, box_resolution=box_resolution,
                  backend=backend, coco_masks=coco_masks, model_cache=model_cache)
    done = bake_frames(job, progress)
    return summary(job, done, assemble(job), time.perf_counter() - t_start)


def summary(job: BakeJob, done: FramesDone, finished: int, seconds: float) -> dict:
    """What a bake reports: frames baked and skipped, frames finished in the folder, seconds per frame."""
    return {"out": str(job.out_dir), "formats": [w.name for w in job.writers], "frames": done.baked,
            "skipped": done.skipped, "frames_in_dataset": finished, "instances": done.instances,
            "seconds_per_frame": (done.label_seconds / done.baked) if done.baked else None,
            "seconds": seconds, "depth_source": job.depth_source_name}


def check_request(spec: LabelSpec, out_dir: str | Path, *, formats: Sequence[str] | str = FORMATS,
                  frames: Any = None, shard: Any = None, device: Optional[str] = "cpu",
                  progress: Optional[ProgressFn] = None, depth_source=None, options: LabelOptions = LabelOptions(),
                  box_resolution: int = 128, load_field: bool = True, check_photos: bool = True,
                  coco_masks: str = "rle", extra_manifest: Optional[dict] = None,
                  model_cache: Optional[str | Path] = None) -> BakePlan:
    """Stage 0: every check of a bake, cheapest first; writes nothing. NeuralLabelError on the first problem.

    ``device`` None leaves the device unresolved, ``load_field`` False skips loading the spec's field (torch)
    and ``check_photos`` False skips decoding the photos: the add-on's pre-flight in Blender's own process
    (:func:`..app.jobs.check_bake`) checks the scene that way, and the worker checks the rest before it writes.
    ``extra_manifest`` joins the manifest (a re-run resumes only when it is equal too). ``model_cache``: as
    :func:`bake`'s (it takes no part in the manifest).
    """
    out_dir = Path(out_dir)
    # the shared box meshes are keyed by the spec's field file: a depth source given here has no such key
    shared_folder = (Path(model_cache) if model_cache is not None and depth_source is None
                     and spec.field_path is not None and any(o.kind == "box" for o in spec.objects) else None)
    if device is not None:
        from ..devices import resolve_device

        device = str(resolve_device(device, "device"))
    if not isinstance(options, LabelOptions):
        raise NeuralLabelError(f"options {options!r}: expected LabelOptions", field="options")
    writers = check_formats(formats)
    if coco_masks not in COCO_MASKS:
        raise NeuralLabelError(f"coco_masks {coco_masks!r}: choose from {', '.join(COCO_MASKS)}", field="coco_masks")
    dataset = load_dataset(spec.data_path)
    todo = select_frames(spec, dataset, frames, shard)
    if depth_source is None and spec.field_path is None and any(o.kind == "box" for o in spec.objects):
        raise NeuralLabelError("the spec has box objects but no 'field': a box object's pixels and mesh come "
                               "from the field")
    for obj in spec.objects:
        if obj.kind == "mesh" and obj.mesh is None:
            from ..io.meshes import load_mesh

            obj.mesh = load_mesh(obj.mesh_path, what=f"object {obj.name!r}: mesh")
    world_from_data = Similarity(spec.world_from_data)
    views = {frame.index: View.from_frame(frame, world_from_data) for frame in dataset.frames}
    _check_objects_seen(spec, views, [make_label_object(o, o.mesh, None) for o in spec.objects])

    if depth_source is not None:
        source_name = depth_source.name
    else:
        source_name = "none" if spec.field_path is None else FieldQuery.name
    recorded = options.to_json()
    measured = (bool(getattr(depth_source, "measures_confidence", False)) if depth_source is not None
                else spec.field_path is not None)
    if not (options.colour_edges and measured and any(o.kind == "box" for o in spec.objects)):
        # only where the colours move labels: a bake the option cannot change keeps its manifest's bytes
        del recorded["colour_edges"]
    digests = spec.file_digests()  # read once: the manifest's fingerprint and the box meshes' keys
    manifest = {"neurallabel_bake": BAKE_FORMAT, "fingerprint": spec.fingerprint(digests),
                "photos": photos_fingerprint(dataset), "formats": [w.name for w in writers],
                "depth_source": source_name, "options": recorded, "box_resolution": box_resolution}
    if coco_masks != "rle":  # only then: a default bake's manifest keeps its bytes
        manifest["coco_masks"] = coco_masks
    manifest.update(extra_manifest or {})  # what else the folder's bake is made of (synthetic views' draws)
    meshes = [o.mesh_path for o in spec.objects if o.mesh_path is not None]
    inputs = {"photo": [f.image_path for f in dataset.frames], "dataset": dataset.source_paths(),
              "spec": [spec.path] if spec.path is not None else [], "mesh": meshes,
              "field": [spec.field_path] if spec.field_path is not None else []}
    allowed = ([spec.path] if spec.path is not None else []) + meshes
    resumed = check_output_dir(out_dir, kind=KIND, manifest=manifest, inputs=inputs, reserved=RESERVED,
                               allowed=allowed)

    if depth_source is None and spec.field_path is not None and load_field:
        depth_source = load_checked_field(spec, dataset, device or "cpu")
    if check_photos:
        fragments = out_dir / FRAGMENTS
        validate_images([dataset.frame(i) for i in todo
                         if not (resumed and (fragments / f"{i:06d}.json").is_file())], _when_slow(progress))
    return BakePlan(spec, out_dir, writers, dataset, views, todo, depth_source, source_name, device, options,
                    box_resolution, manifest, inputs, allowed, resumed, coco_masks, shared_folder, digests)


def prepare(spec: LabelSpec, out_dir: Path, *, formats: Sequence[str] | str = FORMATS, frames: Any = None,
            shard: Any = None, device: str = "cpu", progress: Optional[ProgressFn] = None, depth_source=None,
            options: LabelOptions = LabelOptions(), box_resolution: int = 128, backend: Optional[str] = None,
            coco_masks: str = "rle", model_cache: Optional[str | Path] = None) -> BakeJob:
    """Stage 1: check the request (:func:`check_request`), claim ``out_dir`` (writes the manifest), then write
    the models and the static files."""
    plan = check_request(spec, out_dir, formats=formats, frames=frames, shard=shard, device=device,
                         progress=progress, depth_source=depth_source, options=options,
                         box_resolution=box_resolution, coco_masks=coco_masks, model_cache=model_cache)
    return start(plan, progress=progress, backend=backend)


def start(plan: BakePlan, *, progress: Optional[ProgressFn] = None, backend: Optional[str] = None) -> BakeJob:
    """Stage 1 of a checked plan: claim its folder (writes the manifest), write the models and static files.
    (Synthetic views start a plan of their own: :mod:`..synth.views`.)"""
    spec, claim = plan.spec, plan.claim()
    out_dir, device, depth_source = plan.out_dir, plan.device, plan.depth_source
    with writing_into(out_dir):
        try:
            with file_lock(claim.manifest_path):  # concurrent pieces extract a box's mesh once, and share it
                models = _object_models(spec, plan.views, out_dir, depth_source, plan.box_resolution, progress,
                                        plan.options, plan.shared_models())
        except NeuralLabelError:
            if not claim.resumed:  # nothing is baked yet: the corrected spec must find the folder free
                release_claim(claim)
            raise
        # one core stays with the thread that encodes and writes the previous frame (casting on every core
        # while it runs made a 2-core bake slower)
        labeler = frame_labeler(spec, models, depth_source, plan.options, backend=backend, device=device,
                                cast_threads=min(4, max(1, (os.cpu_count() or 1) - 1)))
        ctx = ExportContext(spec, plan.dataset, models, plan.coco_masks,
                            label_view=partial(labeler.label, full_depth=True, confidence=False))
        for writer in plan.writers:
            _write_all(out_dir, writer.static_files(ctx), write_bytes_if_changed)
    return BakeJob(out_dir, plan.views, plan.todo, labeler, plan.writers, ctx, plan.depth_source_name)


def release_claim(claim: OutputClaim) -> None:
    """Undo a new claim that baked nothing (a box object without surface): its manifest and model cache go
    (the output folder itself stays: it may be the user's)."""
    shutil.rmtree(claim.out_dir / STATE_DIR / "models", ignore_errors=True)
    claim.manifest_path.unlink(missing_ok=True)
    try:
        (claim.out_dir / STATE_DIR).rmdir()  # only when empty
    except OSError:
        pass


def bake_frames(job: BakeJob, progress: Optional[ProgressFn] = None) -> FramesDone:
    """Stage 2: label and write every frame of ``job.todo`` without a fragment (unfinished), fragment last."""
    with writing_into(job.out_dir):
        return _bake_frames(job, progress)


def _bake_frames(job: BakeJob, progress: Optional[ProgressFn]) -> FramesDone:
    # Three threads take turns on the frames. While this one does a frame's label math
    # (:meth:`~..labels.frame.FrameLabeler.finish`, mostly one core), a second renders the next frame (its mesh
    # casts and the scene's render: compiled code on every core, outside Python's lock; with a scene only) and a
    # third encodes and writes the previous frame's files (then its fragment: OpenCV's encoders and the disk do
    # not hold the lock either). The labeler is used by one render and one label math at a time (``_Turns``);
    # the writers reach it only through the context's ``label_view`` (a distorted camera's pinhole labels),
    # which takes both turns.
    # A synthetic view's RGB is the render its labels came from, held one view at a time: its files are made
    # before the next view is rendered. At most one frame is in flight; it is finished (fragment written) before
    # the next progress report and before this returns or raises (the first error wins).
    done = FramesDone()
    total = len(job.todo)
    turns = _Turns()
    ctx = job.ctx if job.ctx.label_view is None else dataclasses.replace(
        job.ctx, label_view=partial(turns.alone, job.ctx.label_view))
    overlap = ctx.rendered_rgb is None
    # without a scene a frame's render is its mesh casts alone: rendering them ahead was no faster
    render_ahead = overlap and job.labeler.scene is not None
    report(progress, 0, total, "bake")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bake-write") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="bake-render") as renderer:
        in_flight: Optional[_InFlight] = None
        ahead: Optional[tuple[int, Future]] = None  # the next frame's render: (its index, the future)
        try:
            for n, index in enumerate(job.todo):
                fragment_path = job.fragments_dir / f"{index:06d}.json"
                if fragment_path.is_file():
                    in_flight = _finish(in_flight, done, progress, total)
                    done.skipped += 1
                    report(progress, n + 1, total, "bake")
                    continue
                view = job.views[index]
                t0 = time.perf_counter()
                # never wait for a render while holding a turn: the writers' label_view takes both
                rendered = ahead[1].result() if ahead is not None and ahead[0] == index else \
                    turns.render(render_view, job, view)
                ahead = None
                following = _next_unfinished(job, n) if render_ahead else None
                if following is not None:
                    ahead = (following, renderer.submit(turns.render, render_view, job, job.views[following]))
                labels = turns.math(finish_view, job, rendered)
                keep = job.keep is None or turns.alone(job.keep, view, labels)
                if not keep:
                    in_flight = _finish(in_flight, done, progress, total)
                    done.dropped += 1
                    report(progress, n + 1, total, "bake")
                    continue
                encode = partial(_frame_files, job, ctx, view, labels, fragment_path)
                if overlap:
                    in_flight = _finish(in_flight, done, progress, total)
                    future = pool.submit(lambda encode=encode: _write_files(encode()))
                else:
                    files = encode()
                    in_flight = _finish(in_flight, done, progress, total)
                    future = pool.submit(_write_files, files)
                in_flight = _InFlight(future, n, len(labels.instances))
                done.label_seconds += time.perf_counter() - t0
        except BaseException:
            if in_flight is not None:
                wait([in_flight.future])  # its own error, if any, comes second
            raise
        t0 = time.perf_counter()
        _finish(in_flight, done, progress, total)
        done.label_seconds += time.perf_counter() - t0
    return done


class _Turns:
    """Who may use the labeler now: one render (casts, the scene's render) and one label math at a time; a
    caller that needs the whole labeler (a writer's own labels, the synthetic views' trust gate) takes both,
    always in that order."""

    def __init__(self) -> None:
        self._render = threading.Lock()
        self._math = threading.Lock()

    def render(self, call: Callable, *args, **kwargs):
        with self._render:
            return call(*args, **kwargs)

    def math(self, call: Callable, *args, **kwargs):
        with self._math:
            return call(*args, **kwargs)

    def alone(self, call: Callable, *args, **kwargs):
        with self._render, self._math:
            return call(*args, **kwargs)


def _next_unfinished(job: BakeJob, position: int) -> Optional[int]:
    """The index of the first frame after ``job.todo[position]`` that has no fragment yet; None when none."""
    for index in job.todo[position + 1:]:
        if not (job.fragments_dir / f"{index:06d}.json").is_file():
            return index
    return None


def _frame_files(job: BakeJob, ctx: ExportContext, view: View, labels: FrameLabels, fragment_path: Path
                 ) -> list[tuple[Path, bytes]]:
    """Every writer's files of a frame, then its fragment (last: it marks the frame finished)."""
    files: list[tuple[Path, bytes]] = []
    fragment = {}
    for writer in job.writers:
        files += [(job.out_dir / rel, data) for rel, data in writer.frame_files(ctx, view, labels).items()]
        fragment[writer.name] = writer.fragment(ctx, view, labels)
    files.append((fragment_path, json_bytes(fragment, compact=True)))
    return files


@dataclass
class _InFlight:
    """A frame whose files are being made: the future, its position in ``todo``, its instances."""

    future: Future
    position: int
    instances: int


def _write_files(files: list[tuple[Path, bytes]]) -> None:
    for path, data in files:
        write_bytes(path, data)


def _finish(in_flight: Optional[_InFlight], done: FramesDone, progress: Optional[ProgressFn], total: int) -> None:
    """Wait for a frame's writes (raising their error), count it as baked and report it; None (nothing in flight)."""
    if in_flight is not None:
        in_flight.future.result()
        done.baked += 1
        done.instances += in_flight.instances
        report(progress, in_flight.position + 1, total, "bake")
    return None


def label_view(job: BakeJob, view: View) -> FrameLabels:
    """The labels of one view as the bake makes them (:func:`render_view`, then :func:`finish_view`), in one
    call: for callers that label a single view."""
    return finish_view(job, render_view(job, view))


def render_view(job: BakeJob, view: View) -> RenderedView:
    """Stages 1-3 of one view's labels (:meth:`~..labels.frame.FrameLabeler.render`), with the scene at every
    pixel when a writer stores depth maps. A synthetic view's picture is its render (box objects' outlines
    follow its colours, as a photo's)."""
    image = None
    if view.image_path is None and job.ctx.rendered_rgb is not None and job.labeler.box_ids:
        image = job.ctx.rendered_rgb(view)
    return job.labeler.render(view, full_depth=any(w.needs_depth for w in job.writers), image=image)


def finish_view(job: BakeJob, rendered: RenderedView) -> FrameLabels:
    """The label math of a rendered view, with the confidence map when a writer stores it."""
    return job.labeler.finish(rendered, confidence=any(w.needs_confidence for w in job.writers))


def assemble(job: BakeJob) -> int:
    """Stage 3: every writer's aggregate files from all finished fragments; returns how many frames are done.

    Holds the lock on the manifest from reading the fragments to the last write: pieces of one bake that finish
    at once take turns, so the last one to write has read every fragment (without it, a piece could write an
    aggregate made from fewer fragments over a complete one)."""
    with writing_into(job.out_dir), file_lock(job.out_dir / MANIFEST):
        fragments = read_fragments(job.fragments_dir)
        for writer in job.writers:
            _write_all(job.out_dir, writer.assemble(job.ctx, [(i, f[writer.name]) for i, f in fragments]),
                       write_bytes_if_changed)
    return len(fragments)


# --- steps ----------------------------------------------------------------------------------------------


def frame_labeler(spec: LabelSpec, models: dict[int, Any], depth_source, options: LabelOptions, *,
                  backend: Optional[str] = None, device: str = "cpu", cast_threads: Optional[int] = None
                  ) -> FrameLabeler:
    """The per-frame labeler of a spec: every object with a model (mesh) is ray-cast at its pose
    (``backend``: embree on CPU, torch on CUDA unless named; ``cast_threads``: objects cast at once, see
    :class:`FrameLabeler`)."""
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
                        units_to_mm=spec.units_to_mm, options=options, cast_threads=cast_threads)


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


def _when_slow(progress: Optional[ProgressFn], after_s: float = 1.0) -> Optional[ProgressFn]:
    """``progress`` for a short stage that is shown only once it has taken ``after_s`` (checking a few photos
    would flash a progress bar that then starts again for the bake; checking thousands is worth showing)."""
    if progress is None:
        return None
    start = time.monotonic()

    def report_when_slow(done: int, total: int, stage: str) -> None:
        if time.monotonic() - start >= after_s:
            progress(done, total, stage)

    return report_when_slow


@contextmanager
def writing_into(out_dir: Path) -> Iterator[None]:
    """An OSError inside (a read-only folder, a full disk...) becomes one NeuralLabelError naming the output
    folder (field ``out``), or naming the input file it came from when that lies elsewhere."""
    try:
        yield
    except OSError as exc:
        name = exc.filename
        if name is not None and not _inside(Path(name), out_dir):
            raise NeuralLabelError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        raise output_error(out_dir, exc) from None


def _inside(path: Path, folder: Path) -> bool:
    try:
        return within(Path(path).resolve(), Path(folder).resolve())
    except OSError:
        return True


def photos_fingerprint(dataset: Dataset) -> str:
    """A hash of the dataset's photo set: which frames have a photo, and each photo's name and size in bytes
    (cheap: no pixels are read). Frame indices are positions in the dataset's list, so a photo that vanished
    or was replaced changes what a frame index means; the manifest holds this to refuse such a re-run."""
    entries: list[Any] = []
    for index in range(dataset.frame_count):
        frame = dataset.by_index.get(index)
        if frame is None:
            entries.append([index, None])
            continue
        try:
            size = frame.image_path.stat().st_size
        except OSError:
            size = None
        entries.append([index, frame.file_path or frame.image_path.name, size])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def load_checked_field(spec: LabelSpec, dataset: Dataset, device: str) -> FieldQuery:
    """The spec's field as a depth source, refused when its density holds NaN/infinity or when it was trained
    on other frames than ``dataset``'s train split (as ``train`` counts them: its ``downscale``, the frames with
    a photo). A checkpoint that records no dataset (made by hand, not by ``train``) is not compared."""
    from ..field.checkpoint import check_finite, check_trained_on, load_checkpoint

    checkpoint = load_checkpoint(spec.field_path, device=device)
    try:
        check_finite(checkpoint.field, what=None)
    except NeuralLabelError as exc:
        raise NeuralLabelError(f"{spec.field_path}: {exc}") from None
    if checkpoint.dataset.get("fingerprint") is not None:
        try:
            check_trained_on(checkpoint, dataset, dataset.path, source=spec.field_path, what=None)
        except NeuralLabelError as exc:
            missing = (f" ({len(dataset.skipped)} of its photos are missing now; the field is compared with the "
                       f"train frames that have one)") if dataset.skipped else ""
            raise NeuralLabelError(f"{exc}{missing}; use the field trained on this dataset") from None
    return FieldQuery(checkpoint.field, device=device)


def _object_models(spec: LabelSpec, views: dict[int, View], out_dir: Path, depth_source, resolution: int,
                   progress: Optional[ProgressFn], options: LabelOptions = LabelOptions(),
                   shared: Optional[SharedModels] = None) -> dict[int, Any]:
    """instance_id -> model mesh in the object's own frame (world units); box objects need a field. A box
    object's mesh is carved by its labels in the training views (:mod:`..labels.carve`); the bake's own cache
    takes it from ``shared`` (earlier bakes' meshes) before it extracts one."""
    from ..labels import carve
    from ..labels.box_mesh import extract_box_mesh

    models: dict[int, Any] = {}
    cache = out_dir / STATE_DIR / "models"
    voters = _Voters(spec, views, depth_source, options, progress)
    for obj in spec.objects:
        if obj.kind == "mesh":
            models[obj.instance_id] = obj.mesh
            continue
        if not isinstance(depth_source, DensityQuery):
            continue  # no field: the box object's labels come from depth alone, it gets no model

        def extract(obj=obj):  # only when not cached yet
            box = Box(obj.pose, obj.size)
            level = surface_density_level(spec, views, depth_source, box)
            labelled = voters.of(obj.instance_id, box)
            carver = support = None
            if labelled:
                voxel = float(np.max(obj.size)) / resolution
                carver = carve.carver(labelled, carve.BAND_VOXELS * voxel)
                support = partial(carve.unlabelled_surface, labelled, obj.pose, obj.size)
                level = None if level is None else level * carve.CARVED_LEVEL_SHARE
            mesh = extract_box_mesh(depth_source.density, obj.pose, obj.size, spec.world_from_data,
                                    resolution=resolution, step=depth_source.step,
                                    threshold=level, progress=progress, name=obj.name, carve=carver,
                                    support_points=support)
            if mesh is None:
                raise _NoSurface()
            return mesh

        if shared is not None:
            extract = partial(shared.mesh, obj.instance_id, extract)
        try:
            models[obj.instance_id] = cached_mesh(cache / f"instance_{obj.instance_id:06d}.npz", extract)
        except _NoSurface:
            # labelled from the field's surface alone: 0 visible pixels where the field holds nothing
            warnings.warn(f"object {obj.name!r}: the field holds no surface inside its box; it gets 0 visible "
                          f"pixels", LabelWarning, stacklevel=2)
    return models


class _Voters:
    """The training views' labels that carve box objects' meshes (:mod:`..labels.carve`), made on first use and
    each view labelled once for every box: the box objects alone, without meshes (what their meshes are carved
    from), the colour step as the bake's options say. Mesh objects are left out: the scene is then asked only
    inside the boxes (half the time). Their pixels count as nobody's, which carves right: where a mesh object
    stands in front of the box its surface hides the box's points (no vote), and where it stands behind, the
    view does see past the box (a free vote)."""

    def __init__(self, spec: LabelSpec, views: dict[int, View], depth_source, options: LabelOptions,
                 progress: Optional[ProgressFn]) -> None:
        self.spec, self.views, self.depth_source, self.options = spec, views, depth_source, options
        self.progress = progress
        self._labeler: Optional[FrameLabeler] = None
        self._labels: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # view index -> (instance ids, scene z-depth)

    def of(self, instance_id: int, box: Box) -> list["LabelledView"]:
        from ..labels.carve import LabelledView, voting_views

        chosen = voting_views([self.views[i] for i in sorted(self.views)], box)
        if not chosen:
            return []
        if self._labeler is None:
            boxes = dataclasses.replace(self.spec, objects=[o for o in self.spec.objects if o.kind == "box"])
            self._labeler = frame_labeler(boxes, {}, self.depth_source, self.options)
        out = []
        for n, view in enumerate(chosen):
            if view.index not in self._labels:
                labels = self._labeler.label(view, full_depth=False, confidence=False)
                self._labels[view.index] = (labels.instance, labels.source_depth)
            instance, z_depth = self._labels[view.index]
            out.append(LabelledView(view, instance == instance_id, instance == 0, z_depth))
            report(self.progress, n + 1, len(chosen), "views of box meshes")
        return out


#: the share of a box's rendered surface points whose density may lie under the iso-level of its extracted mesh.
#: A face the cameras see less often (a cube's sides under cameras that look down) is fainter in the field than
#: the rest: at the median level only its top face came out (scripts/bench_labels.py: box_meshes)
SURFACE_LEVEL_QUANTILE = 0.25


class _NoSurface(Exception):
    """A box object's box holds no surface of the field (no mesh to extract)."""


def surface_density_level(spec: LabelSpec, views: dict[int, View], depth_source, box: Box, *, max_frames: int = 6,
                          max_pixels: int = 4096, min_points: int = 32) -> Optional[float]:
    """The field's density where it renders the surface inside ``box`` (world frame): the lower quartile
    (``SURFACE_LEVEL_QUANTILE``) of the density at the points of its depth maps (median depth) inside the box,
    from up to ``max_frames`` evenly spread views. None when fewer than ``min_points`` such points are found."""
    picks = spread_views([views[i] for i in sorted(views)], max_frames)
    corners = box.corners()
    data_from_world = Similarity(spec.world_from_data).inverse()
    densities = []
    for view in picks:
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
    return float(np.quantile(np.concatenate(densities), SURFACE_LEVEL_QUANTILE))


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
    if not unseen:
        return
    message = (f"object {unseen[0]!r} is outside every camera of the dataset (check its pose, and "
               f"world_from_data)" + (f"; also {', '.join(unseen[1:])}" if unseen[1:] else ""))
    if len(unseen) == len(objects):
        raise NeuralLabelError(message)  # nothing could be labelled: surely a wrong pose or world_from_data
    warnings.warn(f"{message}; it gets no label", LabelWarning, stacklevel=2)


def read_fragments(frames_dir: Path) -> list[tuple[int, dict]]:
    """The finished frames' fragments, ``[(frame index, {format: fragment})]`` sorted by index."""
    out = []
    if frames_dir.is_dir():
        for path in sorted(frames_dir.glob("[0-9]*.json")):
            out.append((int(path.stem), json.loads(path.read_text())))
    out.sort(key=lambda x: x[0])
    return out
