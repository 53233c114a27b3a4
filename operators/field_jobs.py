"""Worker jobs that make and export fields: ``neurallabel.run_sfm`` (photos -> a dataset, then imported),
``neurallabel.train_field`` (the scene's dataset -> a field checkpoint), ``neurallabel.export_field_points``
(the field's surface cloud -> an ASCII PLY in the dataset frame) and ``neurallabel.export_field_mesh`` (the
field's surface as a triangle mesh -> a PLY in the dataset frame, written by the worker's ``export_mesh`` job).
Progress and cancel: :class:`WorkerOperator`.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from bpy.props import FloatProperty, IntProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from ..addon.worker_jobs import WorkerOperator
from ..core.errors import NeuralLabelError
from .field import cloud_job


def write_ply(path: str | Path, points: np.ndarray) -> None:
    """``points`` (N, 3) as an ASCII PLY point cloud (readable by Blender, MeshLab, CloudCompare, trimesh)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    header = f"ply\nformat ascii 1.0\nelement vertex {len(points)}\nproperty float x\nproperty float y\n" \
             "property float z\nend_header\n"
    with open(path, "w") as f:
        f.write(header)
        np.savetxt(f, points, fmt="%.6f")


class NEURALLABEL_OT_run_sfm(WorkerOperator, bpy.types.Operator):
    """Recover the cameras of a folder of photos (COLMAP) into a dataset folder, then import it"""

    bl_idname = "neurallabel.run_sfm"
    bl_label = "Run SfM"
    bl_options = {"REGISTER", "UNDO"}
    stage_label = "SfM"
    uses_device = False

    images: StringProperty(name="Photos", subtype="DIR_PATH", description="Folder of photos of the scene")
    out_dir: StringProperty(name="Dataset Folder", subtype="DIR_PATH",
                            description="Where the dataset (transforms.json) is written; empty: the photos' "
                                        "parent folder")
    downscale: FloatProperty(name="Downscale", default=1.0, min=1.0, description="Match on smaller photos")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.can_start(context)

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if self.images or bpy.app.background or context.window is None:
            return WorkerOperator.invoke(self, context, event)
        return context.window_manager.invoke_props_dialog(self)  # OK runs execute: SfM of few photos

    def build_job(self, context: bpy.types.Context) -> dict:
        images = bpy.path.abspath(self.images).rstrip("/\\")
        if not images or not Path(images).is_dir():
            raise NeuralLabelError(f"photos {images or '(none)'}: choose a folder of photos", field="images")
        out = bpy.path.abspath(self.out_dir) if self.out_dir else str(Path(images).parent)  # as the CLI's
        return {"kind": "sfm", "images": images, "out": out, "downscale": float(self.downscale)}

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        self.report({"INFO"}, f"SfM registered {result['registered']} of {result['images']} photos "
                              f"({result['mean_reprojection_error_px']:.2f} px): {result['transforms']}")
        return bpy.ops.neurallabel.import_dataset(filepath=result["transforms"])


class NEURALLABEL_OT_train_field(WorkerOperator, bpy.types.Operator):
    """Train (or resume) a field on the scene's dataset; the checkpoint becomes the scene's field"""

    bl_idname = "neurallabel.train_field"
    bl_label = "Train Field"
    bl_options = {"REGISTER"}
    stage_label = "Train"

    filepath: StringProperty(name="Checkpoint", subtype="FILE_PATH",
                             description="Field checkpoint to write (resumed if it exists); empty: the scene's "
                                         "field, else field.pt beside the dataset")
    steps: IntProperty(name="Steps", default=0, min=0, description="Training steps; 0: the trainer's default")
    minutes: FloatProperty(name="Minutes", default=0.0, min=0.0,
                           description="Train for this long instead of a number of steps; 0: use Steps")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.scene_ready(context)

    def build_job(self, context: bpy.types.Context) -> dict:
        props = context.scene.neurallabel
        data = bpy.path.abspath(props.dataset_path)
        out = bpy.path.abspath(self.filepath or props.field_path)
        if not out:
            folder = Path(data) if Path(data).is_dir() else Path(data).parent
            out = str(folder / "field.pt")
        self._out = out
        return {"kind": "train", "data": data, "out": out, "steps": self.steps or None,
                "minutes": self.minutes or None}

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        context.scene.neurallabel.field_path = self._out
        self.report({"INFO"}, f"Trained {result['steps']} steps on {result['device']} "
                              f"(PSNR {result['train_psnr']:.1f}): {self._out}")
        return {"FINISHED"}


class FieldExport(WorkerOperator):
    """What the field exports share: a .ply file chosen in the browser, a scene with a field."""

    bl_options = {"REGISTER"}
    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.scene_ready(context, no_field="Train or load a field first")

    def invoke(self, context: bpy.types.Context, event) -> set[str]:
        if self.filepath and (bpy.app.background or context.window is None):
            return WorkerOperator.invoke(self, context, event)
        return ExportHelper.invoke(self, context, event)  # the browser calls execute: synchronous, a few s

    def output_path(self) -> str:
        if not self.filepath:
            raise NeuralLabelError("no file given: choose where to write the .ply", field="out")
        return bpy.path.abspath(self.filepath)


class NEURALLABEL_OT_export_field_points(FieldExport, bpy.types.Operator, ExportHelper):
    """Export the field's surface as a point cloud (PLY, the dataset frame)"""

    bl_idname = "neurallabel.export_field_points"
    bl_label = "Export Field Points"
    stage_label = "Field points"

    views: IntProperty(name="Views", default=12, min=1, max=256,
                       description="Cameras the cloud is rendered from (more: denser, slower)")

    def build_job(self, context: bpy.types.Context) -> dict:
        self.output_path()
        return cloud_job(context, "", int(self.views), self.temp_dir() / "cloud.npy")

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        points = np.load(result["points"])
        path = self.output_path()
        write_ply(path, points)
        self.report({"INFO"}, f"Wrote {len(points)} field points to {path}")
        return {"FINISHED"}


class NEURALLABEL_OT_export_field_mesh(FieldExport, bpy.types.Operator, ExportHelper):
    """Export the field's surface as a triangle mesh (PLY with vertex colours, the dataset frame)"""

    bl_idname = "neurallabel.export_field_mesh"
    bl_label = "Export Field Mesh"
    stage_label = "Field mesh"

    resolution: IntProperty(name="Resolution", default=256, min=8, max=1024,
                            description="Voxels along the field's detailed region's longest side")
    threshold: FloatProperty(name="Threshold", default=0.0, min=0.0,
                             description="Iso-level (density per data unit); 0: where a sharp field renders "
                                         "its surface (ln 2 / render step)")

    def build_job(self, context: bpy.types.Context) -> dict:
        return {"kind": "export_mesh", "field": bpy.path.abspath(context.scene.neurallabel.field_path),
                "out": self.output_path(), "resolution": int(self.resolution), "threshold": self.threshold or None}

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        self.report({"INFO"}, f"Wrote the field's mesh ({result['faces']} faces) to {result['out']}")
        return {"FINISHED"}


classes = (NEURALLABEL_OT_run_sfm, NEURALLABEL_OT_train_field, NEURALLABEL_OT_export_field_points,
           NEURALLABEL_OT_export_field_mesh)
register, unregister = bpy.utils.register_classes_factory(classes)
