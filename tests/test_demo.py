"""`neurallabel demo`, stage 1: the demo scene is rendered once, reused with the same settings, and the
command says where it is. (Later stages are tested by the issues that add them.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neurallabel.core.data.dataset import load_transforms
from neurallabel.core.data.truth import load_scene_truth

pytestmark = pytest.mark.bpy


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurallabel.core.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_demo_renders_then_reuses_scene(tmp_path):
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

    second = run_cli("demo", *small)
    assert second.returncode == 0, second.stderr
    assert f"demo scene: {out / 'scene'}" in second.stdout and "reused" in second.stdout


@pytest.mark.parametrize("args, message", [
    (["--views", "1"], "--views must be at least 2"),
    (["--width", "4"], "--width/--height must be at least 16"),
])
def test_demo_bad_arguments(tmp_path, args, message):
    result = run_cli("demo", "--out", str(tmp_path / "demo"), *args)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "demo").exists()
