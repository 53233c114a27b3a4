"""The add-on's state: ``scene.neurallabel`` and ``object.neurallabel`` (public scripting interface).

Names here are stable (docs/blender.md). Enum identifiers are lower-case where they are passed on to the
command line / worker unchanged (``formats``, ``device``).
"""

from __future__ import annotations

import bpy
import numpy as np
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from ..core.export import FORMATS, WRITERS

DEVICE_ITEMS = [
    ("auto", "Auto", "Use the device chosen in the add-on preferences (CUDA when the worker has it)"),
    ("cpu", "CPU", "Run on the CPU"),
    ("cuda", "CUDA", "Run on an NVIDIA GPU (the worker Python needs a CUDA build of torch)"),
]

FORMAT_ITEMS = [(w.name, w.title, w.description) for w in WRITERS.values()]  # core's one list of formats

ROLE_ITEMS = [
    ("NONE", "None", "Not an annotation"),
    ("BOX", "Box", "An oriented box: the object's local bounding box placed by its world matrix"),
    ("MESH", "Mesh", "A known mesh (mesh_path) aligned to the object in the scene"),
]


def _category_changed(self: "NeuralLabelObjectProperties", context: bpy.types.Context) -> None:
    # A category name keeps one id across the scene: reuse it, or take the next free one.
    from .annotations import category_id_for

    if self.category and context is not None and context.scene is not None:
        owner = self.id_data
        self.category_id = category_id_for(context.scene, self.category, exclude=owner)


def _instance_id_changed(self: "NeuralLabelObjectProperties", context: bpy.types.Context) -> None:
    # An id typed in that another annotation already has is taken: this object gets the next free one.
    from .annotations import annotation_objects, next_instance_id

    if context is None or context.scene is None or self.role == "NONE":
        return
    owner = self.id_data
    if self.instance_id > 0 and any(o.neurallabel.instance_id == self.instance_id
                                    for o in annotation_objects(context.scene) if o != owner):
        self.instance_id = next_instance_id(context.scene, exclude=owner)
    if self.instance_owner != owner.name:
        self.instance_owner = owner.name


SYNTH_AXES = ("azimuth", "elevation", "distance")


def _axis_properties(axis: str, low: float, high: float, unit: str, **limits) -> dict:
    """``<axis>_low``, ``<axis>_high`` and ``<axis>_bins`` (0 bins: the training cameras' hull)."""
    what = "degrees" if unit == "NONE" else "scene units from the look-at centre"
    return {
        f"{axis}_low": FloatProperty(name="Low", default=low, unit=unit, description=f"Lowest {axis} ({what})",
                                     **limits),
        f"{axis}_high": FloatProperty(name="High", default=high, unit=unit, **limits,
                                      description=f"Highest {axis} ({what})"),
        f"{axis}_bins": IntProperty(name=f"{axis.title()} Bins", default=0, min=0, soft_max=36,
                                    description=f"Bins over the {axis} range; 0 = the training cameras' "
                                                f"{axis} hull (the command line's default)"),
    }


class NeuralLabelSynthProperties(bpy.types.PropertyGroup):
    """``scene.neurallabel.synth``: the Synthetic Views panel (the ``neurallabel synth`` options)."""

    # the nine range settings made by one function (Blender reads properties from __annotations__; the
    # annotated lines below add to this dict)
    __annotations__ = {
        **_axis_properties("azimuth", -180.0, 180.0, "NONE", soft_min=-360.0, soft_max=360.0),
        **_axis_properties("elevation", 0.0, 60.0, "NONE", min=-89.0, max=89.0),
        **_axis_properties("distance", 1.0, 2.0, "LENGTH", min=0.0),
    }
    # Defaults equal `neurallabel synth`'s (tests/test_defaults.py)
    views: IntProperty(name="Views", default=100, min=1, soft_max=1000, description="Synthetic views to draw")
    weights: StringProperty(
        name="Weights", subtype="FILE_PATH", default="",
        description="Bin weights: empty or 'uniform', or a JSON file (a list of weights per bin, or a psi.json)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed of the draws (same seed, same views)")
    tau: FloatProperty(name="Tau", default=0.1, min=0.001, soft_max=10.0, precision=3,
                       description="Gumbel-softmax temperature of the bin draws")
    allow_extrapolation: BoolProperty(
        name="Allow Extrapolation", default=False,
        description="Keep ranges outside the training cameras' hull (else they are clamped to it)")
    width: IntProperty(name="Width", default=0, min=0, description="Render width in pixels; 0 = the dataset's camera")
    height: IntProperty(name="Height", default=0, min=0,
                        description="Render height in pixels; 0 = the dataset's camera")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH",
                               description="Folder the synthetic views are baked into")
    formats: EnumProperty(name="Formats", items=FORMAT_ITEMS, options={"ENUM_FLAG"}, default=set(FORMATS),
                          description="Label formats of the synthetic views")


