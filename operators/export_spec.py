"""``neurallabel.export_spec``: write the scene's label spec (JSON) and its meshes, for ``neurallabel bake``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import bpy
from bpy.props import StringProperty

from ..addon import spec_export
from ..addon.reports import report_error
from ..core.errors import NeuralLabelError
from ..core.pipeline.frames import parse_frames


def frame_list(text: str) -> Optional[list[int]]:
    """'A:B' (the bake's --frames grammar) -> [A, ..., B-1]; '' -> None (the spec lists no frames: all)."""
    span = parse_frames(text.strip() or None)
    if span is None:
        return None
    start, stop = span
    if stop is None or not 0 <= start < stop:
        raise NeuralLabelError(f"frames {text!r}: the spec lists frames A..B-1, so give A:B with 0 <= A < B",
                               field="frames")
    return list(range(start, stop))


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
        try:
            if not path:
                raise NeuralLabelError("no file to write: give a file path or choose an output folder",
                                       field="out")
            written = spec_export.export_spec(context, path, frame_list(self.frames))
        except NeuralLabelError as exc:
            return report_error(self, exc)
        self.report({"INFO"}, f"Wrote the label spec {written}")
        return {"FINISHED"}


classes = (NEURALLABEL_OT_export_spec,)
register, unregister = bpy.utils.register_classes_factory(classes)
