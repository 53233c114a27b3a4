"""``neurallabel.load_field``: use a trained field and show it as a preview point cloud.

The worker renders the field's depth from a few cameras at low resolution and back-projects it, cropped to
the field's box; the points become the mesh object "NeuralLabel Field Preview" (vertices only) under the
root empty, in the dataset's frame, so moving the root moves the cloud with the cameras.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from bpy.props import IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper
from mathutils import Matrix

from ..addon import scene_io
from ..addon.worker_jobs import WorkerOperator
from ..core.errors import NeuralLabelError

CLOUD_NAME = "NeuralLabel Field Preview"


def replace_cloud(context: bpy.types.Context, points: np.ndarray) -> bpy.types.Object:
    """Create or refill the preview cloud object with ``points`` (N,3) in the dataset frame."""
    mesh = bpy.data.meshes.new(CLOUD_NAME)
    mesh.vertices.add(len(points))
    mesh.vertices.foreach_set("co", np.asarray(points, dtype=np.float32).ravel())
    mesh.update()
    obj = bpy.data.objects.get(CLOUD_NAME)
    if obj is None:
        obj = bpy.data.objects.new(CLOUD_NAME, mesh)
        context.scene.collection.objects.link(obj)
    else:
        old = obj.data
        obj.data = mesh
        if old is not None and old.users == 0:
            bpy.data.meshes.remove(old)
    root = scene_io.scene_root(context.scene)
    obj.parent = root
    obj.matrix_parent_inverse = Matrix.Identity(4)
    obj.matrix_basis = Matrix.Identity(4)
    obj.hide_select = True  # a backdrop: clicks go to the annotations
    return obj


def cloud_job(context: bpy.types.Context, field: str, views: int, out: Path) -> dict:
    """The ``surface_points`` job of a whole field's cloud (the dataset frame): ``field``, or the scene's."""
    field = bpy.path.abspath(field or context.scene.neurallabel.field_path)
    if not field or not Path(field).exists():
        raise NeuralLabelError(f"the field {field or '(none)'} does not exist: choose a trained field checkpoint")
    data = bpy.path.abspath(context.scene.neurallabel.dataset_path)
    return {"kind": "surface_points", "data": data, "field": field, "box": None, "max_views": views,
            "out": str(out)}


class NEURALLABEL_OT_load_field(WorkerOperator, bpy.types.Operator, ImportHelper):
    """Use a trained field checkpoint and show its surface as a preview point cloud"""

    bl_idname = "neurallabel.load_field"
    bl_label = "Load Field"
    bl_options = {"REGISTER", "UNDO"}
    stage_label = "Field preview"

    filepath: StringProperty(name="File Path", subtype="FILE_PATH", description="Trained field checkpoint")
    views: IntProperty(name="Views", default=6, min=1, max=64,
                       description="Cameras the preview cloud is rendered from")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.scene_ready(context, "Import the dataset the field was trained on first")

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if self.filepath or bpy.app.background or context.window is None:
            return WorkerOperator.invoke(self, context, event)
        context.window_manager.fileselect_add(self)  # the browser calls execute: synchronous, a few s
        return {"RUNNING_MODAL"}

    def build_job(self, context: bpy.types.Context) -> dict:
        job = cloud_job(context, self.filepath, int(self.views), self.temp_dir() / "cloud.npy")
        self._field = job["field"]
        return job

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        points = np.load(result["points"])
        context.scene.neurallabel.field_path = self._field
        replace_cloud(context, points)
        self.report({"INFO"}, f"Loaded the field {self._field}: preview cloud of {len(points)} points")
        return {"FINISHED"}


classes = (NEURALLABEL_OT_load_field,)
register, unregister = bpy.utils.register_classes_factory(classes)
