"""``neurallabel.bake`` (+ ``neurallabel.cancel_job``): export the label spec and bake it in the worker.

In the UI the job runs modally: a timer drains the worker's progress into ``scene.neurallabel.job_*`` (the
panel's bar) and ``window_manager.progress_*`` (the status bar); Esc or the Cancel button stops the worker
between frames, so only whole frames remain. Under ``blender -b`` (no timers) ``execute`` runs the same
job synchronously. :class:`WorkerOperator` is that machinery, shared by preview, snap and load-field.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import bpy
from bpy.props import StringProperty

from ..addon import preferences, spec_export
from ..addon.properties import formats_argument, frames_argument
from ..addon.worker_client import WorkerJob, run_to_end
from ..core.errors import NeuralLabelError

CANCEL_GRACE_S = 30.0  # after Esc, how long the worker may take to finish its frame before it is killed

# The one job that runs at a time in this Blender session (module state: Blender glue, not core).
_ACTIVE: dict = {"operator": None, "cancel": False}


def worker_settings(context: bpy.types.Context) -> dict:
    """Python, environment and device for a worker started from this Blender session."""
    python = preferences.worker_python(context)
    return {"python": python, "env": preferences.worker_environment(python),
            "device": preferences.resolve_device(context)}


def parse_frames(text: str) -> Optional[list[int]]:
    """'A:B' (end exclusive, like the CLI's --frames) -> [A, ..., B-1]; '' -> None."""
    text = text.strip()
    if not text:
        return None
    try:
        start, end = (int(v) for v in text.split(":"))
    except ValueError:
        raise NeuralLabelError(f"frames {text!r} must be A:B (first frame, end frame exclusive)") from None
    if start < 0 or end <= start:
        raise NeuralLabelError(f"frames {text!r}: need 0 <= A < B")
    return list(range(start, end))


def label_options(scene: bpy.types.Scene) -> dict:
    """The scene's occlusion tolerances as the bake's LabelOptions fields (millimetres, fraction)."""
    props = scene.neurallabel
    units_to_mm = 1000.0 * spec_export.float32_value(scene.unit_settings.scale_length)
    return {"occlusion_abs_mm": spec_export.float32_value(props.occlusion_tolerance) * units_to_mm,
            "occlusion_rel": spec_export.float32_value(props.occlusion_tolerance_relative),
            "occlusion_min_confidence": spec_export.float32_value(props.occlusion_min_confidence)}


def job_is_running() -> bool:
    return _ACTIVE["operator"] is not None


class WorkerOperator:
    """Mixin: run ``self.build_job(context)`` in the worker, then ``self.job_done(context, result)``.

    ``build_job`` reads the scene and raises NeuralLabelError on bad input (nothing is changed before the
    job succeeds); ``job_done`` applies the result and returns the operator's result set.
    """

    stage_label = "Working"
    _worker: Optional[WorkerJob] = None
    _cancel_deadline: Optional[float] = None
    _timer = None
    _temp_dir: Optional[str] = None

    # --- to override -------------------------------------------------------------------------------------

    def build_job(self, context: bpy.types.Context) -> dict:
        raise NotImplementedError

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        raise NotImplementedError

    def job_cancelled(self, context: bpy.types.Context) -> None:
        self.report({"WARNING"}, f"{self.stage_label} cancelled")

    # --- shared ------------------------------------------------------------------------------------------

    @classmethod
    def scene_ready(cls, context: bpy.types.Context,
                    no_dataset: str = "Import a dataset first (Scene > Import Dataset)") -> bool:
        """The checks every worker operator's ``poll`` starts with; sets the greyed button's tooltip."""
        if context.scene is None:
            cls.poll_message_set("No scene")
            return False
        if job_is_running():
            cls.poll_message_set("A NeuralLabel job is running")
            return False
        if not context.scene.neurallabel.dataset_path:
            cls.poll_message_set(no_dataset)
            return False
        return True

    def temp_dir(self) -> Path:
        if self._temp_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="neurallabel-")
        return Path(self._temp_dir)

    def _cleanup(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def _progress(self, context: bpy.types.Context, event: dict) -> None:
        props = context.scene.neurallabel
        total = max(int(event.get("total") or 0), 1)
        props.job_progress = min(max(float(event.get("done") or 0) / total, 0.0), 1.0)
        props.job_stage = f"{self.stage_label}: {event.get('stage', '')} {event.get('done')}/{event.get('total')}"
        eta = event.get("eta_s")
        props.job_eta_s = -1.0 if eta is None else float(eta)

    def _set_running(self, context: bpy.types.Context, running: bool) -> None:
        props = context.scene.neurallabel
        props.job_running = running
        props.job_progress = 0.0
        props.job_stage = self.stage_label if running else ""
        props.job_eta_s = -1.0

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Synchronous: background mode, scripts (``bpy.ops...()``) and the headless bake."""
        if job_is_running():
            self.report({"ERROR"}, "Another NeuralLabel job is running: wait for it or cancel it")
            return {"CANCELLED"}
        settings = worker_settings(context)
        last_print = [0.0]

        def on_event(event: dict) -> None:
            if event.get("event") != "progress":
                return
            self._progress(context, event)
            now = time.monotonic()
            if bpy.app.background and (now - last_print[0] > 2.0 or event.get("done") == event.get("total")):
                last_print[0] = now  # headless: a progress line now and then (Blender prints its reports too)
                print(f"NeuralLabel {event.get('stage')}: {event.get('done')}/{event.get('total')}",
                      file=sys.stderr, flush=True)

        try:
            job = self.build_job(context)
            job.setdefault("device", settings["device"])
            _ACTIVE["operator"] = self
            self._set_running(context, True)
            worker_job = WorkerJob(job, python=settings["python"], env=settings["env"]).start()
            result = run_to_end(worker_job, on_event)
            return self.job_done(context, result)
        except NeuralLabelError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            _ACTIVE["operator"] = None
            self._set_running(context, False)
            self._cleanup()

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        if job_is_running():
            self.report({"ERROR"}, "Another NeuralLabel job is running: wait for it or cancel it")
            return {"CANCELLED"}
        settings = worker_settings(context)
        try:
            job = self.build_job(context)
            job.setdefault("device", settings["device"])
            self._worker = WorkerJob(job, python=settings["python"], env=settings["env"]).start()
        except NeuralLabelError as exc:
            self._cleanup()
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        _ACTIVE.update(operator=self, cancel=False)
        self._cancel_deadline = None
        self._set_running(context, True)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.progress_begin(0, 1000)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event) -> set[str]:
        worker = self._worker
        if (event.type == "ESC" or _ACTIVE["cancel"]) and self._cancel_deadline is None:
            # SIGTERM: the worker stops after the frame in progress; the UI stays responsive meanwhile.
            worker.request_cancel()
            self._cancel_deadline = time.monotonic() + CANCEL_GRACE_S
            context.scene.neurallabel.job_stage = f"{self.stage_label}: cancelling..."
            return {"RUNNING_MODAL"}
        if self._cancel_deadline is not None and event.type == "TIMER":
            if not worker.finished():
                if time.monotonic() < self._cancel_deadline:
                    return {"RUNNING_MODAL"}
                worker.kill()  # it did not stop by itself
            worker.poll()
            if worker.result is not None and worker.returncode == 0:  # it had finished before the signal
                return self._complete(context, worker)
            self._finish(context)
            self.job_cancelled(context)
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        done = worker.finished()
        for ev in worker.poll():
            if ev.get("event") == "progress":
                self._progress(context, ev)
        context.window_manager.progress_update(int(1000 * context.scene.neurallabel.job_progress))
        for area in context.screen.areas if context.screen else []:
            if area.type in {"VIEW_3D", "STATUSBAR"}:
                area.tag_redraw()
        if not done:
            return {"RUNNING_MODAL"}
        return self._complete(context, worker)

    def _complete(self, context: bpy.types.Context, worker: WorkerJob) -> set[str]:
        """Apply a finished worker's result (or report why it gave none) and end the job."""
        try:
            if worker.result is None or worker.returncode != 0:
                raise NeuralLabelError(worker.failure_message())
            return self.job_done(context, worker.result)
        except NeuralLabelError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            self._finish(context)

    def _finish(self, context: bpy.types.Context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if self._worker is not None:
            self._worker.cleanup()
        _ACTIVE.update(operator=None, cancel=False)
        self._set_running(context, False)
        self._cleanup()
        for area in context.screen.areas if context.screen else []:
            area.tag_redraw()


def _bake_poll(cls, context: bpy.types.Context, needs_output: bool) -> bool:
    if not cls.scene_ready(context):
        return False
    if needs_output and not context.scene.neurallabel.output_dir:
        cls.poll_message_set("Choose an output folder first")
        return False
    return True


class NEURALLABEL_OT_bake(WorkerOperator, bpy.types.Operator):
    """Export the label spec to <output>/spec.json and bake labels for every frame (Esc cancels)"""

    bl_idname = "neurallabel.bake"
    bl_label = "Bake Labels"
    bl_options = {"REGISTER"}
    stage_label = "Bake"

    out_dir: StringProperty(name="Output", subtype="DIR_PATH", default="",
                            description="Output folder (default: the scene's output folder)")
    formats: StringProperty(name="Formats", default="",
                            description="Comma-separated formats, e.g. 'bop,coco' (default: the scene's)")
    frames: StringProperty(name="Frames", default="",
                           description="A:B, frame indices A..B-1 (default: the scene's frame range)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _bake_poll(cls, context, needs_output=False)

    def _out(self, context: bpy.types.Context) -> Path:
        out = self.out_dir or context.scene.neurallabel.output_dir
        if not out:
            raise NeuralLabelError("no output folder: choose one in NeuralLabel > Bake")
        return Path(bpy.path.abspath(out)).resolve()

    def build_job(self, context: bpy.types.Context) -> dict:
        out = self._out(context)
        formats = [f.strip() for f in (self.formats or formats_argument(context.scene.neurallabel)).split(",")
                   if f.strip()]
        unknown = [f for f in formats if f not in ("bop", "coco", "raw")]
        if unknown or not formats:
            raise NeuralLabelError(f"formats {self.formats!r}: choose from bop, coco, raw")
        frames = self.frames.strip() or frames_argument(context.scene.neurallabel)  # None: every frame
        if frames is not None:
            parse_frames(frames)  # a clear message for a malformed range, before anything is written
        spec_path = spec_export.export_spec(context, out / "spec.json")
        self._frames = frames
        self._started = time.monotonic()
        self._out_path = out
        self._options = label_options(context.scene)
        self._formats = ",".join(formats)
        return {"kind": "bake", "spec": str(spec_path), "out": str(out), "formats": formats, "frames": frames,
                "options": self._options}

    def cli_command(self) -> str:
        """The shell command that bakes the same (e.g. on a GPU server with the exported spec)."""
        parts = ["neurallabel", "bake", str(self._out_path / "spec.json"), "--out", str(self._out_path),
                 "--formats", self._formats]
        if self._frames:
            parts += ["--frames", self._frames]
        parts += ["--occlusion-mm", f"{self._options['occlusion_abs_mm']:g}",
                  "--occlusion-rel", f"{self._options['occlusion_rel']:g}",
                  "--occlusion-min-confidence", f"{self._options['occlusion_min_confidence']:g}"]
        return " ".join(parts)

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        summary = result.get("summary") or {}
        skipped = f" ({summary['skipped']} were already done)" if summary.get("skipped") else ""
        self.report({"INFO"}, f"Baked {summary.get('frames', 0)} frames{skipped} into {self._out_path} in "
                              f"{time.monotonic() - self._started:.0f} s (the same from a shell: "
                              f"{self.cli_command()})")
        return {"FINISHED"}

    def job_cancelled(self, context: bpy.types.Context) -> None:
        self.report({"WARNING"}, f"Bake cancelled: the frames finished so far are complete in "
                                 f"{self._out_path}; bake again to continue")


class NEURALLABEL_OT_cancel_job(bpy.types.Operator):
    """Stop the running NeuralLabel job (bake, preview, snap): finished frames are kept"""

    bl_idname = "neurallabel.cancel_job"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not job_is_running():
            cls.poll_message_set("No job is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        _ACTIVE["cancel"] = True
        return {"FINISHED"}


classes = (NEURALLABEL_OT_bake, NEURALLABEL_OT_cancel_job)
register, unregister = bpy.utils.register_classes_factory(classes)
