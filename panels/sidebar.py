"""The "NeuralLabel" tab of the 3D viewport sidebar: Scene, Field, Annotations and Bake sections.

Buttons are drawn with ``layout.operator``: Blender greys one out when its operator's ``poll`` fails and
shows the ``poll_message_set`` text as the tooltip. An operator that is not registered (its engine has not
landed) is drawn as a greyed label instead of failing the whole panel.
"""

from __future__ import annotations

import bpy

CATEGORY = "NeuralLabel"


def operator_registered(idname: str) -> bool:
    """Whether ``idname`` (e.g. ``neurallabel.bake``) names a registered operator."""
    module, _, name = idname.partition(".")
    return hasattr(bpy.types, f"{module.upper()}_OT_{name}")


def operator_button(layout: bpy.types.UILayout, idname: str, text: str, icon: str = "NONE") -> None:
    if operator_registered(idname):
        layout.operator(idname, text=text, icon=icon)
    else:
        row = layout.row()
        row.enabled = False
        row.label(text=f"{text} (not available)", icon=icon)


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


class NEURALLABEL_PT_scene(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_scene"
    bl_label = "Scene"
    bl_parent_id = "NEURALLABEL_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        props = context.scene.neurallabel
        operator_button(layout, "neurallabel.import_dataset", "Import Dataset", "IMPORT")
        col = layout.column()
        col.prop(props, "dataset_path", text="")
        col.prop(props, "root")
        if props.root is not None:
            cameras = [c for c in props.root.children if c.type == "CAMERA"]
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
        operator_button(layout, "neurallabel.load_field", "Load Field", "POINTCLOUD_DATA")


class NEURALLABEL_PT_annotations(NeuralLabelPanel, bpy.types.Panel):
    bl_idname = "NEURALLABEL_PT_annotations"
    bl_label = "Annotations"
    bl_parent_id = "NEURALLABEL_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        row = layout.row(align=True)
        operator_button(row, "neurallabel.add_box", "Add Box", "MESH_CUBE")
        operator_button(row, "neurallabel.add_mesh", "Add Mesh", "MESH_MONKEY")
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
            operator_button(col, "neurallabel.snap_to_field", "Snap to Field", "SNAP_ON")


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
        col.prop(props, "use_frame_range")
        if props.use_frame_range:
            row = col.row(align=True)
            row.prop(props, "frame_start")
            row.prop(props, "frame_end")
        operator_button(layout, "neurallabel.preview_labels", "Preview Labels", "RESTRICT_RENDER_OFF")
        row = layout.row(align=True)
        operator_button(row, "neurallabel.export_spec", "Export Spec", "EXPORT")
        operator_button(row, "neurallabel.bake", "Bake", "RENDER_STILL")
        if props.job_running:
            eta = f", {props.job_eta_s:.0f} s left" if props.job_eta_s >= 0 else ""
            row = layout.row(align=True)
            row.progress(factor=props.job_progress, type="BAR",
                         text=f"{props.job_stage or 'Working'} {props.job_progress:.0%}{eta}")
            operator_button(row, "neurallabel.cancel_job", "Cancel", "CANCEL")


classes = (NEURALLABEL_PT_main, NEURALLABEL_PT_scene, NEURALLABEL_PT_field, NEURALLABEL_PT_annotations,
           NEURALLABEL_PT_bake)
register, unregister = bpy.utils.register_classes_factory(classes)
