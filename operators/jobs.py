"""``neurallabel.cancel_job``: stop the running worker job (``addon.worker_jobs``);
``neurallabel.clear_job_notices``: empty the panel's list of the last job's notices."""

from __future__ import annotations

import bpy

from ..addon.worker_jobs import job_is_running, request_cancel


class NEURALLABEL_OT_cancel_job(bpy.types.Operator):
    """Stop the running NeuralLabel job (bake, train, SfM, preview, snap, ...): finished frames are kept"""

    bl_idname = "neurallabel.cancel_job"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not job_is_running():
            cls.poll_message_set("No job is running")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        request_cancel()
        return {"FINISHED"}


class NEURALLABEL_OT_clear_job_notices(bpy.types.Operator):
    """Clear the list of the last job's notices (the next job clears it too)"""

    bl_idname = "neurallabel.clear_job_notices"
    bl_label = "Clear Notices"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        # the running job's notices stay until it ends: they may explain what it is doing
        return context.scene is not None and bool(context.scene.neurallabel.job_notices) and not job_is_running()

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.neurallabel.job_notices = ""
        return {"FINISHED"}


classes = (NEURALLABEL_OT_cancel_job, NEURALLABEL_OT_clear_job_notices)
register, unregister = bpy.utils.register_classes_factory(classes)
