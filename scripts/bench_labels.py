"""Benchmark the labels of a trained field (issue 12) against Cycles truth, on a scene seed nobody tuned on.

    .venv/bin/python scripts/bench_labels.py [--minutes 10] [--seed 11] [--quick] [--no-cycles]
    .venv/bin/python scripts/bench_labels.py --speed-only --field F.pt [--scene DIR] [--speed-frames N]

1. A generated scene (``scripts/make_scene.py``, seed ``--seed``; 640x480, 6 objects with the Stanford bunny and
   armadillo and a glass), cached under ``.cache/bench_labels``. Its truth: ``gt/instance`` (Cycles' Object Index
   pass) and ``gt/depth`` (Z pass), as make_scene.py's docstring lays them out.
2. A field trained on its train images through the default recipe (``core.train``) for ``--minutes``, cached.
3. A spec: the true meshes at their true poses for the Stanford meshes and the glass; boxes (the true enclosing
   box grown 5 % on every side, its bottom reaching into the table, as a user draws one) around two primitives;
   the other objects left out as unannotated clutter, which must occlude what is behind it.
4. ``bake`` of the held-out frames with the field and all formats (frames per second at the scene's size);
   then, per object: visible-mask IoU mean and min over frames, full-mask IoU against Cycles renders of each
   object alone, box objects' visible IoU (and without the photo's colours at their outlines:
   ``box_field_only``), the extracted box meshes' Chamfer distance to the true meshes (% of
   the object's diagonal), depth error on visible mesh pixels; the confidence: the share of wrongly labelled
   pixels with confidence < 0.5, and the share of the pixels inside the objects' 2D boxes with confidence < 0.5.
5. The band curve: visible-mask IoU (mean, min) of the mesh objects, and how many of the pixels that clutter
   truly hides are labelled occluded, for a range of occlusion bands (``LabelOptions.occlusion_abs_mm``), from
   one render per frame. Then the same on up to 4 frames where clutter hides an annotated mesh (held-out frames
   first, then training frames, whose photos the field has seen: each frame's split is reported):
   ``clutter_occlusion``. And the accuracy and confidence scores on as many training frames
   (``train_frames``): the photos a user labels are the ones the field was trained on.
6. Speed (issue 12's two speed targets), in the same run: the mesh-only bake (every true mesh of the scene, field
   null, all formats; whole bakes of 1/8 of ``--speed-frames`` and of all of them, the scene's cameras listed
   over and over, so the long one is long enough for its throughput to stand out of its start-up: seconds per
   extra frame) and,
   unless ``--no-cycles``, Blender Cycles rendering the same frames' Object Index + Z passes in its fastest fair
   set-up (1 sample, no bounces, persistent data, one animation; also per extra frame, in a bpy subprocess),
   both writing their files into the same folder (``--speed-dir``, default the system's temporary folder):
   their ratio is ``mesh_only_speedup_vs_cycles`` (the labels alone, in memory, give
   ``mesh_only_labels_speedup_vs_cycles``, reported beside it); and the bake with the field and all outputs in
   frames per second, timed the same way (whole bakes of 2 and ``--field-speed-frames`` frames: per extra
   frame; step 4's own seconds per frame, first frame included, are reported beside it). ``--speed-only`` runs
   steps 1, 4 and 6 alone (with ``--field``: no training).

``--quick``: a CI-size run (a small scene, a 1-minute field, 3 frames): the numbers are not the targets' scale.
Prints one JSON line with every number, each target's value and pass, and ``meets`` (all passed).
The field takes its bounds from the data (cameras and SfM points), as for any real capture.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MAKE_SCENE = REPO / "scripts" / "make_scene.py"
MESHES = REPO.parent / "shared" / "data" / "meshes"
CACHE = REPO / ".cache" / "bench_labels"
BANDS_MM = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)

TARGETS = {
    "mesh_visible_iou_mean": (">=", 0.99), "mesh_visible_iou_min": (">=", 0.97), "mesh_full_iou": (">=", 0.999),
    "box_visible_iou_mean": (">=", 0.93), "box_chamfer_fraction_of_diagonal": ("<=", 0.02),
    "mesh_depth_error_mm": ("<=", 0.5), "glass_depth_error_mm": ("<=", 1.0),
    "wrong_pixels_flagged": (">=", 0.90), "box_pixels_flagged": ("<=", 0.10),
    "frames_per_second_all_outputs": (">=", 1.0), "mesh_only_speedup_vs_cycles": (">=", 5.0),
}
SPEED_TARGETS = ("frames_per_second_all_outputs", "mesh_only_speedup_vs_cycles")


def scene_args(args: argparse.Namespace) -> list[str]:
    out = ["--views", str(args.views), "--width", str(args.width), "--height", str(args.height),
           "--objects", "6", "--glass", "--seed", str(args.seed), "--test-every", "4",
           "--samples", str(args.samples)]
    if (MESHES / "bunny.obj").is_file():
        out += ["--meshes", str(MESHES)]
    return out


def cached_scene(args: argparse.Namespace) -> Path:
    sargs = scene_args(args)
    digest = hashlib.sha256(MAKE_SCENE.read_bytes())
    digest.update(json.dumps(sargs).encode())
    target = CACHE / f"scene-{digest.hexdigest()[:16]}"
    if not (target / "gt" / "objects.json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, str(MAKE_SCENE), "--out", str(target), "--overwrite", *sargs],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"make_scene.py failed:\n{result.stderr[-3000:]}")
    return target


def recipe_fingerprint() -> str:
    """A hash of the training recipe's source (the training loop, its losses and batches, the field model)."""
    import neurallabel.core.field.model as model_module
    import neurallabel.core.train as train_package

    digest = hashlib.sha256()
    files = sorted(Path(train_package.__file__).parent.glob("*.py")) + [Path(model_module.__file__)]
    for source in files:
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:12]


