"""One default per setting: the Blender scene's occlusion tolerances equal the engine's LabelOptions,
so a bake from Blender and a plain `neurallabel bake spec.json` give the same labels; the Synthetic Views
panel's settings equal `neurallabel synth`'s."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurallabel.core.labels.frame import LabelOptions

from bpy_helpers import DEV_PRELUDE, run_bpy

pytestmark = pytest.mark.bpy


def test_scene_occlusion_defaults_equal_label_options(tmp_path: Path) -> None:
    result = run_bpy(DEV_PRELUDE + '''
scene = bpy.context.scene
scene.unit_settings.scale_length = 1.0
from neurallabel.addon.properties import label_options
emit(label_options(scene))
''', {}, tmp_path)
    engine = LabelOptions()
    assert result["occlusion_abs_mm"] == pytest.approx(engine.occlusion_abs_mm, rel=1e-6)
    assert result["occlusion_rel"] == pytest.approx(engine.occlusion_rel, rel=1e-6)
    assert result["occlusion_min_confidence"] == pytest.approx(engine.occlusion_min_confidence, rel=1e-6)
    assert result["colour_edges"] is engine.colour_edges


def test_synthetic_views_defaults_equal_the_synth_command(tmp_path: Path) -> None:
    from neurallabel.core.app.jobs import SynthRequest

    result = run_bpy(DEV_PRELUDE + '''
from neurallabel.addon.properties import synth_arguments
emit(synth_arguments(bpy.context.scene))
''', {}, tmp_path)
    engine = SynthRequest(spec=tmp_path / "spec.json", out=tmp_path / "out")
    for name, value in result.items():
        assert value == pytest.approx(getattr(engine, name)), name  # every range the hull, uniform weights
