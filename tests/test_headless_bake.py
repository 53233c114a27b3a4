"""scripts/bake.py under plain Python with the bpy module, on a saved .blend: DIR/spec.json plus labels equal
to ``neurallabel bake`` on that spec; bad input exits non-zero with the problem on stderr.

(``blender -b scene.blend -P scripts/bake.py -- ...`` runs the same ``bake_blend``; there is no Blender
binary on the test machine, only the bpy module.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bpy_helpers import DEV_PRELUDE, REPO_ROOT, bpy_environment, run_bpy
from test_bake_operator import ANNOTATE, assert_same_bake, cli_bake, truth_objects

pytestmark = pytest.mark.bpy

SAVE_SCRIPT = DEV_PRELUDE + ANNOTATE + '''
bpy.ops.wm.save_as_mainfile(filepath=ARGS["blend"])
obj = bpy.data.objects[ARGS["objects"][0]["name"]]
obj.neurallabel.category = ""  # a second file with an annotation that has no category
bpy.ops.wm.save_as_mainfile(filepath=ARGS["bad_blend"])
bpy.ops.wm.read_homefile(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=ARGS["empty_blend"])
emit({"ok": True})
'''


def bake_script(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bake.py"), *args], capture_output=True,
                          text=True, timeout=300, env=bpy_environment(tmp), cwd=str(tmp))


def test_headless_bake_matches_cli(small_scene, tmp_path):
    blend, bad_blend, empty_blend = tmp_path / "scene.blend", tmp_path / "bad.blend", tmp_path / "empty.blend"
    run_bpy(SAVE_SCRIPT, {"data": str(small_scene / "transforms.json"), "objects": truth_objects(small_scene),
                          "blend": str(blend), "bad_blend": str(bad_blend), "empty_blend": str(empty_blend)},
            tmp_path / "bpy")

    out = tmp_path / "labels"
    proc = bake_script(tmp_path, str(blend), "--out", str(out), "--frames", "1:4", "--formats", "coco,raw")
    assert proc.returncode == 0, proc.stderr
    assert (out / "spec.json").is_file() and not (out / "bop").exists()
    assert sorted(p.name for p in (out / "raw" / "depth").iterdir()) == ["000001.npy", "000002.npy", "000003.npy"]
    cli_out = tmp_path / "cli"
    cli_bake(out / "spec.json", cli_out, "--formats", "coco,raw")
    assert_same_bake(out, cli_out)

    # Bad input: non-zero exit and one clear line naming the problem.
    proc = bake_script(tmp_path, str(tmp_path / "missing.blend"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "missing.blend does not exist" in proc.stderr
    proc = bake_script(tmp_path, str(empty_blend), "--out", str(tmp_path / "y"))
    assert proc.returncode == 2 and "has no NeuralLabel scene" in proc.stderr
    proc = bake_script(tmp_path, str(bad_blend), "--out", str(tmp_path / "z"))
    assert proc.returncode == 2 and "has no category" in proc.stderr, proc.stderr
    assert not (tmp_path / "z" / "spec.json").exists()
