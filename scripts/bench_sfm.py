"""Benchmark: SfM (pycolmap) on the fox photos against the poses its transforms.json gives.

Runs ``neurallabel.core.data.sfm.run_sfm`` on ``../shared/data/fox/images`` (SIFT on images downscaled by
``--downscale``), aligns the recovered camera centres to the given ones with a similarity (Umeyama) and prints
one JSON line: median / max centre error as a fraction of the scene size (largest distance between two given
camera centres; target: median <= 2%), registered images, points, reprojection error, seconds.

    python scripts/bench_sfm.py [--data ../shared/data/fox] [--downscale 4] [--images N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # needs `pip install -e .` (the venv has it)

TARGET_MEDIAN = 0.02


def run(data: Path, downscale: float, max_images: int | None, out: Path) -> dict:
    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.data.sfm import camera_centre_errors, run_sfm
    from PIL import Image

    given = load_dataset(data)  # skips the listed frames whose photo is missing
    images = data / "images"
    if max_images:
        # A subset: link the first N photos into a folder of their own.
        images_subset = out.parent / "images"
        images_subset.mkdir(parents=True, exist_ok=True)
        for frame in sorted(given.frames, key=lambda f: f.image_path.name)[:max_images]:
            link = images_subset / frame.image_path.name
            if not link.exists():
                link.symlink_to(frame.image_path.resolve())
        images = images_subset
    # Reference workload measured in the same run: decoding every photo once (speed as a ratio to it).
    started = time.monotonic()
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        with Image.open(path) as image:
            image.load()
    decode_seconds = time.monotonic() - started
    started = time.monotonic()
    result = run_sfm(images, out, downscale=downscale)
    seconds = time.monotonic() - started
    recovered = load_dataset(out)
    errors = camera_centre_errors({f.image_path.name: f.cam_to_data for f in recovered.frames},
                                  {f.image_path.name: f.cam_to_data for f in given.frames})
    return {
        "bench": "sfm_fox",
        "images": result.num_images,
        "registered": result.num_registered,
        "points": result.num_points,
        "mean_reprojection_error_px": round(result.mean_reprojection_error_px, 3),
        "downscale": downscale,
        "compared_cameras": errors["count"],
        "median_centre_error_frac": round(errors["median"], 5),
        "max_centre_error_frac": round(errors["max"], 5),
        "median_rotation_error_deg": round(errors["median_rotation_deg"], 3),
        "target_median_frac": TARGET_MEDIAN,
        "pass": bool(errors["median"] <= TARGET_MEDIAN and result.num_registered == result.num_images),
        "seconds": round(seconds, 1),
        "reference_decode_seconds": round(decode_seconds, 2),
        "seconds_per_decode": round(seconds / max(decode_seconds, 1e-9), 1),
        "cpu_threads": _threads(),
    }


def _threads() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fox")
    parser.add_argument("--downscale", type=float, default=4.0)
    parser.add_argument("--images", type=int, default=None, help="use only the first N photos")
    parser.add_argument("--keep", type=Path, default=None, help="keep the SfM output in this folder")
    args = parser.parse_args()
    if not (args.data / "transforms.json").is_file():
        print(json.dumps({"bench": "sfm_fox", "error": f"{args.data} has no transforms.json"}))
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep.resolve() if args.keep else Path(tmp) / "data"
        print(json.dumps(run(args.data.resolve(), args.downscale, args.images, out)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