def cached_field(scene: Path, minutes: float, threads: int) -> tuple[Path, dict]:
    """A field trained on the scene through the default recipe (``TrainOptions`` defaults, ``minutes`` long),
    cached under the recipe's fingerprint, so a changed recipe trains a new field."""
    from neurallabel.core.train.loop import TrainOptions, train_field

    path = CACHE / f"field-{scene.name}-{minutes:g}min-{recipe_fingerprint()}.pt"
    info_path = path.with_suffix(".json")
    if not (path.exists() and info_path.is_file()):
        result = train_field(scene, path, TrainOptions(minutes=minutes, threads=threads or None))
        info_path.write_text(json.dumps(result.to_dict()))
    return path, json.loads(info_path.read_text())


def bench_spec(scene: Path, field_path):
    """True meshes for the Stanford meshes and the glass (the first primitive when there is none); boxes around
    the next two primitives; the others are left out: unannotated clutter."""
    from neurallabel.core.data.truth import load_scene_truth
    from neurallabel.core.spec import spec_from_scene

    truth = load_scene_truth(scene)
    meshes = [o for o in truth.objects if o.category in ("bunny", "armadillo", "glass")]
    primitives = [o for o in truth.objects if o not in meshes]
    if not meshes:
        meshes, primitives = primitives[:1], primitives[1:]
    boxes = primitives[:2]
    keep = {o.name for o in meshes + boxes}
    spec = spec_from_scene(scene, field_path=field_path, box_objects=tuple(o.name for o in boxes))
    spec.objects = [o for o in spec.objects if o.name in keep]
    for obj in spec.objects:
        if obj.kind == "box":
            obj.size = obj.size * 1.1  # 5 % on every side: its bottom reaches into the table
    return spec, truth


def box_models(out: Path, spec) -> dict:
    """The bake's extracted box meshes (its model cache), by instance id."""
    import trimesh

    models = {}
    for obj in spec.objects:
        path = out / ".neurallabel" / "models" / f"instance_{obj.instance_id:06d}.npz"
        if obj.kind == "box" and path.is_file():
            with np.load(path) as data:
                models[obj.instance_id] = trimesh.Trimesh(data["vertices"], data["faces"], process=False)
    return models


