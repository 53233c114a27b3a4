"""Blender UI panels: the "NeuralLabel" tab in the 3D viewport sidebar (see sidebar.py)."""


def register() -> None:
    from . import sidebar

    sidebar.register()


def unregister() -> None:
    from . import sidebar

    sidebar.unregister()
