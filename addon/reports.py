"""Core errors in Blender's words: ``NeuralLabelError.field`` names the request field at fault, which the
report names as the setting the user changes: the operator's own argument when it was given one (scripts,
the redo panel), else the sidebar setting it came from (the command line names its flag instead).
"""

from __future__ import annotations

from ..core.errors import NeuralLabelError

# Request field -> the sidebar setting (tab NeuralLabel) it comes from.
PANEL_SETTINGS = {
    "frames": "Bake > Frame Range",
    "shard": "Bake > Frame Range",
    "formats": "Bake > Formats",
    "out": "Bake > Output",
    "options": "Bake > Occlusion Tolerance",
    "device": "Field > Device",
    "field": "Field",
    "data": "Scene > Dataset",
}
# Request field -> the operator arguments that set it, when they are named otherwise.
OPERATOR_ARGUMENTS = {"out": ("out_dir", "filepath"), "field": ("filepath",)}


def error_message(exc: NeuralLabelError, operator=None) -> str:
    """The error's message, led by the setting to change when its field is a known one."""
    field = getattr(exc, "field", None) or ""
    # an operator of another panel names its own settings (e.g. Synthetic Views > Output, not Bake > Output)
    setting = {**PANEL_SETTINGS, **getattr(operator, "panel_settings", {})}.get(field)
    rna = getattr(getattr(operator, "properties", None), "bl_rna", None)  # the operator's arguments
    for name in OPERATOR_ARGUMENTS.get(field, (field,)) if rna is not None and field else ():
        if name in rna.properties and getattr(operator, name, None):
            setting = f"{operator.bl_label} > {rna.properties[name].name}"
            break
    return f"{setting}: {exc}" if setting else str(exc)


def report_error(operator, exc: NeuralLabelError) -> set[str]:
    """Show ``exc`` in the report area (``RuntimeError`` when called from a script); the operator's result."""
    operator.report({"ERROR"}, error_message(exc, operator))
    return {"CANCELLED"}