class RenderCache:
    """A scene query that remembers its last answer per view (same pixels asked): the band curve labels the same
    frames many times with one render each (the decision pixels do not depend on the band)."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.name = scene.name
        self.measures_confidence = scene.measures_confidence
        self.gives_samples = getattr(scene, "gives_samples", False)
        self._answers: dict = {}

    def at_pixels(self, view, rows, cols, *, confidence=False, samples_for=None):
        key = (view.index, hashlib.sha1(np.ascontiguousarray(rows).tobytes() + np.ascontiguousarray(cols)
                                         .tobytes()).hexdigest(), confidence, samples_for is not None)
        if key not in self._answers:
            kwargs = {"samples_for": samples_for} if samples_for is not None else {}
            self._answers[key] = self.scene.at_pixels(view, rows, cols, confidence=confidence, **kwargs)
        return self._answers[key]


# --- the Cycles reference (runs in a bpy subprocess) -------------------------------------------------------


def cycles_scene(config: dict):
    """Blender set up for the Cycles truth passes of the scene's true meshes: (bpy, make_scene module, dataset,
    {instance_id: blender object}, camera, file output node, EXR folder)."""
    import importlib.util

    import bpy

    spec_ = importlib.util.spec_from_file_location("make_scene", MAKE_SCENE)
    make_scene = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(make_scene)
    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.data.truth import load_scene_truth

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    truth = load_scene_truth(config["scene"])
    dataset = load_dataset(truth.transforms_path)
    objects = {}
    for obj in truth.objects:
        bpy.ops.wm.ply_import(filepath=str(obj.mesh_path))
        blender_obj = bpy.context.selected_objects[0]
        blender_obj.matrix_world = make_scene._blender_matrix(obj.object_to_world)
        blender_obj.pass_index = obj.instance_id
        objects[obj.instance_id] = blender_obj
    intr = dataset.frames[0].intrinsics
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.data.sensor_fit = "HORIZONTAL"
    cam.data.sensor_width = 36.0
    cam.data.lens = intr.fx / intr.width * 36.0
    cam.data.shift_x = -(intr.cx - intr.width / 2) / intr.width
    cam.data.shift_y = (intr.cy - intr.height / 2) / intr.width
    cam.data.clip_start, cam.data.clip_end = 0.01, 100.0
    scene.render.resolution_x, scene.render.resolution_y = intr.width, intr.height
    scene.render.resolution_percentage = 100
    exr_dir = Path(tempfile.mkdtemp(prefix="bench-passes-", dir=config.get("write_dir")))
    file_out = make_scene.setup_render(bpy, argparse.Namespace(seed=0, threads=config["threads"]), exr_dir)
    make_scene._set_truth_mode(bpy)
    return bpy, make_scene, dataset, objects, cam, file_out, exr_dir


def cycles_speed_worker(config_path: str) -> None:
    """Time Cycles' Object Index + Z passes in its fastest fair set-up: 1 sample, no bounces, persistent data,
    the frames as one animation (the camera keyed per frame; the compositor writes each frame's EXR). Two
    animations of ``counts`` frames (the scene's frames, repeated); seconds per extra frame = the difference of
    their times over the difference of their lengths, so start-up, scene sync and BVH build cancel out."""
    config = json.loads(Path(config_path).read_text())
    bpy, make_scene, dataset, _, cam, file_out, exr_dir = cycles_scene(config)
    scene = bpy.context.scene
    cycles = scene.cycles
    for name in ("max_bounces", "diffuse_bounces", "glossy_bounces", "transmission_bounces",
                 "volume_bounces", "transparent_max_bounces"):
        setattr(cycles, name, 0)
    scene.render.use_persistent_data = True
    frames = config["frames"]
    longest = max(config["counts"])
    for n in range(longest):
        cam.matrix_world = make_scene._blender_matrix(dataset.frame(frames[n % len(frames)]).cam_to_data)
        cam.keyframe_insert("location", frame=n + 1)
        cam.keyframe_insert("rotation_euler", frame=n + 1)
    file_out.file_name = "anim_"
    seconds = {}
    scene.frame_start = scene.frame_end = 1
    bpy.ops.render.render(animation=True)  # warm-up: kernels, scene sync, BVH
    for count in config["counts"]:
        best = float("inf")
        for _ in range(max(1, config.get("repeats", 1))):  # the best of a few: the machine is shared
            scene.frame_start, scene.frame_end = 1, count
            t0 = time.perf_counter()
            bpy.ops.render.render(animation=True)
            best = min(best, time.perf_counter() - t0)
        seconds[str(count)] = best
    written = len(list(exr_dir.glob("*.exr")))
    shutil.rmtree(exr_dir, ignore_errors=True)
    Path(config["out"]).write_text(json.dumps({"seconds": seconds, "exr_files": written}))


def cycles_worker(config_path: str) -> None:
    """Render Object Index + Z of the true meshes at 1 sample for the frames; then each object alone."""
    config = json.loads(Path(config_path).read_text())
    bpy, make_scene, dataset, objects, cam, file_out, exr_dir = cycles_scene(config)
    intr = dataset.frames[0].intrinsics

    def render(index: int, name: str):
        cam.matrix_world = make_scene._blender_matrix(dataset.frame(index).cam_to_data)
        file_out.file_name = f"{name}_"
        bpy.ops.render.render()
        exr = exr_dir / f"{name}_pass.exr"
        z, ids = make_scene._read_truth_exr(bpy, exr, intr.width, intr.height)
        exr.unlink()
        return z, ids

    render(config["frames"][0], "warmup")  # scene sync and BVH build, once (a tool renders many frames)
    seconds = []
    passes = {}
    for i in config["frames"]:
        best = float("inf")
        for _ in range(max(1, config.get("repeats", 1))):  # the best of a few: the machine is shared
            t0 = time.perf_counter()
            z, ids = render(i, f"{i:06d}")
            best = min(best, time.perf_counter() - t0)
        seconds.append(best)
        passes[f"ids_{i}"], passes[f"z_{i}"] = ids, z
    for i in config["full_frames"]:
        for instance_id, blender_obj in objects.items():
            for other in objects.values():
                other.hide_render = other is not blender_obj
            _, ids = render(i, f"{i:06d}_{instance_id}")
            passes[f"full_{i}_{instance_id}"] = ids == instance_id
        for other in objects.values():
            other.hide_render = False
    np.savez_compressed(config["out"], **passes)
    Path(config["out"] + ".json").write_text(json.dumps({"seconds": seconds}))


def cycles_reference(scene: Path, frames: list[int], full_frames: list[int], threads: int,
                     repeats: int = 1) -> tuple[dict, dict]:
    out = CACHE / f"cycles-{scene.name}-{hashlib.sha256(json.dumps([frames, full_frames]).encode()).hexdigest()[:8]}"
    config = {"scene": str(scene), "frames": frames, "full_frames": full_frames, "threads": threads,
              "repeats": repeats, "out": str(out) + ".npz"}
    config_path = Path(str(out) + ".config.json")
    config_path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, __file__, "--cycles-worker", str(config_path)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"Cycles reference failed:\n{result.stderr[-3000:]}")
    passes = dict(np.load(config["out"]))
    timing = json.loads(Path(config["out"] + ".json").read_text())
    return passes, timing


def cycles_speed(scene: Path, frames: list[int], threads: int, counts: tuple[int, int], repeats: int = 1,
                 write_dir: Optional[Path] = None) -> dict:
    """Cycles' seconds per extra frame of Object Index + Z (:func:`cycles_speed_worker`, in a bpy subprocess),
    its EXRs written below ``write_dir`` (default: the system's temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="bench-cycles-speed-") as tmp:
        config = {"scene": str(scene), "frames": frames, "threads": threads, "counts": list(counts),
                  "repeats": repeats, "out": str(Path(tmp) / "speed.json"),
                  "write_dir": None if write_dir is None else str(write_dir)}
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        result = subprocess.run([sys.executable, __file__, "--cycles-speed-worker", str(config_path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"Cycles speed run failed:\n{result.stderr[-3000:]}")
        timing = json.loads(Path(config["out"]).read_text())
    small, big = counts
    seconds = timing["seconds"]
    return {"setup": "Object Index + Z, 1 sample, 0 bounces, persistent data, one animation, "
                     f"{threads} threads", "counts": list(counts), "seconds": seconds,
            "exr_files": timing["exr_files"],
            "seconds_per_extra_frame": (seconds[str(big)] - seconds[str(small)]) / (big - small)}


# --- metrics -------------------------------------------------------------------------------------------------


def mean(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def label_frames(labeler, spec, dataset, frames) -> dict:
    from neurallabel.core.geometry.transforms import Similarity
    from neurallabel.core.geometry.view import View

    return {i: labeler.label(View.from_frame(dataset.frame(i), Similarity(spec.world_from_data)), full_depth=False)
            for i in frames}


def evaluate(labels: dict, spec, truth, passes: dict) -> dict:
    """Per object and per class (mesh, glass, box): visible-mask IoU (mean, min over frames), full-mask IoU
    against Cycles' per-object renders, depth error on visible pixels; the confidence's two shares."""
    from neurallabel.core.eval.labels import mask_iou, score_objects, summarize

    kinds = {o.instance_id: "box" if o.kind == "box" else ("glass" if o.transparent else "mesh")
             for o in spec.objects}
    names = {o.instance_id: o.name for o in spec.objects}
    per_object: dict = {names[k]: {"kind": kind, "visible_iou": [], "full_iou": []} for k, kind in kinds.items()}
    scores: dict = {c: [] for c in ("mesh", "glass", "box")}
    wrong_total = wrong_flagged = boxed_total = boxed_flagged = 0
    # reliability: of the pixels inside the objects' 2D boxes, by confidence tenth, how many and how many right
    bin_pixels, bin_right = np.zeros(10, np.int64), np.zeros(10, np.int64)
    for i, lab in labels.items():
        true_ids = truth.instance_ids(i).copy()
        true_ids[~np.isin(true_ids, list(kinds))] = 0  # clutter's pixels are background for the labels
        for score in score_objects(i, lab.instance, true_ids, truth.z_depth(i).astype(np.float64), list(kinds),
                                   depth=lab.depth, source_depth=lab.source_depth):
            scores[kinds[score.instance_id]].append(score)
            per_object[names[score.instance_id]]["visible_iou"].append(score.visible_iou)
            key = f"full_{i}_{score.instance_id}"
            if key in passes:
                full = next((x.full_mask for x in lab.instances if x.instance_id == score.instance_id),
                            np.zeros_like(lab.binary))
                per_object[names[score.instance_id]]["full_iou"].append(mask_iou(full, passes[key]))
        if lab.confidence is not None:
            unsure = lab.confidence < 0.5
            wrong = lab.instance != true_ids
            wrong_total += int(wrong.sum())
            wrong_flagged += int((wrong & unsure).sum())
            inside = np.zeros_like(wrong)
            for k in kinds:
                rows, cols = np.nonzero(true_ids == k)
                if len(rows):
                    inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            boxed_total += int(inside.sum())
            boxed_flagged += int((inside & unsure).sum())
            tenth = np.clip((lab.confidence[inside] * 10).astype(np.int64), 0, 9)
            bin_pixels += np.bincount(tenth, minlength=10)
            bin_right += np.bincount(tenth[~wrong[inside]], minlength=10)
    objects = {}
    for name, rec in per_object.items():
        v = rec["visible_iou"]
        objects[name] = {"kind": rec["kind"], "visible_iou_mean": mean(v), "visible_iou_min": min(v) if v else None,
                         "full_iou": mean(rec["full_iou"])}
    classes = {}
    for cls, class_scores in scores.items():
        pooled = summarize(class_scores)
        classes[cls] = {"visible_iou_mean": pooled["visible_iou_mean"], "visible_iou_min": pooled["visible_iou_min"],
                        "full_iou": mean([o["full_iou"] for o in objects.values() if o["kind"] == cls]),
                        "instances": pooled["instances"], "depth_error_mm": pooled["depth_error_mm"],
                        "field_depth_error_mm": pooled["source_depth_error_mm"]}
    confidence = {"wrong_pixels": wrong_total, "boxed_pixels": boxed_total,
                  "coco_ignore": coco_ignore(labels, truth, kinds),
                  # a confidence that means P(label right) has a right share near each tenth's middle
                  "reliability": {"confidence_tenth": [round(0.1 * k + 0.05, 2) for k in range(10)],
                                  "pixels": bin_pixels.tolist(),
                                  "right_share": [round(float(r / n), 4) if n else None
                                                  for r, n in zip(bin_right, bin_pixels)]},
                  "wrong_pixels_flagged": wrong_flagged / wrong_total if wrong_total else None,
                  "box_pixels_flagged": boxed_flagged / boxed_total if boxed_total else None}
    return {"objects": objects, "classes": classes, "confidence": confidence}


def coco_ignore(labels: dict, truth, kinds: dict) -> dict:
    """COCO's ``ignore`` (:func:`neurallabel.core.export.coco.ignored`) against the truth: of the instances with
    visible pixels, how many it ignores and how right their masks are (precision: the share of the mask on the
    object), and how many masks are mostly wrong (precision under 1/2) and how many of those it ignores."""
    from neurallabel.core.export.coco import ignored

    out = {"instances": 0, "ignored": 0, "ignored_precision": [], "mostly_wrong": 0, "mostly_wrong_ignored": 0}
    for i, lab in labels.items():
        true_ids = truth.instance_ids(i)
        for inst in lab.instances:
            mask = inst.visible_mask
            if inst.instance_id not in kinds or not mask.any():
                continue
            precision = float(np.count_nonzero(mask & (true_ids == inst.instance_id)) / np.count_nonzero(mask))
            out["instances"] += 1
            if ignored(inst):
                out["ignored"] += 1
                out["ignored_precision"].append(round(precision, 3))
            if precision < 0.5:
                out["mostly_wrong"] += 1
                out["mostly_wrong_ignored"] += int(ignored(inst))
    return out


def clutter_hidden(labels: dict, spec, truth, mesh_only: dict) -> tuple[float | None, int]:
    """Of the pixels where an annotated mesh's silhouette lies behind unannotated clutter (Cycles says clutter),
    the share labelled not that object, and how many such pixels there are (a share over a handful of pixels
    says nothing: the scene then barely tests occlusion)."""
    annotated = {o.instance_id for o in spec.objects}
    hidden = caught = 0
    for i, lab in labels.items():
        true_ids = truth.instance_ids(i)
        clutter = (true_ids > 0) & ~np.isin(true_ids, list(annotated))
        behind = clutter & (mesh_only[i].instance > 0)
        hidden += int(behind.sum())
        caught += int((behind & (lab.instance != mesh_only[i].instance)).sum())
    return (caught / hidden if hidden else None), hidden


def clutter_frames(spec, dataset, truth, models, *, limit: int = 4, min_pixels: int = 200) -> dict:
    """Up to ``limit`` frames (held-out ones first, then the most hidden pixels) where unannotated clutter hides
    at least ``min_pixels`` of an annotated mesh's silhouette, with their mesh-only labels (frame -> labels): the
    held-out frames alone may show no occlusion by clutter at all."""
    from neurallabel.core.labels.frame import LabelOptions
    from neurallabel.core.pipeline.bake import frame_labeler

    full_objects = spec.objects
    spec.objects = [o for o in spec.objects if o.kind == "mesh"]
    try:
        labeler = frame_labeler(spec, models, None, LabelOptions())
        frames = [f.index for f in dataset.frames]
        mesh_only = label_frames(labeler, spec, dataset, frames)
    finally:
        spec.objects = full_objects
    annotated = [o.instance_id for o in full_objects]
    ranked = []
    for i in frames:
        true_ids = truth.instance_ids(i)
        hidden = int(((true_ids > 0) & ~np.isin(true_ids, annotated) & (mesh_only[i].instance > 0)).sum())
        if hidden >= min_pixels:
            ranked.append((dataset.frame(i).split != "test", -hidden, i))
    return {i: mesh_only[i] for _, _, i in sorted(ranked)[:limit]}


def repeated_dataset(scene: Path, count: int, folder: Path) -> Path:
    """The scene's transforms.json with its frames listed over and over (absolute photo paths) up to ``count``
    frames, in ``folder``: a bake long enough for its throughput to stand out of its start-up, without
    rendering more photos (Cycles renders the same cameras, repeated the same way)."""
    data = json.loads((scene / "transforms.json").read_text())
    frames = [{**f, "file_path": str((scene / f["file_path"]).resolve())} for f in data["frames"]]
    data["frames"] = [frames[n % len(frames)] for n in range(count)]
    path = folder / "transforms.json"
    path.write_text(json.dumps(data))
    return path


def timed_bakes(scene: Path, spec, counts: tuple[int, ...], repeats: int, write_dir: Optional[Path], prefix: str,
                bake) -> dict[str, float]:
    """Seconds of ``bake(spec, out)`` for the first ``count`` frames of :func:`repeated_dataset`, for each of
    ``counts`` (the best of ``repeats``), each into a fresh folder below ``write_dir``."""
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=prefix, dir=write_dir) as tmp:
        spec.data_path = repeated_dataset(scene, max(counts), Path(tmp))
        for count in counts:
            best = float("inf")
            for r in range(repeats):
                spec.frames = list(range(count))
                t0 = time.perf_counter()
                bake(spec, Path(tmp) / f"bake-{count}-{r}")
                best = min(best, time.perf_counter() - t0)
            seconds[str(count)] = best
    return seconds


def mesh_only_speed(scene: Path, counts: tuple[int, int], repeats: int, write_dir: Optional[Path] = None) -> dict:
    """The mesh-only bake -- every true mesh of the scene at its true pose, field null, all formats -- timed as
    a whole bake (checks, photos, models, frames, aggregates) of the first ``counts[0]`` and ``counts[1]``
    frames of :func:`repeated_dataset` into fresh folders below ``write_dir`` (default: the system's temporary
    folder, where Cycles writes too): seconds per extra frame (the best of ``repeats``: the first run of a
    process also pays for its imports); and the labels alone (in memory, no files) per frame, over the
    scene's own frames."""
    from neurallabel.core.geometry.transforms import Similarity
    from neurallabel.core.geometry.view import View
    from neurallabel.core.labels.frame import LabelOptions
    from neurallabel.core.pipeline.bake import bake, frame_labeler
    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.spec import spec_from_scene

    spec = spec_from_scene(scene)
    small, big = counts
    seconds = timed_bakes(scene, spec, counts, repeats, write_dir, "bench-mesh-bake-", bake)
    labeler = frame_labeler(spec, {o.instance_id: o.mesh for o in spec.objects}, None, LabelOptions())
    views = [View.from_frame(f, Similarity(spec.world_from_data))
             for f in load_dataset(scene / "transforms.json").frames[:big]]
    labeler.label(views[0])  # Embree's scenes are built on first use
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for view in views:
            labeler.label(view)
        best = min(best, (time.perf_counter() - t0) / len(views))
    per_extra = (seconds[str(big)] - seconds[str(small)]) / (big - small)
    return {"objects": len(spec.objects), "formats": "bop, coco, raw", "counts": list(counts),
            "seconds": seconds, "bake_seconds_per_extra_frame": per_extra, "labels_in_memory_seconds_per_frame": best}


def field_bake_speed(scene: Path, field_path: Path, field, counts: tuple[int, int], repeats: int,
                     write_dir: Optional[Path], device: str, box_resolution: Optional[int]) -> dict:
    """The bake with the field and all outputs (the bench's spec: meshes, boxes, clutter left out), timed as
    the mesh-only bake is: whole bakes of the first ``counts[0]`` and ``counts[1]`` frames of
    :func:`repeated_dataset` into fresh folders, seconds per extra frame (the best of ``repeats``). What every
    bake pays once -- the field's box meshes, the label structures' first build -- is not a frame's cost."""
    from neurallabel.core.pipeline.bake import bake

    spec, _ = bench_spec(scene, field_path)
    small, big = counts
    seconds = timed_bakes(scene, spec, counts, repeats, write_dir, "bench-field-bake-",
                          partial(bake, depth_source=field, device=device, box_resolution=box_resolution))
    per_extra = (seconds[str(big)] - seconds[str(small)]) / (big - small)
    return {"objects": len(spec.objects), "formats": "bop, coco, raw", "counts": list(counts), "seconds": seconds,
            "bake_seconds_per_extra_frame": per_extra, "frames_per_second": 1.0 / per_extra if per_extra > 0 else None}


def speed_section(args: argparse.Namespace, scene: Path, field_bake: dict, field_path: Path, field) -> dict:
    """Issue 12's speed targets, measured in one run: the mesh-only bake against Cycles' Object Index + Z per
    extra frame (the same frames, the same counts), and the field bake with all outputs in frames per second,
    per extra frame of whole bakes as well (:func:`field_bake_speed`; step 4's own seconds per frame, which
    include its first frame's one-off work, are reported beside it)."""
    from neurallabel.core.data.dataset import load_dataset

    frames = [f.index for f in load_dataset(scene / "transforms.json").frames]
    big = args.speed_frames
    counts = (max(1, min(8, big // 8)), big)
    # Both write their files to the same disk: file creation costs differ several-fold between folders.
    mesh = mesh_only_speed(scene, counts, args.repeats, args.speed_dir)
    cycles = None if args.no_cycles else cycles_speed(scene, frames, args.threads, counts, args.repeats,
                                                      args.speed_dir)
    per_frame = field_bake["seconds_per_frame"]
    field_speed = field_bake_speed(scene, field_path, field, (2, max(3, args.field_speed_frames)),
                                   args.repeats, args.speed_dir, args.device, args.box_resolution)
    out = {"write_dir": str(args.speed_dir or tempfile.gettempdir()), "mesh_only": mesh, "cycles": cycles,
           "field_bake_all_outputs": field_speed,
           "field_bake_of_step_4": {**field_bake, "frames_per_second": 1.0 / per_frame if per_frame else None},
           "frames_per_second_all_outputs": field_speed["frames_per_second"],
           "mesh_only_speedup_vs_cycles": None, "mesh_only_labels_speedup_vs_cycles": None}
    if cycles is not None:
        cycles_s = cycles["seconds_per_extra_frame"]
        out["mesh_only_speedup_vs_cycles"] = cycles_s / mesh["bake_seconds_per_extra_frame"]
        out["mesh_only_labels_speedup_vs_cycles"] = cycles_s / mesh["labels_in_memory_seconds_per_frame"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles-worker", help=argparse.SUPPRESS)
    parser.add_argument("--cycles-speed-worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="CI size: small scene, 1-minute field, 3 frames")
    parser.add_argument("--views", type=int, default=None, help="cameras of the scene (default 40; quick 12)")
    parser.add_argument("--samples", type=int, default=8, help="Cycles samples of the scene's RGB images")
    parser.add_argument("--width", type=int, default=None, help="default 640 (quick 320)")
    parser.add_argument("--height", type=int, default=None, help="default 480 (quick 240)")
    parser.add_argument("--seed", type=int, default=29, help="the scene (one no label or field code was tuned on)")
    parser.add_argument("--frames", type=int, default=None, help="held-out frames to bake and score (8; quick 3)")
    parser.add_argument("--full-frames", type=int, default=3, help="frames with per-object Cycles full masks")
    parser.add_argument("--minutes", type=float, default=None, help="field training minutes (10; quick 1)")
    parser.add_argument("--field", type=Path, help="use this field checkpoint instead of training one")
    parser.add_argument("--scene", type=Path, help="use this generated scene folder instead of making one")
    parser.add_argument("--no-cycles", action="store_true", help="skip the Cycles reference (no full-mask IoU, "
                                                                  "no speed ratio)")
    parser.add_argument("--box-resolution", type=int, default=None, help="box mesh voxels (128; quick 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch's and Cycles' threads")
    parser.add_argument("--speed-only", action="store_true", help="only the speed targets (the field bake with all "
                        "outputs, the mesh-only bake and Cycles); with --field, no training")
    parser.add_argument("--speed-frames", type=int, default=None, help="frames of the long mesh-only and Cycles "
                        "speed runs (the scene's cameras, repeated; the short runs have an eighth): 200 (quick 24)")
    parser.add_argument("--field-speed-frames", type=int, default=None, help="frames of the long field bake speed "
                        "run (the short one has 2): 24 (quick 6)")
    parser.add_argument("--repeats", type=int, default=2, help="speed runs: the best of this many")
    parser.add_argument("--speed-dir", type=Path, default=None,
                        help="where the speed runs (mesh-only bake and Cycles alike) write their files "
                             "(default: the system's temporary folder)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.cycles_worker:
        cycles_worker(args.cycles_worker)
        return 0
    if args.cycles_speed_worker:
        cycles_speed_worker(args.cycles_speed_worker)
        return 0
    quick = args.quick
    args.views = args.views or (12 if quick else 40)
    args.width, args.height = args.width or (320 if quick else 640), args.height or (240 if quick else 480)
    args.frames = args.frames or (3 if quick else 8)
    args.speed_frames = args.speed_frames or (24 if quick else 200)
    args.field_speed_frames = args.field_speed_frames or (6 if quick else 24)
    args.minutes = args.minutes if args.minutes is not None else (1.0 if quick else 10.0)
    args.box_resolution = args.box_resolution or (64 if quick else 128)

    import torch

    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.labels.box_mesh import chamfer_distance
    from neurallabel.core.labels.frame import LabelOptions
    from neurallabel.core.pipeline.bake import bake, frame_labeler
    from neurallabel.core.scene.queries import FieldQuery

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: dict = {"bench": "labels", "quick": quick, "device": args.device, "threads": args.threads,
                    "resolution": [args.width, args.height], "seed": args.seed}
    scene = args.scene.resolve() if args.scene else cached_scene(args)
    result["scene"] = {"path": str(scene), "make_scene_args": None if args.scene else scene_args(args)}
    if args.field is not None:
        field_path = args.field
        result["field"] = {"path": str(field_path), "trained": "elsewhere (--field)"}
    else:
        field_path, info = cached_field(scene, args.minutes, args.threads)
        result["field"] = {"path": str(field_path), "train_minutes": args.minutes, "steps": info.get("steps"),
                           "train_psnr": info.get("train_psnr")}
    spec, truth = bench_spec(scene, field_path)
    dataset = load_dataset(spec.data_path)
    first = dataset.frames[0].intrinsics
    result["resolution"] = [first.width, first.height]  # the scene's own (--scene may differ from --width)
    frames = [f.index for f in dataset.frames if f.split == "test"][:args.frames]
    spec.frames = frames
    result["frames"] = frames
    result["objects"] = {o.name: ("box" if o.kind == "box" else "glass" if o.transparent else "mesh")
                         for o in spec.objects}
    result["unannotated_clutter"] = sorted({o.name for o in truth.objects} - set(result["objects"]))

    # 1. The bake with the field, all formats: its own seconds per frame (labels + writing).
    field = FieldQuery.load(field_path, device=args.device)
    # a new empty folder of its own: two benches started in the same second must not share one
    CACHE.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"bake-{scene.name}-{int(time.time())}-", dir=CACHE))
    summary = bake(spec, out, depth_source=field, device=args.device, box_resolution=args.box_resolution)
    result["bake"] = {"seconds_per_frame": summary["seconds_per_frame"], "frames": summary["frames"],
                      "seconds_total": summary["seconds"], "out": str(out)}
    if args.speed_only:
        result["speed"] = speed_section(args, scene, result["bake"], field_path, field)
        return finish(result, t0, {name: result["speed"][name] for name in SPEED_TARGETS})
    models = {o.instance_id: o.mesh for o in spec.objects if o.kind == "mesh"}
    boxes = box_models(out, spec)
    models.update(boxes)
    chamfer = {}
    for obj in spec.objects:
        if obj.instance_id not in boxes:
            continue
        t = truth.object(obj.instance_id)
        true_mesh = t.load_mesh()
        true_mesh.apply_transform(np.linalg.inv(obj.pose) @ t.object_to_world)  # into the box's frame
        cd = chamfer_distance(boxes[obj.instance_id], true_mesh)
        diagonal = float(np.linalg.norm(t.box_size))
        chamfer[obj.name] = {"chamfer_mm": cd * 1000, "diagonal_mm": diagonal * 1000, "fraction": cd / diagonal}
    result["box_meshes"] = chamfer

    # 2. The Cycles reference: full masks per object, and the speed of its Object Index + Z passes.
    passes = {}
    if not args.no_cycles:
        passes, _ = cycles_reference(scene, frames, frames[:args.full_frames], args.threads, 1)

    # 3. Accuracy and confidence with the default options, one render per frame shared with the band curve.
    source = RenderCache(field)
    labels = label_frames(frame_labeler(spec, models, source, LabelOptions()), spec, dataset, frames)
    result["accuracy"] = evaluate(labels, spec, truth, passes)
    # The same without the photo's colours at box objects' outlines (LabelOptions.colour_edges): the field alone.
    field_only = evaluate(label_frames(frame_labeler(spec, models, source, LabelOptions(colour_edges=False)), spec,
                                       dataset, frames), spec, truth, {})
    result["box_field_only"] = {"visible_iou_mean": field_only["classes"]["box"]["visible_iou_mean"],
                                "visible_iou_min": field_only["classes"]["box"]["visible_iou_min"],
                                "objects": {k: v for k, v in field_only["objects"].items() if v["kind"] == "box"},
                                "confidence": field_only["confidence"]}
    # Mesh-only labels (no field): the reference for what clutter hides, and the speed against Cycles.
    full_objects = spec.objects
    spec.objects = [o for o in spec.objects if o.kind == "mesh"]
    mesh_only = label_frames(frame_labeler(spec, models, None, LabelOptions()), spec, dataset, frames)
    spec.objects = full_objects

    # 4. The band curve.
    curve = []
    for band in BANDS_MM:
        lab = label_frames(frame_labeler(spec, models, source, LabelOptions(occlusion_abs_mm=band)), spec, dataset,
                           frames)
        acc = evaluate(lab, spec, truth, {})
        share, pixels = clutter_hidden(lab, spec, truth, mesh_only)
        curve.append({"band_mm": band, "mesh_visible_iou_mean": acc["classes"]["mesh"]["visible_iou_mean"],
                      "mesh_visible_iou_min": acc["classes"]["mesh"]["visible_iou_min"],
                      "glass_visible_iou_mean": acc["classes"]["glass"]["visible_iou_mean"],
                      "clutter_hidden_share": share, "clutter_hiding_pixels": pixels})
    result["band_curve"] = curve
    # Occlusion by clutter, on frames that show some (the held-out frames may not).
    hiding = clutter_frames(spec, dataset, truth, models)
    occlusion: dict = {"frames": list(hiding), "splits": [dataset.frame(i).split for i in hiding]}
    if hiding:
        lab = label_frames(frame_labeler(spec, models, source, LabelOptions()), spec, dataset, list(hiding))
        share, pixels = clutter_hidden(lab, spec, truth, hiding)
        acc = evaluate(lab, spec, truth, {})
        occlusion.update({"hidden_pixels": pixels, "hidden_labelled_occluded": share,
                          "mesh_visible_iou_mean": acc["classes"]["mesh"]["visible_iou_mean"],
                          "mesh_visible_iou_min": acc["classes"]["mesh"]["visible_iou_min"]})
    result["clutter_occlusion"] = occlusion
    # The photos a user labels are the ones the field was trained on: the same scores on training frames.
    train = [f.index for f in dataset.frames if f.split == "train"][:args.frames]
    acc = evaluate(label_frames(frame_labeler(spec, models, source, LabelOptions()), spec, dataset, train), spec,
                   truth, {})
    result["train_frames"] = {"frames": train, "objects": acc["objects"], "confidence": acc["confidence"],
                              **{f"{cls}_visible_iou_{k}": acc["classes"][cls][f"visible_iou_{k}"]
                                 for cls in ("mesh", "box") for k in ("mean", "min")}}
    result["options"] = LabelOptions().to_json()
    result["speed"] = speed_section(args, scene, result["bake"], field_path, field)
    classes, conf = result["accuracy"]["classes"], result["accuracy"]["confidence"]
    mesh_like = [o for o in result["accuracy"]["objects"].values() if o["kind"] in ("mesh", "glass")]
    values = {
        "mesh_visible_iou_mean": mean([o["visible_iou_mean"] for o in mesh_like]),
        "mesh_visible_iou_min": min((o["visible_iou_min"] for o in mesh_like if o["visible_iou_min"] is not None),
                                    default=None),
        "mesh_full_iou": mean([o["full_iou"] for o in mesh_like]),
        "box_visible_iou_mean": classes["box"]["visible_iou_mean"],
        "box_chamfer_fraction_of_diagonal": mean([c["fraction"] for c in chamfer.values()]) if chamfer else None,
        "mesh_depth_error_mm": (classes["mesh"]["depth_error_mm"] or {}).get("p95"),
        "glass_depth_error_mm": (classes["glass"]["depth_error_mm"] or {}).get("p95"),
        "wrong_pixels_flagged": conf["wrong_pixels_flagged"], "box_pixels_flagged": conf["box_pixels_flagged"],
        **{name: result["speed"][name] for name in SPEED_TARGETS},
    }
    return finish(result, t0, values)


def finish(result: dict, t0: float, values: dict) -> int:
    """Each target's value and pass (the targets of ``values``), ``meets``, and the JSON line."""
    result["targets"] = {}
    for name, value in values.items():
        op, target = TARGETS[name]
        ok = None if value is None else bool(value >= target if op == ">=" else value <= target)
        result["targets"][name] = {"value": value, "target": f"{op} {target}", "pass": ok}
    result["meets"] = all(t["pass"] for t in result["targets"].values())
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
