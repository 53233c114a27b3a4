"""``neurallabel.cancel_job``: stop the running worker job (``addon.worker_jobs``)."""

from __future__ import annotations

import bpy

from ..addon.worker_jobs import job_is_running, request_cancel


class NEURALLABEL_OT_cancel_job(bpy.types.Operator):
    """Stop the running NeuralLabel job (bake, preview, snap, load field): finished frames are kept"""

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


classes = (NEURALLABEL_OT_cancel_job,)
register, unregister = bpy.utils.register_classes_factory(classes)
