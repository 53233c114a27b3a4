"""Validate blender_manifest.toml and build the extension zip with Blender's own tool.

    python scripts/build_extension.py --out dist        (also: make extension)

The tool is ``blender_ext.py`` from the bpy wheel (or a Blender install, ``--blender-ext PATH``). The
manifest's ``[build]`` section decides what goes in; this script checks the result holds no tests,
benchmarks or caches. Prints the zip's path; a manifest error is one line naming the file, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = "blender_manifest.toml"
# Top-level entries the zip may hold; anything else (tests/, benchmarks, caches, the venv) is a build bug.
ALLOWED_TOP_LEVEL = {"__init__.py", MANIFEST, "README.md", "requirements.txt", "core", "addon", "operators", "panels",
                     "scripts"}
ALLOWED_SCRIPTS = {"scripts/bake.py"}


class BuildError(Exception):
    pass


def find_blender_ext() -> Path:
    """``blender_ext.py`` inside the installed bpy module."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("the bpy module is not installed: run `make venv`, or pass --blender-ext PATH")
    for location in spec.submodule_search_locations:
        for candidate in sorted(Path(location).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py")):
            return candidate
    raise BuildError("blender_ext.py not found in the bpy module; pass --blender-ext PATH")


def _run_tool(tool: Path, args: list[str]) -> list[tuple[str, str]]:
    """Run blender_ext with JSON output; returns its (kind, message) lines."""
    result = subprocess.run([sys.executable, str(tool), *args, "--output-type", "JSON"],
                            capture_output=True, text=True)
    messages: list[tuple[str, str]] = []
    for line in result.stdout.splitlines():
        try:
            kind, message = json.loads(line)
        except (ValueError, TypeError):
            messages.append(("STATUS", line))
            continue
        messages.append((str(kind), str(message)))
    if result.returncode != 0 or any(kind in ("ERROR", "FATAL_ERROR") for kind, _ in messages):
        # The tool names the problem in its last lines ("key "id" invalid: ..."); drop the preamble.
        problems = [m for _, m in messages if not m.startswith(("Error parsing TOML", "building:"))]
        detail = "; ".join(problems) or result.stderr.strip() or "failed"
        raise BuildError(detail.replace("FATAL_ERROR: ", ""))
    return messages


def check_zip(path: Path) -> list[str]:
    """The zip's file names, after checking that only extension files are in it."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    bad = [n for n in names
           if n.split("/")[0] not in ALLOWED_TOP_LEVEL
           or (n.startswith("scripts/") and n not in ALLOWED_SCRIPTS)
           or "__pycache__" in n or n.endswith(".pyc") or "/." in f"/{n}"]
    if bad:
        raise BuildError(f"{path}: holds files that are not part of the extension: {', '.join(bad[:5])}"
                         f"{' ...' if len(bad) > 5 else ''}; fix [build] in {MANIFEST}")
    if "__init__.py" not in names or MANIFEST not in names:
        raise BuildError(f"{path}: __init__.py or {MANIFEST} is missing")
    return names


def build(out_dir: Path, source_dir: Path = REPO_ROOT, tool: Path | None = None) -> Path:
    """Validate the manifest, build ``<id>-<version>.zip`` into ``out_dir`` and check its content."""
    tool = tool or find_blender_ext()
    manifest = source_dir / MANIFEST
    if not manifest.is_file():
        raise BuildError(f"{manifest}: file does not exist")
    try:
        _run_tool(tool, ["validate", str(source_dir)])
    except BuildError as exc:
        raise BuildError(f"{manifest}: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        messages = _run_tool(tool, ["build", "--source-dir", str(source_dir), "--output-dir", str(out_dir)])
    except BuildError as exc:
        raise BuildError(f"{manifest}: build failed: {exc}") from None
    created = [m for kind, m in messages if m.startswith("created:")]
    if not created:
        raise BuildError(f"{manifest}: the build reported no zip")
    zip_path = Path(created[-1].split('"')[1])
    check_zip(zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist", help="output folder (default: dist)")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="extension source folder")
    parser.add_argument("--blender-ext", type=Path, default=None, help="path to Blender's blender_ext.py")
    args = parser.parse_args(argv)
    try:
        zip_path = build(args.out, args.source.resolve(), args.blender_ext)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
