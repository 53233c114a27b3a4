"""`neurallabel demo`: every stage's numbers from its `--json` result -- the demo scene (rendered once, reused
with the same settings), the field (trained, held-out PSNR) and the labels (baked, accuracy against Cycles'
truth) -- and bad arguments refused with the flag named."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from neurallabel.core.data.dataset import load_transforms
from neurallabel.core.data.truth import load_scene_truth

pytestmark = pytest.mark.bpy


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurallabel.core.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_demo_runs_every_stage_then_reuses_the_scene(tmp_path):
    out = tmp_path / "demo"
    small = ["--out", str(out), "--views", "3", "--width", "48", "--height", "36", "--train-minutes", "0.05"]
    first = run_cli("demo", "--json", *small)
    assert first.returncode == 0, first.stderr
    events = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    result = events[-1]
    assert result["event"] == "result"
    assert result["scene"] == str(out / "scene") and result["scene_reused"] is False
    stages = {e["stage"] for e in events if e["event"] == "progress"}
    assert {"demo scene: render rgb", "demo scene: render truth"} <= stages
    dataset = load_transforms(out / "scene", strict=True)
    assert len(dataset.frames) == 3 and dataset.frames[0].intrinsics.width == 48
    truth = load_scene_truth(out / "scene")
    assert len(truth.objects) == 6 and sum(o.transparent for o in truth.objects) == 1
    assert result["scene_objects"] == [o.name for o in truth.objects] and result["scene_seconds"] > 0
    test_views = [f.index for f in dataset.frames if f.split == "test"]

    # The field stage: trained into OUT/field.pt, measured on the held-out views.
    assert result["field"] == str(out / "field.pt") and (out / "field.pt").is_file()
    training = result["field_training"]
    assert training["steps"] >= 1 and training["resumed"] is False and training["device"] in ("cpu", "cuda")
    assert training["test_views"] == len(test_views) >= 1
    assert math.isfinite(training["test_psnr_db"]) and 5.0 < training["test_psnr_db"] < 60.0
    assert 0.0 < training["test_ssim"] <= 1.0
    assert {"load images", "train", "render"} <= stages

    # The labels stage: the held-out frames baked in every format with the field, and their accuracy.
    labels = result["labels"]
    assert labels["field"] == result["field"] and labels["depth_source"] == "FieldDepth"
    assert labels["formats"] == ["bop", "coco", "raw"] and labels["frames_in_dataset"] == len(test_views)
    assert labels["instances"] >= 1 and labels["frames"] == len(test_views)
    assert (out / "labels" / "dataset" / "coco" / "annotations.json").is_file()
    accuracy = labels["accuracy"]
    assert 0.5 <= accuracy["visible_iou_min"] <= accuracy["visible_iou_mean"] <= 1.0
    assert 0.0 <= accuracy["depth_error_mm_p95"] < 50.0
    lines = result["lines"]
    assert [line.split(":")[0] for line in lines] == ["demo scene", "field", "labels", "label accuracy vs Cycles truth"]

    second = run_cli("demo", *small)
    assert second.returncode == 0, second.stderr
    assert f"demo scene: {out / 'scene'}" in second.stdout and "reused" in second.stdout
    assert "field: " in second.stdout and "label accuracy vs Cycles truth" in second.stdout


@pytest.mark.parametrize("args, message", [
    (["--views", "1"], "--views must be at least 2"),
    (["--width", "4"], "--width must be at least 16"),
    (["--train-minutes", "0"], "--train-minutes must be more than 0"),
])
def test_demo_bad_arguments(tmp_path, args, message):
    result = run_cli("demo", "--out", str(tmp_path / "demo"), *args)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "demo").exists()
