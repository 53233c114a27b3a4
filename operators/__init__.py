"""Blender operators (thin: they read the scene through addon/ and call core or the worker).

Every module listed in ``MODULES`` has ``register()`` / ``unregister()`` (e.g. from
``bpy.utils.register_classes_factory(classes)``). To add operators, add one line here.
"""

from importlib import import_module

MODULES = (
    "import_dataset",  # neurallabel.import_dataset
    "annotate",  # neurallabel.add_box, neurallabel.add_mesh
    "jobs",  # neurallabel.cancel_job, neurallabel.clear_job_notices
    "bake",  # neurallabel.bake
    "export_spec",  # neurallabel.export_spec
    "preview",  # neurallabel.preview_labels
    "snap",  # neurallabel.snap_to_field
    "field",  # neurallabel.load_field
    "field_jobs",  # neurallabel.run_sfm, neurallabel.train_field, neurallabel.export_field_points
    "synth",  # neurallabel.show_synthetic_cameras, neurallabel.bake_synthetic
    "dependencies",  # neurallabel.check_worker, neurallabel.install_dependencies
)


def _modules() -> list:
    return [import_module(f".{name}", __package__) for name in MODULES]


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
