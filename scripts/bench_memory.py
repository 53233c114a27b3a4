"""Peak memory of the training ray bank: a synthetic dataset of FRAMES frames at WIDTHxHEIGHT (no image files:
the bank's ``load`` hook gives each frame a constant image), measured with tracemalloc (numpy reports its
allocations to it). Prints ONE JSON line: peak bytes, bytes per pixel, and the extrapolation to 30,000 frames.
Target: <= 3 bytes per pixel plus one direction table per distinct intrinsics.

    python scripts/bench_memory.py [--frames 2000] [--width 640] [--height 480]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from neurallabel.core.data.dataset import Frame
from neurallabel.core.geometry.cameras import Intrinsics
from neurallabel.core.train.batch import load_ray_bank


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    intrinsics = Intrinsics(args.width, args.height, 0.8 * args.width, 0.8 * args.width, args.width / 2,
                            args.height / 2)
    frames = [Frame(n, Path(f"/synthetic/{n}.png"), np.eye(4), intrinsics) for n in range(args.frames)]
    image = np.full((args.height, args.width, 3), 0.5, dtype=np.float32)
    pixels = args.frames * args.width * args.height
    start = time.perf_counter()
    tracemalloc.start()
    bank = load_ray_bank(frames, load=lambda frame: image, ram_budget=1 << 62)  # all in RAM: measure it all
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tables = bank.nbytes - 3 * pixels
    directions = bank.directions_cam.numel() * bank.directions_cam.element_size()  # one per intrinsics
    per_frame = (tables - directions) / args.frames  # pose and table index
    print(json.dumps({
        "frames": args.frames, "width": args.width, "height": args.height, "pixels": pixels,
        "bank_bytes": bank.nbytes, "peak_bytes": peak, "bank_bytes_per_pixel": round(bank.nbytes / pixels, 4),
        "peak_bytes_per_pixel": round(peak / pixels, 4), "direction_table_bytes": tables,
        "extrapolated_30000_frames_bytes": int(3 * 30000 * args.width * args.height + directions + per_frame * 30000),
        "seconds": round(time.perf_counter() - start, 2),
    }))


if __name__ == "__main__":
    main()
