"""Helpers for tests that need Blender: build the extension zip, run a script in a fresh bpy process.

Each script runs in its own Python process (``import bpy`` there), with Blender's user folders in a
temporary directory (``BLENDER_USER_RESOURCES``), so tests never touch the real Blender configuration and
registering the add-on in one test cannot leak into another.

A script reports back by calling ``emit(obj)`` (defined in the prelude), which prints one line
``NEURALLABEL_RESULT <json>``; :func:`run_bpy` returns the last such object.

Typical use::

    zip_path = build_extension_zip(tmp_path / "dist")
    result = run_bpy(INSTALL_PRELUDE + '''
    bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"])
    emit({"cameras": len(bpy.context.scene.neurallabel.root.children)})
    ''', {"zip": str(zip_path), "data": "..."}, tmp_path)

``INSTALL_PRELUDE`` installs and enables the zip ``ARGS["zip"]`` from a temporary local extensions
repository and binds ``ext`` to the installed package module (``bl_ext.<repo>.neurallabel``);
``DEV_PRELUDE`` instead registers the working tree (``import neurallabel; neurallabel.register()``),
which is faster and fine for tests that are not about installing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
RESULT_TAG = "NEURALLABEL_RESULT "
EXTENSION_REPO = "nltest"  # module name of the temporary extensions repository

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from build_extension import build as _build  # noqa: E402

BASE_PRELUDE = f'''
import json, sys
import bpy
ARGS = json.loads(sys.argv[-1])

def emit(obj):
    print({RESULT_TAG!r} + json.dumps(obj), flush=True)
'''

INSTALL_PRELUDE = BASE_PRELUDE + f'''
import importlib, os
_repo_dir = os.path.join(ARGS["tmp"], "extensions_repo")
os.makedirs(_repo_dir, exist_ok=True)
_repo = bpy.context.preferences.extensions.repos.new(
    name="NeuralLabel Test", module={EXTENSION_REPO!r}, custom_directory=_repo_dir, source="USER")
_result = bpy.ops.extensions.package_install_files(
    repo=_repo.module, filepath=ARGS["zip"], enable_on_install=True)
assert _result == {{"FINISHED"}}, _result
EXT_PACKAGE = "bl_ext.{EXTENSION_REPO}.neurallabel"
assert EXT_PACKAGE in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
ext = importlib.import_module(EXT_PACKAGE)
'''

DEV_PRELUDE = BASE_PRELUDE + '''
import neurallabel
neurallabel.register()
ext = neurallabel
EXT_PACKAGE = "neurallabel"
'''


def build_extension_zip(out_dir: Path) -> Path:
    """Build the extension zip with Blender's tool (validates the manifest, checks the content)."""
    return _build(Path(out_dir), REPO_ROOT)


def bpy_environment(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BLENDER_USER_RESOURCES"] = str(Path(tmp) / "blender_user")  # keep ~/.config/blender untouched
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_bpy(script: str, args: dict[str, Any] | None, tmp: Path, timeout: float = 300.0,
            check: bool = True, output: bool = False) -> Any:
    """Run ``script`` in a fresh Python with bpy; returns the last ``emit``-ed object (None if none).

    ``args`` reach the script as ``ARGS`` (JSON); ``ARGS["tmp"]`` is ``tmp``. With ``check`` a non-zero
    exit raises AssertionError with the script's output. With ``output`` returns ``(result, proc)``
    (Blender prints operator reports to stdout/stderr in background mode).
    """
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    script_path = tmp / "bpy_script.py"
    script_path.write_text(textwrap.dedent(script))
    payload = json.dumps({"tmp": str(tmp), **(args or {})})
    proc = subprocess.run([sys.executable, str(script_path), payload], capture_output=True, text=True,
                          timeout=timeout, env=bpy_environment(tmp), cwd=str(tmp))
    if check and proc.returncode != 0:
        raise AssertionError(f"bpy script failed (exit {proc.returncode}):\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    results = [line[len(RESULT_TAG):] for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    result = json.loads(results[-1]) if results else None
    return (result, proc) if output else result
