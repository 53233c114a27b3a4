"""``neurallabel.snap_to_field``: refine the active mesh annotation's pose against the field (ICP).

The worker samples surface points from the field near the mesh (depth rendered from the cameras that see it)
and runs robust point-to-plane ICP (rigid only); the refined pose replaces the object's rotation and location,
its scale stays. Undo restores the old pose. A failed snap leaves the object where it was.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from bpy.props import FloatProperty, StringProperty
from mathutils import Matrix

from ..addon import scene_io
from ..addon.annotations import mesh_pose
from ..addon.meshes import mesh_geometry, write_ply
from ..addon.worker_jobs import WorkerOperator
from ..core.errors import NeuralLabelError


def _mesh_annotation(context: bpy.types.Context) -> bpy.types.Object | None:
    obj = context.active_object
    if obj is not None and obj.neurallabel.role == "MESH" and obj.type == "MESH":
        return obj
    return None


class NEURALLABEL_OT_snap_to_field(WorkerOperator, bpy.types.Operator):
    """Align the active mesh annotation to the field's surface near it (rigid ICP; Ctrl+Z undoes)"""

    bl_idname = "neurallabel.snap_to_field"
    bl_label = "Snap to Field"
    bl_options = {"REGISTER", "UNDO"}
    stage_label = "Snap"

    max_distance: FloatProperty(
        name="Search Distance", default=0.0, min=0.0, unit="LENGTH",
        description="How far the mesh may be from its place (0: 3 cm or a fifth of its size)")
    depth_dir: StringProperty(
        name="Depth Maps", subtype="DIR_PATH", default="", options={"HIDDEN"},
        description="Use these z-depth maps (<image name>.npy, e.g. a generated scene's gt/depth) instead "
                    "of the field")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not cls.scene_ready(context):
            return False
        if _mesh_annotation(context) is None:
            cls.poll_message_set("Make a mesh annotation (role Mesh) the active object")
            return False
        return True

    def build_job(self, context: bpy.types.Context) -> dict:
        obj = _mesh_annotation(context)
        if obj is None:
            raise NeuralLabelError("no mesh annotation is active: select one (role Mesh)")
        props = context.scene.neurallabel
        data = bpy.path.abspath(props.dataset_path)
        if not Path(data).exists():
            raise NeuralLabelError(f"the dataset {data} does not exist: import it again")
        job = {"kind": "snap", "data": data,
               "world_from_data": scene_io.world_from_data(context.scene).tolist()}
        if self.depth_dir:
            job["depth_dir"] = bpy.path.abspath(self.depth_dir)
        elif props.field_path and Path(bpy.path.abspath(props.field_path)).exists():
            job["field"] = bpy.path.abspath(props.field_path)
        else:
            raise NeuralLabelError("no field to snap to: load or train a field first (NeuralLabel > Field)")
        try:
            pose, scale = mesh_pose(obj)
        except ValueError as exc:
            raise NeuralLabelError(f"{obj.name!r}: {exc}") from None
        geometry = mesh_geometry(obj, context.evaluated_depsgraph_get(), scale)
        mesh_path = write_ply(self.temp_dir() / "mesh.ply", geometry)
        job.update(mesh=str(mesh_path), pose=pose.tolist())
        if self.max_distance > 0:
            job["max_distance"] = float(self.max_distance)
        self._object_name, self._scale = obj.name, scale
        return job

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        obj = bpy.data.objects.get(self._object_name)
        if obj is None:
            raise NeuralLabelError(f"the object {self._object_name!r} was deleted during the snap")
        pose = np.asarray(result["pose"], dtype=np.float64)
        pose[:3, :3] = pose[:3, :3] * self._scale[None, :]  # the object keeps its scale
        obj.matrix_world = Matrix(pose.tolist())
        self.report({"INFO"}, f"Snapped {obj.name!r}: {result['scene_points']} surface points from "
                              f"{result['views']} views, RMS residual {result['rmse']:.3g} scene units, "
                              f"{result['fitness']:.0%} of the points matched, {result['iterations']} iterations"
                              + ("" if result.get("converged") else " (not converged: snap again)"))
        return {"FINISHED"}


classes = (NEURALLABEL_OT_snap_to_field,)
register, unregister = bpy.utils.register_classes_factory(classes)
