"""The curated public API of neurallabel.core: every name resolves, and importing the package loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import neurallabel.core as core


def test_every_public_name_resolves_to_its_definition() -> None:
    import importlib

    assert sorted(core.__all__) == sorted(core._EXPORTS)
    for name, module in core._EXPORTS.items():
        assert getattr(core, name) is getattr(importlib.import_module(f"neurallabel.core.{module}"), name), name


def test_importing_core_loads_no_torch() -> None:
    code = ("import sys, neurallabel.core, neurallabel.core.spec, neurallabel.core.export; "
            "print(sorted(m for m in ('torch', 'cv2', 'trimesh', 'bpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_module_imports_a_private_name() -> None:
    import ast
    from pathlib import Path

    offenders = []
    for path in Path(core.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [f"{path.name}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []
