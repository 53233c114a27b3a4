"""Operators whose work runs in the worker process: :class:`WorkerOperator` (bake, preview, snap, load field,
SfM, train, field exports, synthetic views, check worker).

In the UI a job runs modally: a timer drains the worker's progress into ``scene.neurallabel.job_*`` (the
panel's bar) and ``window_manager.progress_*`` (the status bar), and its notices (e.g. the photos a dataset
skipped) into WARNING reports and ``scene.neurallabel.job_notices`` (kept until the next job starts, whatever
the outcome, so the panel can list them); Esc or ``neurallabel.cancel_job``
(:func:`request_cancel`) stops the worker between units of work, so only whole frames remain. Under
``blender -b`` (no timers) and from scripts, ``execute`` runs the same job synchronously.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import bpy

from ..core.errors import NeuralLabelError
from . import preferences
from .reports import report_error
from .worker_client import WorkerJob, run_to_end

CANCEL_GRACE_S = 30.0  # after Esc, how long the worker may take to finish its frame before it is killed
BACKGROUND_PRINT_S = 2.0  # headless: at most one progress line on stderr this often
NOTICE_PREFIX = "NeuralLabel: "  # a notice's report names where it comes from (the Info editor mixes add-ons)

# The one job that runs at a time in this Blender session (module state: Blender glue, not core).
_ACTIVE: dict = {"operator": None, "cancel": False}


def job_is_running() -> bool:
    return _ACTIVE["operator"] is not None


def request_cancel() -> None:
    """Ask the running job to stop (its modal timer sends the worker SIGTERM at the next tick)."""
    _ACTIVE["cancel"] = True


def worker_settings(context: bpy.types.Context) -> dict:
    """Python, environment and device for a worker started from this Blender session."""
    python = preferences.worker_python(context)
    return {"python": python, "env": preferences.worker_environment(python),
            "device": preferences.resolve_device(context)}


class WorkerOperator:
    """Mixin: run ``self.build_job(context)`` in the worker, then ``self.job_done(context, result)``.

    ``build_job`` reads the scene and raises NeuralLabelError on bad input (nothing is changed before the
    job succeeds); ``job_done`` applies the result and returns the operator's result set.
    """

    stage_label = "Working"
    uses_device = True  # the job takes the scene's device (SfM runs on the CPU: it has none)
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
    def can_start(cls, context: bpy.types.Context) -> bool:
        """A scene and no job running (the ``poll`` of jobs that need no dataset: SfM, Check Worker)."""
        if context.scene is None:
            cls.poll_message_set("No scene")
            return False
        if job_is_running():
            cls.poll_message_set("A NeuralLabel job is running")
            return False
        return True

    @classmethod
    def scene_ready(cls, context: bpy.types.Context,
                    no_dataset: str = "Import a dataset first (Scene > Import Dataset)",
                    no_field: Optional[str] = None) -> bool:
        """The checks every worker operator's ``poll`` starts with; sets the greyed button's tooltip. With
        ``no_field`` (the jobs that read the field) a field is needed too, and that is the tooltip without."""
        if not cls.can_start(context):
            return False
        props = context.scene.neurallabel
        why = no_dataset if not props.dataset_path else (no_field if no_field and not props.field_path else None)
        if why is not None:
            cls.poll_message_set(why)
            return False
        return True

    def temp_dir(self) -> Path:
        """A folder for this job's files (specs, meshes, results), removed when the job ends."""
        if self._temp_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="neurallabel-")
        return Path(self._temp_dir)

    def _cleanup(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def _start(self, context: bpy.types.Context) -> WorkerJob:
        """Build the job from the scene and start its worker (NeuralLabelError on bad input)."""
        settings = worker_settings(context)
        job = self.build_job(context)
        if self.uses_device:
            job.setdefault("device", settings["device"])
        return WorkerJob(job, python=settings["python"], env=settings["env"]).start()

    def _progress(self, context: bpy.types.Context, event: dict) -> None:
        props = context.scene.neurallabel
        total = max(int(event.get("total") or 0), 1)
        props.job_progress = min(max(float(event.get("done") or 0) / total, 0.0), 1.0)
        props.job_stage = f"{self.stage_label}: {event.get('stage', '')} {event.get('done')}/{event.get('total')}"
        eta = event.get("eta_s")
        props.job_eta_s = -1.0 if eta is None else float(eta)

    def _notice(self, context: bpy.types.Context, event: dict) -> None:
        """A line the user must see (skipped photos, a fallback, clamped ranges): a WARNING report, and a line
        of ``job_notices`` for the panel, as the command line prints it."""
        message = " ".join(str(event.get("message") or "").split())  # one line: job_notices is split on \n
        if not message:
            return
        self.report({"WARNING"}, NOTICE_PREFIX + message)
        props = context.scene.neurallabel
        props.job_notices = f"{props.job_notices}\n{message}" if props.job_notices else message
        if bpy.app.background:  # headless: at once, beside the progress lines (the report comes at the end)
            print(NOTICE_PREFIX + message, file=sys.stderr, flush=True)

    def _handle(self, context: bpy.types.Context, events: list[dict]) -> None:
        """Apply events drained from the worker: progress to the bar, notices to reports and the panel."""
        for event in events:
            kind = event.get("event")
            if kind == "progress":
                self._progress(context, event)
            elif kind == "notice":
                self._notice(context, event)

    def _clear_notices(self, context: bpy.types.Context) -> None:
        context.scene.neurallabel.job_notices = ""  # a new job: the last one's notices no longer apply

    def _set_running(self, context: bpy.types.Context, running: bool) -> None:
        props = context.scene.neurallabel
        props.job_running = running
        props.job_progress = 0.0
        props.job_stage = self.stage_label if running else ""
        props.job_eta_s = -1.0

    def _refuse_second_job(self) -> set[str]:
        self.report({"ERROR"}, "Another NeuralLabel job is running: wait for it or cancel it")
        return {"CANCELLED"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Synchronous: background mode, scripts (``bpy.ops...()``) and the headless bake."""
        if job_is_running():
            return self._refuse_second_job()
        self._clear_notices(context)
        last_print = [0.0]

        def on_event(event: dict) -> None:
            self._handle(context, [event])
            if event.get("event") != "progress":
                return
            now = time.monotonic()
            finished = event.get("done") == event.get("total")
            if bpy.app.background and (now - last_print[0] > BACKGROUND_PRINT_S or finished):
                last_print[0] = now  # headless: a progress line now and then (Blender prints its reports too)
                print(f"NeuralLabel {event.get('stage')}: {event.get('done')}/{event.get('total')}",
                      file=sys.stderr, flush=True)

        try:
            worker = self._start(context)
            _ACTIVE["operator"] = self
            self._set_running(context, True)
            return self.job_done(context, run_to_end(worker, on_event))
        except NeuralLabelError as exc:
            return report_error(self, exc)
        finally:
            _ACTIVE["operator"] = None
            self._set_running(context, False)
            self._cleanup()

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        if job_is_running():
            return self._refuse_second_job()
        self._clear_notices(context)
        try:
            self._worker = self._start(context)
        except NeuralLabelError as exc:
            self._cleanup()
            return report_error(self, exc)
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
            self._handle(context, worker.poll())  # its last events: a notice may have come before the signal
            if worker.result is not None and worker.returncode == 0:  # it had finished before the signal
                return self._complete(context, worker)
            self._finish(context)
            self.job_cancelled(context)
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        done = worker.finished()
        self._handle(context, worker.poll())  # all of them, also those that came with the result
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
                raise worker.failure()
            return self.job_done(context, worker.result)
        except NeuralLabelError as exc:
            return report_error(self, exc)
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
