"""Core errors name the request field at fault (``NeuralLabelError.field``); the add-on's reports name the
setting to change: the operator argument that was given, else the sidebar setting the value came from. Errors
raised inside the worker keep their field across the process boundary."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from bpy_helpers import DEV_PRELUDE, run_bpy
from neurallabel.addon.reports import error_message
from neurallabel.core.errors import NeuralLabelError
from test_bake_operator import ANNOTATE, truth_objects


def fake_operator(**arguments):
    properties = {name: NS(name=name.replace("_", " ").title()) for name in arguments}
    return NS(bl_label="Bake Labels", properties=NS(bl_rna=NS(properties=properties)), **arguments)


def test_error_message_names_the_setting():
    frames = NeuralLabelError("frames '5:x': A and B must be integers", field="frames")
    assert error_message(frames) == "Bake > Frame Range: frames '5:x': A and B must be integers"
    # The operator's own argument, when given, is what to change; an empty one came from the panel.
    assert error_message(frames, fake_operator(frames="5:x")).startswith("Bake Labels > Frames: frames")
    assert error_message(frames, fake_operator(frames="")).startswith("Bake > Frame Range: ")
    out = NeuralLabelError("no output folder", field="out")
    assert error_message(out, fake_operator(out_dir="/x")) == "Bake Labels > Out Dir: no output folder"
    assert error_message(NeuralLabelError("cuda:3: no such device", field="device")).startswith("Field > Device: ")
    assert error_message(NeuralLabelError("plain")) == "plain"  # no field, or an unknown one: as it is
    assert error_message(NeuralLabelError("odd", field="whatever")) == "odd"


SCRIPT = DEV_PRELUDE + ANNOTATE + '''
props = scene.neurallabel

def message(op, **kwargs):
    try:
        op(**kwargs)
    except RuntimeError as exc:
        return str(exc).strip()
    return None

out = {"no_out": message(bpy.ops.neurallabel.bake)}
props.output_dir = ARGS["out"]
out["bad_frames"] = message(bpy.ops.neurallabel.bake, frames="5:x")
out["export_open_end"] = message(bpy.ops.neurallabel.export_spec, filepath=ARGS["out"] + "/s.json", frames="3:")
# A range past the dataset's 12 frames: the worker's frame selection refuses it, naming the field.
props.use_frame_range, props.frame_start, props.frame_end = True, 50, 60
out["range_in_worker"] = message(bpy.ops.neurallabel.bake)
emit(out)
'''


@pytest.mark.bpy
def test_operator_reports_name_the_setting(small_scene, tmp_path):
    result = run_bpy(SCRIPT, {"data": str(small_scene / "transforms.json"), "objects": truth_objects(small_scene),
                              "out": str(tmp_path / "labels")}, tmp_path / "bpy")
    assert "Bake > Output: no output folder" in result["no_out"]
    assert "Bake Labels > Frames: frames '5:x'" in result["bad_frames"]
    assert "Export Label Spec > Frames: frames '3:'" in result["export_open_end"]
    assert "Bake > Frame Range: frames 50:61 is out of range" in result["range_in_worker"]
