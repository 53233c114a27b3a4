"""Copy a generated scene (scripts/make_scene.py) into the ignored .gpu_scene/ for scripts/gpu_check.sh's bench
part, keeping only what the bench reads: the photos, transforms.json, gt/objects.json, gt/instance and the test
views' gt/depth (the train views' true depth is most of a scene's size).

    python scripts/gpu_scene.py .cache/bench/tabletop_s21_full   # -> .gpu_scene/tabletop_s21_full
    python scripts/gpu_scene.py tabletop:21                      # bench_field's scene, rendered first if need be
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    source = Path(sys.argv[1])
    if not source.is_dir() and ":" in sys.argv[1]:  # FAMILY:SEED, bench_field's full-size scene (needs bpy)
        sys.path.insert(0, str(REPO / "scripts"))
        from bench_field import make_scene

        family, seed = sys.argv[1].split(":", 1)
        source = make_scene(family, int(seed), quick=False)
    target = REPO / ".gpu_scene" / source.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source / "images", target / "images")
    shutil.copytree(source / "gt" / "instance", target / "gt" / "instance")
    shutil.copy(source / "transforms.json", target / "transforms.json")
    shutil.copy(source / "gt" / "objects.json", target / "gt" / "objects.json")
    (target / "gt" / "depth").mkdir()
    frames = json.loads((source / "transforms.json").read_text())["frames"]
    for index, frame in enumerate(frames):
        if frame.get("split") == "test":
            shutil.copy(source / "gt" / "depth" / f"{index:06d}.npy", target / "gt" / "depth")
    print(target)


if __name__ == "__main__":
    main()
