"""The Synthetic Views panel's operators (issue 17), both worker jobs built from ``scene.neurallabel.synth``:

- ``neurallabel.show_synthetic_cameras``: the ``synth_poses`` job draws the cameras a synth run would render
  (nothing is rendered); they become camera objects in the collection "NeuralLabel Synthetic Views", placed
  under the root empty as the dataset cameras are, the extrapolated ones (outside the training cameras' hull)
  in a red-tagged child collection with a red object colour. Each run replaces the previous cameras.
- ``neurallabel.bake_synthetic``: exports the spec into the output folder and runs the ``synth`` job (render
  and bake the views) with progress and cancel, as ``neurallabel.bake``.
"""

from __future__ import annotations

import time

import bpy
import numpy as np
from bpy.props import StringProperty

from ..addon import scene_io
from ..addon.properties import formats_argument, synth_arguments
from ..addon.worker_jobs import WorkerOperator
from ..core.geometry.cameras import Intrinsics
from .bake import export_spec_into, formats_list, output_folder, report_cancelled

COLLECTION_NAME = "NeuralLabel Synthetic Views"
EXTRAPOLATED_NAME = "NeuralLabel Synthetic Views: extrapolated"
# Custom properties on each synthetic camera.
PROP_VIEW = "neurallabel_synth_view"  # the view's index in the draw (its BOP im_id when baked)
PROP_BIN = "neurallabel_synth_bin"
PROP_COORDS = "neurallabel_synth_coords"  # [azimuth deg, elevation deg, distance]
PROP_EXTRAPOLATED = "neurallabel_extrapolated"
INSIDE_COLOUR = (0.3, 0.75, 1.0, 1.0)
EXTRAPOLATED_COLOUR = (1.0, 0.25, 0.1, 1.0)

# Request field -> the panel setting it comes from (addon.reports names it in an error).
SYNTH_SETTINGS = {name: f"Synthetic Views > {label}" for name, label in (
    ("views", "Views"), ("azimuth", "Azimuth"), ("elevation", "Elevation"), ("distance", "Distance"),
    ("weights", "Weights"), ("tau", "Tau"), ("seed", "Seed"), ("size", "Width / Height"),
    ("allow_extrapolation", "Allow Extrapolation"), ("out", "Output"), ("formats", "Formats"))}


def preflight(job: dict) -> None:
    """Validate the request in Blender's process, so bad settings fail before the worker starts."""
    try:
        from ..core.app.jobs import request_from_job
    except ImportError:
        return  # Blender's Python lacks a dependency: the worker makes the same checks first
    request_from_job(job)


def clear_collection(collection: bpy.types.Collection) -> None:
    """Remove the objects of ``collection`` and its children, and their cameras."""
    for obj in list(collection.all_objects):
        data = obj.data
        bpy.data.objects.remove(obj)
        if isinstance(data, bpy.types.Camera) and data.users == 0:
            bpy.data.cameras.remove(data)


def synthetic_collections(scene: bpy.types.Scene) -> tuple[bpy.types.Collection, bpy.types.Collection]:
    """The (emptied) collections of the synthetic cameras: beside the dataset cameras when there is a root."""
    root = scene_io.scene_root(scene)
    parent = root.users_collection[0] if root is not None and root.users_collection else None
    collection = scene_io.named_collection(scene, COLLECTION_NAME, parent)
    extrapolated = scene_io.named_collection(scene, EXTRAPOLATED_NAME, collection)
    extrapolated.color_tag = "COLOR_01"  # red in the outliner
    clear_collection(collection)
    return collection, extrapolated


def display_size(scene: bpy.types.Scene, views: list[dict]) -> float:
    """The dataset cameras' drawing size, so both kinds look alike; else a tenth of the nearest distance."""
    root = scene_io.scene_root(scene)
    cameras = scene_io.dataset_cameras(root) if root is not None else []
    if cameras:
        return float(cameras[0].data.display_size)
    return max(0.1 * min(v["distance"] for v in views), 1e-3)


