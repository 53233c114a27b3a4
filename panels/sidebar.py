"""The "NeuralLabel" tab of the 3D viewport sidebar: Scene, Field, Annotations, Bake and Synthetic Views
sections.

Buttons are drawn with ``layout.operator``: Blender greys one out when its operator's ``poll`` fails and
shows the ``poll_message_set`` text as the tooltip.
"""

from __future__ import annotations

import textwrap

import bpy

from ..addon import scene_io

CATEGORY = "NeuralLabel"


def draw_job_progress(layout: bpy.types.UILayout, props) -> None:
    """The running job's progress bar, ETA and Cancel button (under the panel's job buttons)."""
    if props.job_running:
        eta = f", {props.job_eta_s:.0f} s left" if props.job_eta_s >= 0 else ""
        row = layout.row(align=True)
        row.progress(factor=props.job_progress, type="BAR",
                     text=f"{props.job_stage or 'Working'} {props.job_progress:.0%}{eta}")
        row.operator("neurallabel.cancel_job", text="Cancel", icon="CANCEL")


def draw_job_notices(layout: bpy.types.UILayout, props, chars: int = 40) -> None:
    """The last job's notices (skipped photos, fallbacks, ...), one warning per notice, wrapped at ``chars``
    characters (Blender would cut a long label short), and a button to clear them; nothing when there are none."""
    notices = [line for line in props.job_notices.splitlines() if line.strip()]
    if not notices:
        return
    box = layout.box()
    row = box.row()
    row.label(text="Notices of the last job")
    row.operator("neurallabel.clear_job_notices", text="", icon="X", emboss=False)
    col = box.column(align=True)
    for notice in notices:
        for i, part in enumerate(textwrap.wrap(notice, max(chars, 16), break_on_hyphens=False) or [notice]):
            col.label(text=part, icon="ERROR" if i == 0 else "BLANK1")


def label_chars(context: bpy.types.Context) -> int:
    """About how many characters of a label fit across the sidebar (for wrapping long notices)."""
    region = getattr(context, "region", None)
    if region is None or region.width <= 0:
        return 40
    return int(region.width / (7.0 * context.preferences.system.ui_scale)) - 4  # minus the icon


class NeuralLabelPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY


