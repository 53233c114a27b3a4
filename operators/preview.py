"""``neurallabel.preview_labels``: the active camera's labels (visible masks over the photo | depth).

The worker bakes that one frame (raw format) from a spec exported to a temp folder and composes the
picture; it lands in the image "NeuralLabel Preview", shown in an Image Editor when one is open.
"""

from __future__ import annotations

import bpy

from ..addon import scene_io, spec_export
from ..addon.properties import label_options
from ..addon.worker_jobs import WorkerOperator
from ..core.errors import NeuralLabelError

IMAGE_NAME = "NeuralLabel Preview"


def active_frame(context: bpy.types.Context) -> int:
    """The dataset frame index of the scene's active camera."""
    camera = context.scene.camera
    if camera is None or scene_io.PROP_FRAME not in camera:
        raise NeuralLabelError("the active camera is not an imported dataset camera: look through one of the "
                               "cameras under 'NeuralLabel Scene' (select it, Ctrl+Numpad 0)")
    return int(camera[scene_io.PROP_FRAME])


def show_preview(context: bpy.types.Context, path: str) -> bpy.types.Image:
    """Load (or reload) the preview image, packed so it outlives the temp folder, into an Image Editor."""
    image = bpy.data.images.get(IMAGE_NAME)
    if image is None:
        image = bpy.data.images.load(path)
        image.name = IMAGE_NAME
    else:
        if image.packed_file is not None:
            image.unpack(method="REMOVE")
        image.filepath = path
        image.source = "FILE"
        image.reload()
    image.pack()
    image.filepath = ""  # packed: no reference to the temp file
    for area in context.screen.areas if context.screen else []:
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            area.tag_redraw()
    return image


class NEURALLABEL_OT_preview_labels(WorkerOperator, bpy.types.Operator):
    """Render the active camera's labels (masks over the photo, depth) into the image 'NeuralLabel Preview'"""

    bl_idname = "neurallabel.preview_labels"
    bl_label = "Preview Labels"
    bl_options = {"REGISTER"}
    stage_label = "Preview"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not cls.scene_ready(context):
            return False
        camera = context.scene.camera
        if camera is None or scene_io.PROP_FRAME not in camera:
            cls.poll_message_set("Make a dataset camera the active camera")
            return False
        return True

    def build_job(self, context: bpy.types.Context) -> dict:
        frame = active_frame(context)
        spec_path = spec_export.export_spec(context, self.temp_dir() / "spec.json", frames=[frame])
        self._frame = frame
        return {"kind": "preview", "spec": str(spec_path), "frame": frame, "out": str(self.temp_dir() / "bake"),
                "options": label_options(context.scene)}

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        image = show_preview(context, result["image"])
        ids = result.get("instance_ids", [])
        self.report({"INFO"}, f"Preview of frame {self._frame}: {len(ids)} visible instances in image "
                              f"{image.name!r}")
        return {"FINISHED"}


classes = (NEURALLABEL_OT_preview_labels,)
register, unregister = bpy.utils.register_classes_factory(classes)
