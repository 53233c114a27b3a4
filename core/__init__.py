"""NeuralLabel's engine, free of bpy: cameras, datasets, field, rendering, training, labels, exports.

Everything here is plain functions over numpy arrays and torch tensors. Nothing prints; long work reports
progress through a ``progress(done, total, stage)`` callback (:mod:`.progress`) and bad input raises
:class:`NeuralLabelError`. Modules import each other relatively only, so the worker process can load ``core``
without Blender.

The public API is the names in ``__all__``, importable from ``neurallabel.core`` directly::

    from neurallabel.core import load_dataset, View, camera_rays

They load lazily (PEP 562): importing ``neurallabel.core`` costs nothing, and Blender's process, which
imports the spec and the writers' registry, never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module (relative to this package) that defines it
_EXPORTS = {
    # errors, progress, devices
    "NeuralLabelError": "errors", "ProgressFn": "progress", "Cancelled": "progress", "resolve_device": "devices",
    # geometry
    "Intrinsics": "geometry.cameras", "camera_rays": "geometry.cameras", "camera_directions": "geometry.cameras",
    "project_points": "geometry.cameras", "distort": "geometry.cameras", "undistort": "geometry.cameras",
    "project": "geometry.projection", "projected_region": "geometry.projection", "backproject": "geometry.projection",
    "Similarity": "geometry.transforms", "apply_points": "geometry.transforms", "rigid_inverse": "geometry.transforms",
    "Box": "geometry.box", "View": "geometry.view",
    # data
    "Dataset": "data.dataset", "Frame": "data.dataset", "load_dataset": "data.dataset",
    "load_transforms": "data.dataset", "load_colmap": "data.dataset", "run_sfm": "data.sfm",
    # the label spec
    "LabelSpec": "spec", "SpecObject": "spec", "load_spec": "spec", "parse_spec": "spec", "write_spec": "spec",
    # field, rendering, training
    "Field": "field.model", "FieldConfig": "field.model", "load_field": "field.model",
    "RaySamples": "render.samples", "render_rays": "render.views", "render_frame": "render.views",
    "render_views": "render.views", "TrainOptions": "train.loop", "train_field": "train.loop",
    # scene queries, labels, bake, writers
    "SceneQuery": "scene.queries", "DensityQuery": "scene.queries", "FieldQuery": "scene.queries",
    "TruthQuery": "scene.queries", "DepthMapQuery": "scene.queries",
    "FrameLabeler": "labels.frame", "FrameLabels": "labels.frame", "LabelOptions": "labels.frame",
    "bake": "pipeline.bake", "Writer": "export", "WRITERS": "export", "FORMATS": "export", "get_writer": "export",
    # evaluation
    "psnr": "eval.image", "ssim": "eval.image",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
