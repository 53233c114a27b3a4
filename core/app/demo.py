"""`neurallabel demo`: the whole pipeline on a built-in scene whose truth Blender rendered.

The demo is a list of stages (:data:`STAGES`); each takes the shared :class:`DemoRun`, does its work with
progress reports, and adds its results (JSON-able values) and summary lines. Adding a stage (train a field,
build a label spec from the scene's objects, bake, measure accuracy) is adding one function to the list.
Nothing here prints: the command line prints ``result`` and ``lines``.

Stage 1 renders the demo scene with ``scripts/make_scene.py`` (Cycles) in a subprocess into ``OUT/scene``,
or reuses it when it was made with the same settings by the same script. The scene holds six annotated
objects and one unannotated clutter monkey standing in front of one of them in a held-out view: the labels
must not paint her (the field's depth occludes the meshes behind her). One object is annotated as a box.

The labels stage tells the truth about what came out: per object, the visible mask's IoU against Cycles'
instance pass (mean and minimum over the held-out frames), and what the field decided on the mesh pixels --
the share it occluded and how many of those it was right to occlude (the truth shows something else there).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import NeuralLabelError
from ..io.atomic import write_text
from ..progress import ProgressFn, report

if TYPE_CHECKING:
    from .jobs import DemoRequest

REPO_ROOT = Path(__file__).resolve().parents[2]
MAKE_SCENE = REPO_ROOT / "scripts" / "make_scene.py"
#: The Stanford bunny and armadillo, where the project's shared data sits next to the repository.
SHARED_MESHES = REPO_ROOT.parent / "shared" / "data" / "meshes"
DEMO_OBJECTS = 6
DEMO_CLUTTER = 1
#: The object annotated as a box (box pipeline: the field's surface inside its true box): the first of these
#: categories in the scene that the monkey does not stand in front of.
BOX_CATEGORIES = ("box", "cube", "cylinder", "icosphere", "sphere", "cone", "torus")
SETTINGS_FILE = "scene_settings.json"


@dataclass
class DemoRun:
    request: "DemoRequest"
    out: Path
    progress: Optional[ProgressFn]
    result: dict[str, Any] = field(default_factory=dict)
    #: The labels stage's depth source: None = the field stage's field; tests pass an oracle (TruthQuery).
    depth_source: Any = None
    lines: list[str] = field(default_factory=list)


Stage = Callable[[DemoRun], None]


def demo_scene_args(args: "DemoRequest", meshes: Optional[Path]) -> list[str]:
    """make_scene.py arguments for the demo scene (40 views, 320x240, Stanford meshes if present, glass, a
    clutter monkey)."""
    scene_args = ["--views", str(args.views), "--width", str(args.width), "--height", str(args.height),
                  "--seed", str(args.seed), "--objects", str(DEMO_OBJECTS), "--glass", "--clutter", str(DEMO_CLUTTER)]
    if meshes is not None:
        scene_args += ["--meshes", str(meshes)]
    return scene_args


def _settings(scene_args: list[str]) -> dict[str, Any]:
    return {"make_scene_sha256": hashlib.sha256(MAKE_SCENE.read_bytes()).hexdigest(), "args": scene_args}


def _run_make_scene(scene_args: list[str], out: Path, progress: Optional[ProgressFn], stage: str) -> dict:
    """Run make_scene.py, relaying its JSON progress lines; returns its result line."""
    if not MAKE_SCENE.is_file():
        raise NeuralLabelError(f"{MAKE_SCENE}: the scene generator is missing from this installation")
    cmd = [sys.executable, str(MAKE_SCENE), "--out", str(out), "--overwrite", *scene_args]
    result: dict = {}
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith('{"event"'):
                    continue  # Blender's own log lines
                event = json.loads(line)
                if event["event"] == "progress":  # make_scene's stages: "render rgb", "render truth"
                    report(progress, event["done"], event["total"], f"{stage}: {event['stage']}")
                elif event["event"] == "result":
                    result = event
            code = proc.wait()
        except BaseException:
            proc.terminate()  # cancelled: make_scene removes its staging folder on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        stderr.seek(0)
        errors = stderr.read().strip().splitlines()
    if code != 0 or not result:
        last = errors[-1] if errors else f"exit code {code}"
        raise NeuralLabelError(f"{MAKE_SCENE.name} could not render the demo scene into {out}: {last}")
    return result


def stage_scene(run: DemoRun) -> None:
    """Render the demo scene (or reuse it) into OUT/scene."""
    meshes = SHARED_MESHES if (SHARED_MESHES / "bunny.obj").is_file() else None
    scene_args = demo_scene_args(run.request, meshes)
    scene_dir = run.out / "scene"
    settings_path = run.out / SETTINGS_FILE
    settings = _settings(scene_args)
    reused = False
    if (scene_dir / "transforms.json").is_file() and settings_path.is_file():
        try:
            reused = json.loads(settings_path.read_text()) == settings
        except json.JSONDecodeError:
            reused = False
    start = time.monotonic()
    if reused:
        report(run.progress, 1, 1, "demo scene")
    else:
        run.out.mkdir(parents=True, exist_ok=True)
        settings_path.unlink(missing_ok=True)
        _run_make_scene(scene_args, scene_dir, run.progress, "demo scene")
        write_text(settings_path, json.dumps(settings, indent=1))
    records = json.loads((scene_dir / "gt" / "objects.json").read_text())["objects"]
    objects = [o for o in records if o.get("annotated", True)]
    clutter = [o for o in records if not o.get("annotated", True)]
    run.result["scene"] = str(scene_dir)
    run.result["scene_reused"] = reused
    run.result["scene_seconds"] = round(time.monotonic() - start, 1)
    run.result["scene_objects"] = [o["name"] for o in objects]
    run.result["scene_clutter"] = [{"name": o["name"], "in_front_of": o.get("in_front_of"),
                                    "frame": o.get("in_front_in_frame")} for o in clutter]
    in_front = "".join(f"; unannotated {o['name']}" + (f" in front of {o['in_front_of']} in frame "
                                                       f"{o['in_front_in_frame']}" if o.get("in_front_of") else "")
                       for o in clutter)
    run.lines.append(f"demo scene: {scene_dir} ({run.request.views} views at {run.request.width}x{run.request.height}, "
                     f"{len(objects)} objects: {', '.join(o['name'] for o in objects)}{in_front}; "
                     + ("reused)" if reused else f"rendered by Cycles in {run.result['scene_seconds']} s)"))


def demo_box_object(records: list[dict]) -> Optional[str]:
    """The name of the object the demo annotates as a box (None when the scene has no candidate)."""
    hidden = {o.get("in_front_of") for o in records}
    for category in BOX_CATEGORIES:
        for o in records:
            if o["category"] == category and o.get("annotated", True) and o["name"] not in hidden:
                return o["name"]
    return None


def stage_labels(run: DemoRun) -> None:
    """A label spec from the demo scene's objects (true meshes at true poses), a bake of every frame in all
    formats, and the labels' accuracy against the scene's Cycles truth.

    Uses the field of the field stage (``result["field"]``) for occlusion, depth and confidence when that stage
    ran (or ``run.depth_source`` when given); otherwise the labels come from the meshes alone (and the lines
    say so). One object is annotated as a box when there is a depth source; should the bake refuse it (a
    field too weak to hold its surface, e.g. a demo trained for seconds) the rest is baked and the result
    says why it was left out.
    """
    from ..data.truth import load_scene_truth
    from ..eval.labels import occlusion_decisions, per_object, score_raw_bake, summarize
    from ..pipeline.bake import bake
    from ..spec import spec_from_scene, write_spec

    scene_dir = Path(run.result["scene"])
    field_path = run.result.get("field")
    if field_path is not None and not Path(field_path).exists():
        field_path = None
    # A box object needs depth (its mask is the scene's surface inside the box).
    box = demo_box_object(json.loads((scene_dir / "gt" / "objects.json").read_text())["objects"]) \
        if field_path or run.depth_source is not None else None
    spec = spec_from_scene(scene_dir, field_path=field_path, box_objects=(box,) if box else ())
    # The held-out views only: the field never saw them (an honest accuracy), and rendering the field's depth
    # for every view takes long on a CPU.
    from ..data.dataset import load_dataset

    test_frames = [f.index for f in load_dataset(spec.data_path).frames if f.split == "test"]
    spec.frames = test_frames or None
    labels_dir = run.out / "labels"
    spec_path = write_spec(spec, labels_dir / "spec.json")
    dataset_dir = labels_dir / "dataset"
    manifest_path = dataset_dir / ".neurallabel" / "bake.json"
    # (an empty folder is what a failed bake leaves behind: bake into it again)
    if dataset_dir.is_dir() and any(dataset_dir.iterdir()) and not manifest_path.is_file():
        raise NeuralLabelError(f"{dataset_dir}: exists and is not a NeuralLabel bake; remove it or choose "
                               "another out folder", field="out")
    if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("fingerprint") != spec.fingerprint():
        shutil.rmtree(dataset_dir)  # the demo's own earlier bake of another scene or field
    start = time.monotonic()
    box_left_out = None
    try:
        summary = bake(spec, dataset_dir, progress=run.progress, depth_source=run.depth_source)
    except NeuralLabelError as exc:
        if box is None or repr(box) not in str(exc):
            raise
        box_left_out = str(exc)
        spec.objects = [o for o in spec.objects if o.name != box]
        spec_path = write_spec(spec, labels_dir / "spec.json")
        if dataset_dir.is_dir() and not manifest_path.is_file():
            shutil.rmtree(dataset_dir)  # this bake's own leftovers
        summary = bake(spec, dataset_dir, progress=run.progress, depth_source=run.depth_source)
    seconds = time.monotonic() - start

    truth = load_scene_truth(scene_dir)
    scores = score_raw_bake(dataset_dir, truth, [o.instance_id for o in spec.objects])  # clutter left out
    pooled = summarize(scores)
    accuracy = {"visible_iou_mean": pooled["visible_iou_mean"], "visible_iou_min": pooled["visible_iou_min"],
                "depth_error_mm_p95": (pooled["depth_error_mm"] or {}).get("p95")}
    by_id = per_object(scores)
    objects = [{"name": o.name, "instance_id": o.instance_id, "kind": o.kind, "transparent": o.transparent,
                **by_id.get(o.instance_id, {"frames": 0, "visible_iou_mean": None, "visible_iou_min": None})}
               for o in spec.objects]
    decisions = occlusion_decisions(dataset_dir, truth, [o.instance_id for o in spec.objects if o.kind == "mesh"])
    for o in objects:
        o.update({k: decisions["per_object"][o["instance_id"]][k] for k in ("mesh_pixels", "occluded", "right")}
                 if o["kind"] == "mesh" else {})
    occlusion = {k: decisions[k] for k in ("mesh_pixels", "occluded", "right", "occluded_share", "right_share")}
    run.result["labels"] = {"spec": str(spec_path), "dataset": str(dataset_dir), "field": field_path,
                            "seconds": round(seconds, 1), **{k: v for k, v in summary.items() if k != "out"},
                            "accuracy": accuracy, "objects": objects, "occlusion": occlusion,
                            "box_object": box, "box_left_out": box_left_out}
    per_frame = summary["seconds_per_frame"]
    run.lines.append(f"labels: {summary['frames_in_dataset']} held-out frames in {dataset_dir} "
                     f"({', '.join(summary['formats'])}), "
                     + (f"{per_frame:.2f} s/frame" if per_frame else "already baked")
                     + ("" if field_path or run.depth_source is not None
                        else "; no field stage ran: mesh-only labels (no clutter occlusion)"))
    if scores:
        run.lines.append(f"label accuracy vs Cycles truth: visible-mask IoU mean {accuracy['visible_iou_mean']:.4f} "
                         f"(min {accuracy['visible_iou_min']:.4f}), depth error on mesh pixels p95 "
                         f"{accuracy['depth_error_mm_p95']:.3f} mm")
        run.lines.append("per-object visible-mask IoU (mean / min over frames): " + ", ".join(
            f"{o['name']}{' [box]' if o['kind'] == 'box' else ''} "
            + (f"{o['visible_iou_mean']:.3f} / {o['visible_iou_min']:.3f}" if o["frames"] else "not in view")
            for o in objects))
    if box_left_out:
        run.lines.append(f"box object {box} left out: {box_left_out}")
    if occlusion["mesh_pixels"]:
        share, right = occlusion["occluded_share"], occlusion["right_share"]
        decider = (f"the depth source {summary['depth_source']}" if run.depth_source is not None
                   else "the field" if field_path else "the meshes alone")
        run.lines.append(f"occlusion decided by {decider}: "
                         f"{occlusion['occluded']} of {occlusion['mesh_pixels']} mesh pixels occluded ({share:.1%})"
                         + (f", {occlusion['right']} of them right ({right:.1%}: the truth shows something "
                            "else there)" if occlusion["occluded"] else ""))


def stage_field(run: DemoRun) -> None:
    """Train a field on the demo scene's train views for ``train_minutes`` (resuming OUT/field.pt when it
    is there) and measure its held-out PSNR / SSIM on the test views."""
    from ..data.dataset import load_dataset
    from ..field.model import load_field
    from ..render.views import render_views
    from ..train.loop import TrainOptions, train_field

    scene_dir = Path(run.result["scene"])
    field_path = run.out / "field.pt"
    trained = train_field(scene_dir, field_path, TrainOptions(minutes=run.request.train_minutes),
                          progress=run.progress)
    test = load_dataset(scene_dir).split("test")
    summary = render_views(load_field(field_path), test, run.out / "field_render", progress=run.progress)
    run.result["field"] = str(field_path)
    run.result["field_training"] = {"steps": trained.steps, "seconds": round(trained.elapsed_s, 1),
                                    "resumed": trained.resumed, "device": trained.device,
                                    "test_psnr_db": summary.get("psnr"), "test_ssim": summary.get("ssim"),
                                    "test_views": summary["count"]}
    run.lines.append(f"field: {field_path} ({trained.steps} steps, {trained.elapsed_s:.0f} s on {trained.device}); "
                     f"held-out PSNR {summary.get('psnr', float('nan')):.2f} dB, SSIM "
                     f"{summary.get('ssim', float('nan')):.4f} on {summary['count']} test views")


#: The demo, in order. Each later issue appends its stage here.
STAGES: list[tuple[str, Stage]] = [
    ("scene", stage_scene),
    ("field", stage_field),
    ("labels", stage_labels),
]


def run_demo(request: "DemoRequest", progress: Optional[ProgressFn] = None) -> dict:
    """Run every demo stage (``request`` is validated when made); the JSON-able result, with the summary
    lines for the command line under ``lines``."""
    run = DemoRun(request=request, out=Path(request.out).resolve(), progress=progress)
    run.result["out"] = str(run.out)
    for _name, stage in STAGES:
        stage(run)
    return {**run.result, "lines": run.lines}
