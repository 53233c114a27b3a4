"""Blender glue (addon). See DESIGN.md: operators are thin, addon/ converts between the scene and core."""


def register() -> None:
    pass


def unregister() -> None:
    pass
