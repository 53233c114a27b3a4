"""Bake a .blend's labels headless, through the add-on's own ``neurallabel.bake`` operator.

    blender -b scene.blend -P scripts/bake.py -- --out DIR [--formats bop,coco,raw] [--frames A:B] [--device D]
    python scripts/bake.py scene.blend --out DIR [...]            # with the bpy module (Blender as a module)

Writes the label spec to ``DIR/spec.json`` and bakes it into DIR (the same as ``neurallabel bake
DIR/spec.json --out DIR``). Uses the installed NeuralLabel extension when it is enabled, otherwise registers
the add-on from the folder this script lies in (the repository or the unpacked extension). Exit code 0 on
success; otherwise the problem is printed on stderr and the exit code is 2 (bad input) or 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

EXTENSION_DIR = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str], inside_blender: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bake.py", description="Bake a NeuralLabel .blend's labels (spec -> DIR/spec.json, labels -> DIR)")
    if not inside_blender:
        parser.add_argument("blend", type=Path, help="the .blend file with the NeuralLabel scene")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--formats", default="", help="comma-separated: bop,coco,raw (default: the scene's)")
    parser.add_argument("--frames", default="", help="A:B, frame indices A..B-1 (default: the scene's range)")
    parser.add_argument("--device", default="", choices=("", "auto", "cpu", "cuda"),
                        help="device for the field (default: the scene's)")
    return parser.parse_args(argv)


def _ensure_addon() -> None:
    """Register the add-on from this folder unless an installed NeuralLabel already provides the operator."""
    import bpy

    if hasattr(bpy.types, "NEURALLABEL_OT_bake"):
        return
    name = "neurallabel"
    existing = sys.modules.get(name)
    if existing is not None and Path(existing.__file__).resolve().parent != EXTENSION_DIR:
        name = "neurallabel_local"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXTENSION_DIR / "__init__.py",
                                                      submodule_search_locations=[str(EXTENSION_DIR)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    importlib.import_module(name).register()


def bake_blend(args: argparse.Namespace) -> int:
    import bpy

    _ensure_addon()
    scene = bpy.context.scene
    if not hasattr(scene, "neurallabel") or not scene.neurallabel.dataset_path:
        print(f"bake.py: error: {bpy.data.filepath or 'the .blend'} has no NeuralLabel scene (import a dataset "
              "and add annotations first)", file=sys.stderr)
        return 2
    if args.device:
        scene.neurallabel.device = args.device
    try:
        result = bpy.ops.neurallabel.bake("EXEC_DEFAULT", out_dir=str(args.out.resolve()),
                                          formats=args.formats, frames=args.frames)
    except RuntimeError as exc:  # bpy.ops raises the operator's ERROR report
        print(f"bake.py: error: {str(exc).strip()}", file=sys.stderr)
        return 2
    if result != {"FINISHED"}:
        print(f"bake.py: error: the bake did not finish ({', '.join(sorted(result))})", file=sys.stderr)
        return 1
    print(f"bake.py: baked {args.out.resolve()} (spec: {args.out.resolve() / 'spec.json'})", file=sys.stderr)
    return 0


def main() -> int:
    inside_blender = "bpy" in sys.modules  # blender -P runs this with bpy loaded; plain Python has not
    if inside_blender:  # blender -b file.blend -P bake.py -- ARGS
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
        return bake_blend(parse_args(argv, True))
    args = parse_args(sys.argv[1:], False)
    if not args.blend.is_file():
        print(f"bake.py: error: {args.blend} does not exist", file=sys.stderr)
        return 2
    import bpy

    bpy.ops.wm.open_mainfile(filepath=str(args.blend.resolve()))
    return bake_blend(args)


if __name__ == "__main__":
    sys.exit(main())