class NeuralLabelSceneProperties(bpy.types.PropertyGroup):
    dataset_path: StringProperty(
        name="Dataset", subtype="FILE_PATH",
        description="transforms.json of the photos (set by Import Dataset)")
    field_path: StringProperty(
        name="Field", subtype="FILE_PATH", description="Trained field checkpoint used by snap, preview and bake")
    output_dir: StringProperty(
        name="Output", subtype="DIR_PATH", description="Folder the bake writes its labels into")
    formats: EnumProperty(
        name="Formats", items=FORMAT_ITEMS, options={"ENUM_FLAG"}, default=set(FORMATS),
        description="Label formats the bake writes")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto",
                         description="Where the worker runs the field")
    occlusion_tolerance: FloatProperty(
        name="Occlusion Tolerance", default=0.005, min=0.0, soft_max=0.1, precision=4, unit="LENGTH",
        description="A surface point counts as visible when the field's depth is no more than this "
                    "(scene units) in front of it, plus the relative tolerance")
    occlusion_tolerance_relative: FloatProperty(
        name="Relative Tolerance", default=0.02, min=0.0, soft_max=0.1, precision=4, subtype="FACTOR",
        description="Extra occlusion tolerance as a fraction of the depth")
    # Defaults equal core.labels.LabelOptions (chosen by scripts/bench_labels.py), so a bake from Blender and
    # a plain `neurallabel bake spec.json` agree; tests/test_defaults.py keeps them equal.
    occlusion_min_confidence: FloatProperty(
        name="Min Confidence", default=0.5, min=0.0, max=1.0, precision=2, subtype="FACTOR",
        description="The field hides an annotated mesh only where its confidence is at least this "
                    "(floaters are unsure and must not cut holes in masks)")
    colour_edges: BoolProperty(
        name="Colour Edges", default=True,
        description="Box objects' outlines from the photo's colours where the field's blur leaves them unsure")
    use_frame_range: BoolProperty(name="Frame Range", default=False,
                                  description="Bake only frames frame_start..frame_end (inclusive)")
    frame_start: IntProperty(name="First Frame", default=0, min=0,
                             description="First dataset frame index to bake (inclusive)")
    frame_end: IntProperty(name="Last Frame", default=0, min=0,
                           description="Last dataset frame index to bake (inclusive)")
    root: PointerProperty(
        type=bpy.types.Object, name="Root",
        description='The "NeuralLabel Scene" empty: its matrix maps the dataset frame into the world')
    # Progress of the running job (written by the bake / preview operators, drawn in the Bake panel).
    job_running: BoolProperty(name="Job Running", default=False, options={"SKIP_SAVE"})
    job_progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR",
                                options={"SKIP_SAVE"})
    job_stage: StringProperty(name="Stage", default="", options={"SKIP_SAVE"})
    job_eta_s: FloatProperty(name="ETA", default=-1.0, options={"SKIP_SAVE"},
                             description="Estimated seconds left, negative when unknown")
    # The last job's notices (skipped photos, fallbacks, clamped ranges), one per line: set by WorkerOperator,
    # cleared when the next job starts, kept after it ends (success, error or cancel) for the panel to list.
    job_notices: StringProperty(name="Notices", default="", options={"SKIP_SAVE"},
                                description="What the last NeuralLabel job told you, one notice per line")
    synth: PointerProperty(type=NeuralLabelSynthProperties, name="Synthetic Views")
    # The last "Check Worker" result, one line for the panel (operators/dependencies.py).
    worker_check: StringProperty(name="Worker Check", default="", options={"SKIP_SAVE"})


