"""``neurallabel.import_dataset``: a transforms.json -> one camera per photo under "NeuralLabel Scene"."""

from __future__ import annotations

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ImportHelper

from ..addon import scene_io
from ..addon.reports import error_message
from ..core.data.dataset import load_dataset
from ..core.errors import NeuralLabelError


class NEURALLABEL_OT_import_dataset(bpy.types.Operator, ImportHelper):
    """Import posed photos (transforms.json or a COLMAP model folder) as cameras showing their photos"""

    bl_idname = "neurallabel.import_dataset"
    bl_label = "Import Dataset"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})
    filepath: StringProperty(name="File Path", subtype="FILE_PATH",
                             description="transforms.json, or a folder holding it or a COLMAP model")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if context.scene is None:
            cls.poll_message_set("No scene to import into")
            return False
        if context.mode != "OBJECT":
            cls.poll_message_set("Switch to Object Mode to import a dataset")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        if not self.filepath:
            self.report({"ERROR"}, "No dataset given: choose a transforms.json")
            return {"CANCELLED"}
        path = bpy.path.abspath(self.filepath)
        try:
            # Everything is read and checked before the scene is touched.
            dataset = load_dataset(path)  # transforms.json (or a folder with it, or a COLMAP model)
            root = scene_io.create_scene(context, dataset)
        except NeuralLabelError as exc:
            self.report({"ERROR"}, f"{error_message(exc, self)}. Choose a valid transforms.json (nothing was imported)")
            return {"CANCELLED"}
        except ImportError as exc:  # Blender's own Python lacks a reader the dataset needs (e.g. Pillow)
            self.report({"ERROR"}, f"Reading {path} needs the Python module {exc.name!r}: press 'Install "
                                   "Dependencies' in the NeuralLabel preferences (nothing was imported)")
            return {"CANCELLED"}
        if dataset.skipped:
            self.report({"WARNING"}, f"Skipped {len(dataset.skipped)} of "
                                     f"{len(dataset.skipped) + len(dataset.frames)} frames whose image "
                                     f"is missing (first: {dataset.skipped[0]})")
        self.report({"INFO"}, f"Imported {len(dataset.frames)} cameras under {root.name!r}")
        return {"FINISHED"}


classes = (NEURALLABEL_OT_import_dataset,)
register, unregister = bpy.utils.register_classes_factory(classes)
