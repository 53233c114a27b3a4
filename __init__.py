"""NeuralLabel: photos of a real scene -> a neural radiance field -> labeled vision datasets.

The repository root is at once the Blender extension and the Python package ``neurallabel``:
``import neurallabel.core`` never touches bpy. Blender calls :func:`register` / :func:`unregister`,
which import the Blender glue lazily so that importing this package stays cheap and bpy-free.
"""

__version__ = "0.1.0"


def register() -> None:
    from . import addon, operators, panels

    addon.register()
    operators.register()
    panels.register()


def unregister() -> None:
    from . import addon, operators, panels

    panels.unregister()
    operators.unregister()
    addon.unregister()