class NeuralLabelObjectProperties(bpy.types.PropertyGroup):
    role: EnumProperty(name="Role", items=ROLE_ITEMS, default="NONE",
                       description="What this object annotates")
    category: StringProperty(name="Category", default="", update=_category_changed,
                             description="Object class name, e.g. 'mug'")
    category_id: IntProperty(name="Category ID", default=0, min=0,
                             description="Numeric class id (BOP obj_id, COCO category_id); 0 = not set")
    instance_id: IntProperty(name="Instance ID", default=0, min=0, update=_instance_id_changed,
                             description="Unique id of this object instance in the scene (an id already "
                                         "taken is replaced by the next free one); 0 = not set")
    transparent: BoolProperty(name="Transparent", default=False,
                              description="Glass-like: its depth comes from the mesh, not the field")
    mesh_path: StringProperty(name="Mesh File", subtype="FILE_PATH",
                              description="Mesh file (in the object's own frame) of a MESH annotation")
    # Name of the object that owns instance_id: a duplicate carries the original's name, so it is the one
    # that gets a new id (see annotations.ensure_unique_instance_ids).
    instance_owner: StringProperty(name="Instance Owner", default="", options={"HIDDEN"})


def frames_argument(props: NeuralLabelSceneProperties) -> str | None:
    """The frame range as the command line's ``--frames A:B`` value (end exclusive), None = all frames."""
    if not props.use_frame_range:
        return None
    return f"{props.frame_start}:{max(props.frame_end, props.frame_start) + 1}"


def synth_arguments(scene: bpy.types.Scene) -> dict:
    """The panel's drawing settings as the synth / synth_poses request fields (a range with 0 bins is None:
    the training hull)."""
    props = scene.neurallabel.synth
    args = {"views": int(props.views), "seed": int(props.seed), "tau": float32_value(props.tau),
            "allow_extrapolation": bool(props.allow_extrapolation)}
    for axis in SYNTH_AXES:
        bins = getattr(props, f"{axis}_bins")
        low, high = (float32_value(getattr(props, f"{axis}_{end}")) for end in ("low", "high"))
        args[axis] = f"{low!r}:{high!r}:{bins}" if bins else None
    weights = props.weights.strip()
    args["weights"] = None if weights in ("", "uniform") else bpy.path.abspath(weights)
    args["size"] = f"{props.width}x{props.height}" if props.width and props.height else None
    return args


def formats_argument(props: NeuralLabelSceneProperties) -> str:
    """The formats as the command line's ``--formats`` value, in a fixed order."""
    return ",".join(f for f, _, _ in FORMAT_ITEMS if f in props.formats)


def float32_value(value: float) -> float:
    """The decimal a user typed into a float32 property (0.01, not 0.009999999776482582)."""
    return float(np.format_float_positional(np.float32(value), unique=True))


def units_to_mm(scene: bpy.types.Scene) -> float:
    """Millimetres per world unit: the spec's ``units_to_mm`` (the scene's unit scale, float32 as typed)."""
    return 1000.0 * float32_value(scene.unit_settings.scale_length)


def label_options(scene: bpy.types.Scene) -> dict:
    """The scene's occlusion tolerances (millimetres, fraction) and colour-edges switch as the bake's
    LabelOptions fields."""
    props = scene.neurallabel
    return {"occlusion_abs_mm": float32_value(props.occlusion_tolerance) * units_to_mm(scene),
            "occlusion_rel": float32_value(props.occlusion_tolerance_relative),
            "occlusion_min_confidence": float32_value(props.occlusion_min_confidence),
            "colour_edges": bool(props.colour_edges)}


classes = (NeuralLabelSynthProperties, NeuralLabelSceneProperties, NeuralLabelObjectProperties)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.neurallabel = PointerProperty(type=NeuralLabelSceneProperties)
    bpy.types.Object.neurallabel = PointerProperty(type=NeuralLabelObjectProperties)


def unregister() -> None:
    del bpy.types.Object.neurallabel
    del bpy.types.Scene.neurallabel
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
