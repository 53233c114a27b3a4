"""Core errors in Blender's words: ``NeuralLabelError.field`` names the request field at fault, which the
report area names as the panel setting the user changes (the command line names its flag instead).
"""

from __future__ import annotations

from ..core.errors import NeuralLabelError

# Request field -> where the user sets it in the sidebar (tab NeuralLabel).
FIELD_SETTINGS = {
    "frames": "Bake > Frame Range",
    "shard": "Bake > Frame Range",
    "formats": "Bake > Formats",
    "out": "Bake > Output",
    "options": "Bake > Occlusion Tolerance",
    "device": "Field > Device",
    "field": "Field",
    "data": "Scene > Dataset",
}


def error_message(exc: NeuralLabelError) -> str:
    """The error's message, led by the setting to change when its field is a known one."""
    setting = FIELD_SETTINGS.get(getattr(exc, "field", None) or "")
    return f"{setting}: {exc}" if setting else str(exc)


def report_error(operator, exc: NeuralLabelError) -> set[str]:
    """Show ``exc`` in the report area (``RuntimeError`` when called from a script); the operator's result."""
    operator.report({"ERROR"}, error_message(exc))
    return {"CANCELLED"}
