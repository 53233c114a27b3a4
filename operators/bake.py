"""``neurallabel.bake``: export the label spec to ``<out>/spec.json`` and bake it in the worker.

The job machinery (modal progress, Esc / ``neurallabel.cancel_job``, synchronous under ``blender -b``) is
``addon.worker_jobs.WorkerOperator``.
"""

from __future__ import annotations

import time
from pathlib import Path

import bpy
from bpy.props import StringProperty

from ..addon import spec_export
from ..addon.properties import FORMAT_ITEMS, formats_argument, frames_argument, label_options
from ..addon.worker_jobs import WorkerOperator
from ..core.errors import NeuralLabelError
from ..core.io.outdir import check_before_export
from ..core.pipeline.frames import parse_frames

FORMATS = tuple(f for f, _, _ in FORMAT_ITEMS)


def formats_list(text: str) -> list[str]:
    """'bop,coco' -> ['bop', 'coco'] (NeuralLabelError naming the field for an unknown or empty list)."""
    formats = [f.strip() for f in text.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        raise NeuralLabelError(f"formats {text!r}: choose from {', '.join(FORMATS)}", field="formats")
    return formats


def output_folder(value: str) -> Path:
    """An operator's or panel's output folder setting as an absolute path (NeuralLabelError when unset)."""
    if not value:
        raise NeuralLabelError("no output folder: choose one", field="out")
    return Path(bpy.path.abspath(value)).resolve()


def export_spec_into(context: bpy.types.Context, out: Path) -> Path:
    """Export the scene's spec to ``out/spec.json`` (meshes beside it), once ``out`` may take a bake."""
    check_before_export(out, kind="bake", exported=("spec.json", "meshes"))  # the export writes first
    return spec_export.export_spec(context, out / "spec.json")


def report_cancelled(operator, what: str, units: str, out: Path) -> None:
    operator.report({"WARNING"}, f"{what} cancelled: the {units} finished so far are complete in {out}; "
                                 f"bake again to continue")


class NEURALLABEL_OT_bake(WorkerOperator, bpy.types.Operator):
    """Export the label spec to <output>/spec.json and bake labels for every frame (Esc cancels)"""

    bl_idname = "neurallabel.bake"
    bl_label = "Bake Labels"
    bl_options = {"REGISTER"}
    stage_label = "Bake"

    out_dir: StringProperty(name="Output", subtype="DIR_PATH", default="",
                            description="Output folder (default: the scene's output folder)")
    formats: StringProperty(name="Formats", default="",
                            description="Comma-separated formats, e.g. 'bop,coco' (default: the scene's)")
    frames: StringProperty(name="Frames", default="",
                           description="A:B, frame indices A..B-1 (default: the scene's frame range)")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return cls.scene_ready(context)

    def build_job(self, context: bpy.types.Context) -> dict:
        props = context.scene.neurallabel
        out = output_folder(self.out_dir or props.output_dir)
        formats = formats_list(self.formats or formats_argument(props))
        frames = self.frames.strip() or frames_argument(props)  # None: every frame
        parse_frames(frames)  # a clear message for a malformed range, before anything is written
        spec_path = export_spec_into(context, out)
        self._frames, self._started, self._out_path = frames, time.monotonic(), out
        self._options, self._formats = label_options(context.scene), ",".join(formats)
        job = {"kind": "bake", "spec": str(spec_path), "out": str(out), "formats": formats, "frames": frames,
               "options": self._options}
        try:  # pre-flight: a bad scene or output folder fails here, before the worker starts
            from ..core.app.jobs import check_bake, request_from_job

            check_bake(request_from_job(job))
        except ImportError:
            pass  # Blender's Python lacks a dependency (e.g. trimesh): the worker makes the same checks first
        return job

    def cli_command(self) -> str:
        """The shell command that bakes the same (e.g. on a GPU server with the exported spec)."""
        parts = ["neurallabel", "bake", str(self._out_path / "spec.json"), "--out", str(self._out_path),
                 "--formats", self._formats]
        if self._frames:
            parts += ["--frames", self._frames]
        parts += ["--occlusion-mm", f"{self._options['occlusion_abs_mm']:g}",
                  "--occlusion-rel", f"{self._options['occlusion_rel']:g}",
                  "--occlusion-min-confidence", f"{self._options['occlusion_min_confidence']:g}"]
        if not self._options["colour_edges"]:
            parts.append("--no-colour-edges")
        return " ".join(parts)

    def job_done(self, context: bpy.types.Context, result: dict) -> set[str]:
        summary = result.get("summary") or {}
        skipped = f" ({summary['skipped']} were already done)" if summary.get("skipped") else ""
        self.report({"INFO"}, f"Baked {summary.get('frames', 0)} frames{skipped} into {self._out_path} in "
                              f"{time.monotonic() - self._started:.0f} s (the same from a shell: "
                              f"{self.cli_command()})")
        return {"FINISHED"}

    def job_cancelled(self, context: bpy.types.Context) -> None:
        report_cancelled(self, "Bake", "frames", self._out_path)


classes = (NEURALLABEL_OT_bake,)
register, unregister = bpy.utils.register_classes_factory(classes)
