"""``neurallabel.check_worker``: what the worker Python can run (torch, CUDA, numpy, missing modules).
``neurallabel.install_dependencies``: pip-install requirements.txt (torch first, its build picked by OS and
GPU) into this extension's user folder, as a modal job with progress lines and Esc to cancel; the
preferences draw both buttons."""

from __future__ import annotations

import subprocess
import sys
import threading

import bpy

from ..addon import preferences
from ..addon.worker_jobs import WorkerOperator


class NEURALLABEL_OT_check_worker(WorkerOperator, bpy.types.Operator):
    """Run a tiny job in the worker Python: torch and numpy versions, CUDA, and missing dependencies"""

    bl_idname = "neurallabel.check_worker"
    bl_label = "Check Worker"
    bl_options = {"INTERNAL"}
    stage_label = "Check worker"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.can_start(context)

    def build_job(self, context: bpy.types.Context) -> dict:
        return {"kind": "check"}

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        line = check_summary(result)
        context.scene.neurallabel.worker_check = line
        self.report({"WARNING"} if result.get("missing") else {"INFO"}, line)
        return {"FINISHED"}


def check_summary(result: dict) -> str:
    """One line for the panel and the report from a ``check`` job's result."""
    cuda = f"CUDA: {result.get('device')}" if result.get("cuda") else "no CUDA (CPU)"
    line = f"Python {result.get('python')}, torch {result.get('torch') or 'missing'}, {cuda}, " \
           f"numpy {result.get('numpy')}"
    missing = result.get("missing") or []
    return line + (f"; missing: {', '.join(missing)}" if missing else "; all dependencies found")


class InstallProcess:
    """Run ``commands`` one after another; their output lines are collected by a thread so the modal
    timer never blocks. ``cancel`` kills the running command and starts no other."""

    def __init__(self, commands: list[list[str]]):
        self.commands, self.lines, self.returncode = list(commands), [], None
        self._cancelled = False
        self._process = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "InstallProcess":
        self._thread.start()
        return self

    def _run(self) -> None:
        for index, command in enumerate(self.commands):
            if self._cancelled:
                break
            self.lines.append(f"[{index + 1}/{len(self.commands)}] {' '.join(command[3:])}")
            try:
                self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True)
            except OSError as exc:
                self.lines.append(f"could not run {command[0]}: {exc}")
                self.returncode = 1
                return
            for line in self._process.stdout:
                self.lines.append(line.rstrip())
            code = self._process.wait()
            if code != 0:
                self.returncode = -1 if self._cancelled else code  # -1: cancelled (killed: -9)
                return
        self.returncode = -1 if self._cancelled else 0

    def finished(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        return self.returncode

    def cancel(self) -> None:
        self._cancelled = True
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    def last_line(self) -> str:
        return next((line for line in reversed(self.lines) if line.strip()), "no output")


class NEURALLABEL_OT_install_dependencies(bpy.types.Operator):
    """Install torch and the other worker dependencies into this extension's user folder"""

    bl_idname = "neurallabel.install_dependencies"
    bl_label = "Install Dependencies"
    bl_options = {"INTERNAL"}

    _install: InstallProcess | None = None
    _timer = None

    def _begin(self) -> InstallProcess | None:
        refusal = preferences.install_refusal(sys.version_info[:2], bpy.app.online_access)
        if refusal:
            self.report({"ERROR"}, refusal)
            return None
        index = preferences.torch_index(sys.platform, preferences.has_nvidia_gpu())
        target = preferences.dependencies_path(create=True)
        return InstallProcess(preferences.install_commands(sys.executable, target, index)).start()

    def _end(self, install: InstallProcess) -> set[str]:
        if install.returncode == -1:
            self.report({"WARNING"}, "Installing the dependencies was cancelled")
            return {"CANCELLED"}
        if install.returncode != 0:
            self.report({"ERROR"}, f"pip failed: {install.last_line()}. Check the internet connection, or "
                                   f"{preferences.WORKER_ENV_HINT}")
            return {"CANCELLED"}
        preferences.add_dependencies_to_path()
        self.report({"INFO"}, f"Installed the worker dependencies into {preferences.dependencies_path()}")
        return {"FINISHED"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Synchronous: background mode and scripts."""
        install = self._begin()
        if install is None:
            return {"CANCELLED"}
        install.wait()
        for line in install.lines:
            print(line, file=sys.stderr)
        return self._end(install)

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if bpy.app.background or context.window is None:
            return self.execute(context)
        self._install = self._begin()
        if self._install is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.5, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event) -> set[str]:
        install = self._install
        if event.type == "ESC":
            install.cancel()
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        context.workspace.status_text_set(f"NeuralLabel install (Esc cancels): {install.last_line()[:120]}")
        if not install.finished():
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.workspace.status_text_set(None)
        return self._end(install)


classes = (NEURALLABEL_OT_check_worker, NEURALLABEL_OT_install_dependencies)
register, unregister = bpy.utils.register_classes_factory(classes)
