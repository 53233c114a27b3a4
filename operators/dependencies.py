"""``neurallabel.install_dependencies``: pip-install the worker's dependencies (``requirements.txt``, torch
first and alone) into this extension's user folder; the preferences draw its button."""

from __future__ import annotations

import subprocess
import sys

import bpy

from ..addon.preferences import add_dependencies_to_path, dependencies_path, install_commands


class NEURALLABEL_OT_install_dependencies(bpy.types.Operator):
    """Install torch and the other worker dependencies into this extension's user folder"""

    bl_idname = "neurallabel.install_dependencies"
    bl_label = "Install Dependencies"
    bl_options = {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        python = sys.executable
        target = dependencies_path(create=True)
        for command in install_commands(python, target):
            try:
                result = subprocess.run(command, capture_output=True, text=True)
            except OSError as exc:
                self.report({"ERROR"}, f"Could not run {python}: {exc}")
                return {"CANCELLED"}
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
                self.report({"ERROR"}, f"pip failed ({' '.join(command[6:])}): {tail[0]}. "
                                       "Check the internet connection, or point 'Worker Python' at an "
                                       "environment that has torch")
                return {"CANCELLED"}
        add_dependencies_to_path()
        self.report({"INFO"}, f"Installed the worker dependencies into {target}")
        return {"FINISHED"}


classes = (NEURALLABEL_OT_install_dependencies,)
register, unregister = bpy.utils.register_classes_factory(classes)
