"""``neurallabel.export_spec``: write the scene's label spec (JSON) and its meshes, for ``neurallabel bake``."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import StringProperty

from ..addon import spec_export
from ..core.errors import NeuralLabelError
from .bake import parse_frames


class NEURALLABEL_OT_export_spec(bpy.types.Operator):
    """Write the label spec (annotations, poses, dataset, field) to a JSON file for `neurallabel bake`"""

    bl_idname = "neurallabel.export_spec"
    bl_label = "Export Label Spec"
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="File Path", subtype="FILE_PATH", default="",
                             description="Spec file to write (default: <output folder>/spec.json)")
    frames: StringProperty(name="Frames", default="",
                           description="A:B: list frames A..B-1 in the spec (default: none listed, i.e. all; "
                                       "the scene's frame range goes to the bake's --frames instead)")
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None:
            cls.poll_message_set("No scene")
            return False
        if not context.scene.neurallabel.dataset_path:
            cls.poll_message_set("Import a dataset first (Scene > Import Dataset)")
            return False
        return True

    def _default_path(self, context: bpy.types.Context) -> str:
        out = context.scene.neurallabel.output_dir
        return str(Path(bpy.path.abspath(out)) / "spec.json") if out else ""

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if not self.filepath:
            self.filepath = self._default_path(context) or "spec.json"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = self.filepath or self._default_path(context)
        if not path:
            self.report({"ERROR"}, "No file to write: give a file path or choose an output folder in "
                                   "NeuralLabel > Bake")
            return {"CANCELLED"}
        try:
            written = spec_export.export_spec(context, path, parse_frames(self.frames))
        except NeuralLabelError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote the label spec {written}")
        return {"FINISHED"}


classes = (NEURALLABEL_OT_export_spec,)
register, unregister = bpy.utils.register_classes_factory(classes)