def show_synthetic_cameras(context: bpy.types.Context, result: dict) -> list[bpy.types.Object]:
    """Replace the synthetic cameras by those of a ``synth_poses`` result; the new camera objects."""
    scene = context.scene
    k = result["intrinsics"]
    intrinsics = Intrinsics(int(k["w"]), int(k["h"]), k["fl_x"], k["fl_y"], k["cx"], k["cy"])
    collection, extrapolated = synthetic_collections(scene)
    root = scene_io.scene_root(scene)
    size = display_size(scene, result["views"])
    cameras = []
    for view in result["views"]:
        outside = bool(view["extrapolated"])
        # the data frame under the root, as the dataset cameras (no root: world = data), so moving the root
        # moves them all
        obj = scene_io.add_camera(extrapolated if outside else collection, root, f"synth {view['index']:06d}",
                                  f"{COLLECTION_NAME} {view['index']:06d}", intrinsics,
                                  np.asarray(view["cam_to_data"], dtype=np.float64), size)
        obj[PROP_VIEW] = int(view["index"])
        obj[PROP_BIN] = int(view["bin"])
        obj[PROP_COORDS] = [float(view[a]) for a in ("azimuth", "elevation", "distance")]
        obj[PROP_EXTRAPOLATED] = outside
        obj.color = EXTRAPOLATED_COLOUR if outside else INSIDE_COLOUR
        cameras.append(obj)
    return cameras


class NEURALLABEL_OT_show_synthetic_cameras(WorkerOperator, bpy.types.Operator):
    """Draw the cameras of the synthetic views (nothing is rendered) into 'NeuralLabel Synthetic Views',
    replacing the previous ones; extrapolated ones are red"""

    bl_idname = "neurallabel.show_synthetic_cameras"
    bl_label = "Show Synthetic Cameras"
    bl_options = {"REGISTER"}
    stage_label = "Synthetic cameras"
    uses_device = False  # poses only: no field is read
    panel_settings = SYNTH_SETTINGS

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.scene_ready(context)

    def build_job(self, context: bpy.types.Context) -> dict:
        scene = context.scene
        job = {"kind": "synth_poses", "data": scene_io.absolute_path(scene.neurallabel.dataset_path),
               "world_from_data": scene_io.world_from_data(scene).tolist(), **synth_arguments(scene)}
        preflight(job)
        return job

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        cameras = show_synthetic_cameras(context, result)
        clamped = f"; clamped to the training hull: {'; '.join(result['clamped'])}" if result["clamped"] else ""
        self.report({"INFO"}, f"{len(cameras)} synthetic cameras in {COLLECTION_NAME!r}, "
                              f"{result['extrapolated']} extrapolated (red){clamped}")
        return {"FINISHED"}


class NEURALLABEL_OT_bake_synthetic(WorkerOperator, bpy.types.Operator):
    """Export the label spec to <output>/spec.json, render the synthetic views from the field and bake their
    labels (Esc cancels)"""

    bl_idname = "neurallabel.bake_synthetic"
    bl_label = "Bake Synthetic Views"
    bl_options = {"REGISTER"}
    stage_label = "Synthetic views"
    panel_settings = SYNTH_SETTINGS

    out_dir: StringProperty(name="Output", subtype="DIR_PATH", default="",
                            description="Output folder (default: the Synthetic Views panel's)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.scene_ready(context, no_field="Train or load a field first: synthetic views are rendered from it")

    def build_job(self, context: bpy.types.Context) -> dict:
        props = context.scene.neurallabel.synth
        out = output_folder(self.out_dir or props.output_dir)
        formats = formats_list(formats_argument(props))
        spec_path = export_spec_into(context, out)
        job = {"kind": "synth", "spec": str(spec_path), "out": str(out), "formats": formats,
               **synth_arguments(context.scene)}
        preflight(job)
        self._out_path, self._started = out, time.monotonic()
        return job

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        skipped = f" ({result['skipped']} were already done)" if result.get("skipped") else ""
        self.report({"INFO"}, f"Baked {result['baked']} of {result['views']} synthetic views{skipped} into "
                              f"{self._out_path} ({', '.join(result['formats'])}, BOP scene "
                              f"{result['bop_scene']:06d}, synth/transforms.json) in "
                              f"{time.monotonic() - self._started:.0f} s; dropped {result['inside_geometry']} "
                              f"inside geometry and {result['untrusted_dropped']} untrusted")
        return {"FINISHED"}

    def job_cancelled(self, context: bpy.types.Context) -> None:
        report_cancelled(self, "Synthetic bake", "views", self._out_path)


classes = (NEURALLABEL_OT_show_synthetic_cameras, NEURALLABEL_OT_bake_synthetic)
register, unregister = bpy.utils.register_classes_factory(classes)
