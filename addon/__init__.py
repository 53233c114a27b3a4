"""Blender glue (addon). See DESIGN.md: operators are thin, addon/ converts between the scene and core.

``properties`` (scene/object state), ``preferences`` (worker Python, dependencies, device),
``scene_io`` (dataset <-> Blender cameras, the root empty), ``annotations`` (boxes, meshes, ids),
``meshes`` (Blender meshes -> arrays, PLY), ``spec_export`` (scene -> core ``LabelSpec``),
``worker_client`` (the worker process), ``worker_jobs`` (operators that run a worker job),
``reports`` (core errors in the panel's words).
"""


def register() -> None:
    from . import annotations, preferences, properties, scene_io

    properties.register()
    preferences.register()
    annotations.register()
    scene_io.register()


def unregister() -> None:
    from . import annotations, preferences, properties, scene_io

    scene_io.unregister()
    annotations.unregister()
    preferences.unregister()
    properties.unregister()