class NEURALLABEL_PT_main(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_main"
    bl_label = "NeuralLabel"

    def draw(self, context: bpy.types.Context) -> None:
        props = context.scene.neurallabel
        if props.job_running:
            self.layout.progress(factor=props.job_progress, type="BAR",
                                 text=f"{props.job_stage or 'Working'} {props.job_progress:.0%}")
        draw_job_notices(self.layout, props, label_chars(context))  # any job's, so here, above every section


class NEURALLABEL_PT_scene(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_scene"
    bl_label = "Scene"
    bl_parent_id = "NEURALLABEL_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        props = context.scene.neurallabel
        row = layout.row(align=True)
        row.operator("neurallabel.import_dataset", text="Import Dataset", icon="IMPORT")
        row.operator("neurallabel.run_sfm", text="Run SfM", icon="CAMERA_DATA")
        col = layout.column()
        col.prop(props, "dataset_path", text="")
        col.prop(props, "root")
        if props.root is not None:
            cameras = scene_io.dataset_cameras(props.root)  # not the synthetic ones beside them
            col.label(text=f"{len(cameras)} cameras", icon="CAMERA_DATA")


class NEURALLABEL_PT_field(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_field"
    bl_label = "Field"
    bl_parent_id = "NEURALLABEL_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        props = context.scene.neurallabel
        layout.prop(props, "field_path", text="")
        layout.prop(props, "device")
        row = layout.row(align=True)
        row.operator("neurallabel.train_field", text="Train Field", icon="PLAY")
        row.operator("neurallabel.load_field", text="Load Field", icon="POINTCLOUD_DATA")
        row = layout.row(align=True)
        row.operator("neurallabel.export_field_points", text="Export Field Points", icon="EXPORT")
        row.operator("neurallabel.export_field_mesh", text="Export Field Mesh", icon="EXPORT")


class NEURALLABEL_PT_annotations(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_annotations"
    bl_label = "Annotations"
    bl_parent_id = "NEURALLABEL_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        row = layout.row(align=True)
        row.operator("neurallabel.add_box", text="Add Box", icon="MESH_CUBE")
        row.operator("neurallabel.add_mesh", text="Add Mesh", icon="MESH_MONKEY")
        obj = context.active_object
        if obj is None:
            layout.label(text="No active object")
            return
        annotation = obj.neurallabel
        col = layout.column()
        col.label(text=obj.name, icon="OBJECT_DATA")
        col.prop(annotation, "role")
        if annotation.role == "NONE":
            return
        col.prop(annotation, "category")
        col.prop(annotation, "category_id")
        col.prop(annotation, "instance_id")
        col.prop(annotation, "transparent")
        if annotation.role == "MESH":
            col.prop(annotation, "mesh_path", text="")
            col.operator("neurallabel.snap_to_field", text="Snap to Field", icon="SNAP_ON")


class NEURALLABEL_PT_bake(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_bake"
    bl_label = "Bake"
    bl_parent_id = "NEURALLABEL_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        props = context.scene.neurallabel
        col = layout.column()
        col.prop(props, "output_dir", text="")
        col.row().prop(props, "formats")
        col.prop(props, "occlusion_tolerance")
        col.prop(props, "occlusion_tolerance_relative")
        col.prop(props, "occlusion_min_confidence")
        col.prop(props, "colour_edges")
        col.prop(props, "use_frame_range")
        if props.use_frame_range:
            row = col.row(align=True)
            row.prop(props, "frame_start")
            row.prop(props, "frame_end")
        layout.operator("neurallabel.preview_labels", text="Preview Labels", icon="RESTRICT_RENDER_OFF")
        row = layout.row(align=True)
        row.operator("neurallabel.export_spec", text="Export Spec", icon="EXPORT")
        row.operator("neurallabel.bake", text="Bake", icon="RENDER_STILL")
        draw_job_progress(layout, props)


class NEURALLABEL_PT_synthetic(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_synthetic"
    bl_label = "Synthetic Views"
    bl_parent_id = "NEURALLABEL_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        from ..addon.properties import SYNTH_AXES

        layout = self.layout
        synth = context.scene.neurallabel.synth
        col = layout.column()
        col.prop(synth, "views")
        for axis in SYNTH_AXES:  # 0 bins: the training cameras' hull
            row = col.row(align=True)
            row.prop(synth, f"{axis}_bins", text=axis.title())
            sub = row.row(align=True)
            sub.enabled = getattr(synth, f"{axis}_bins") > 0
            sub.prop(synth, f"{axis}_low", text="")
            sub.prop(synth, f"{axis}_high", text="")
        col.prop(synth, "weights")
        row = col.row(align=True)
        row.prop(synth, "seed")
        row.prop(synth, "tau")
        col.prop(synth, "allow_extrapolation")
        row = col.row(align=True)
        row.prop(synth, "width")
        row.prop(synth, "height")
        layout.operator("neurallabel.show_synthetic_cameras", text="Show Synthetic Cameras", icon="OUTLINER_OB_CAMERA")
        col = layout.column()
        col.prop(synth, "output_dir", text="")
        col.row().prop(synth, "formats")
        layout.operator("neurallabel.bake_synthetic", text="Bake Synthetic Views", icon="RENDER_STILL")
        draw_job_progress(layout, context.scene.neurallabel)


classes = (NEURALLABEL_PT_main, NEURALLABEL_PT_scene, NEURALLABEL_PT_field, NEURALLABEL_PT_annotations,
           NEURALLABEL_PT_bake, NEURALLABEL_PT_synthetic)
register, unregister = bpy.utils.register_classes_factory(classes)
