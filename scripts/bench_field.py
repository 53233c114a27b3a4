"""Benchmark the radiance field: encodings, training, held-out quality, depth accuracy, render speed.

Prints ONE JSON line. Targets (issue 3; CPU = 2 cores, 10 minutes of training):
  generated scene (60 train + 10 test views at 400x300): held-out PSNR >= 27 dB, median depth error <= 1 % of
  depth on object pixels, depth-only rendering >= 150 k rays/s; fox (every 8th image held out, 1/4
  resolution): held-out PSNR >= 22 dB; GPU (H100): >= 30 dB in <= 2 minutes, depth-only >= 20 M rays/s.

    python scripts/bench_field.py                 # full size, by hand (~25 min on 2 cores)
    python scripts/bench_field.py --quick         # CI-friendly size (a few minutes)
    python scripts/bench_field.py --scene DIR --fox ../shared/data/fox --fox-sfm SFM_DIR --minutes 10

The generated scene is made with ``scripts/make_scene.py --views 70 --width 400 --height 300 --test-every 7``
(cached under .cache/) unless ``--scene`` names one. ``--fox-sfm`` (an ``neurallabel sfm`` output of the fox)
adds the DS-NeRF sparse depth loss comparison (on and off). On a shared CPU the JSON reports the share of CPU
the process got (CPU time / (wall time x threads)).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.field.model import load_field
from neurallabel.core.io.images import load_image
from neurallabel.core.eval.image import psnr, ssim
from neurallabel.core.render.views import render_frame, render_rays
from neurallabel.core.geometry.cameras import camera_rays
from neurallabel.core.train.loop import TrainOptions, train_field

TARGETS = {"scene_psnr_db": 27.0, "scene_median_depth_error": 0.01, "depth_only_rays_per_s": 150e3,
           "fox_psnr_db": 22.0, "gpu_scene_psnr_db": 30.0, "gpu_minutes": 2.0, "gpu_depth_only_rays_per_s": 20e6}


def encoding_speeds(n: int = 200_000) -> dict:
    """Points per second (forward, and forward + backward) of candidate encodings on this machine."""
    torch.manual_seed(0)
    x = torch.rand(n, 3) * 2 - 1

    def measure(fn, params):
        with torch.no_grad():
            fn(x)  # warm up
            t = time.perf_counter()
            fn(x)
            forward = time.perf_counter() - t
        t = time.perf_counter()
        fn(x).sum().backward()
        both = time.perf_counter() - t
        return {"forward_mpts_s": round(n / forward / 1e6, 2), "forward_backward_mpts_s": round(n / both / 1e6, 2)}

    out = {}
    grid = torch.zeros(1, 1, 160, 160, 160, requires_grad=True)
    out["dense_grid_160_c1"] = measure(
        lambda p: F.grid_sample(grid, p.view(1, 1, 1, -1, 3), align_corners=True).view(-1), [grid])
    grid12 = torch.zeros(1, 12, 96, 96, 96, requires_grad=True)
    out["dense_grid_96_c12"] = measure(
        lambda p: F.grid_sample(grid12, p.view(1, 1, 1, -1, 3), align_corners=True).view(12, -1), [grid12])
    planes = torch.rand(3, 8, 512, 512, requires_grad=True)

    def triplane(p):
        c = torch.stack([p[:, [0, 1]], p[:, [0, 2]], p[:, [1, 2]]]).view(3, 1, -1, 2)
        s = F.grid_sample(planes, c, align_corners=True)
        return s[0] * s[1] * s[2]

    out["triplane_512_c8"] = measure(triplane, [planes])
    table_size, levels = 2 ** 19, 8
    table = torch.zeros(levels * table_size, 2, requires_grad=True)

    def hashgrid(p):
        u = (p + 1) / 2
        feats = []
        for level in range(levels):
            q = u * (16 * 1.5 ** level)
            i = q.floor().long()
            f = q - i
            acc = 0
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        h = ((i[:, 0] + dx) ^ ((i[:, 1] + dy) * 2654435761) ^ ((i[:, 2] + dz) * 805459861))
                        h = h % table_size + level * table_size
                        w = ((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                             * (f[:, 2] if dz else 1 - f[:, 2]))
                        acc = acc + table[h] * w[:, None]
            feats.append(acc)
        return torch.cat(feats, -1)

    out["hash_grid_8x2^19_c2"] = measure(hashgrid, [table])
    return out


def make_scene(path: Path, quick: bool) -> Path:
    if (path / "transforms.json").is_file():
        return path
    args = (["--views", "14", "--width", "200", "--height", "150", "--test-every", "7"] if quick else
            ["--views", "70", "--width", "400", "--height", "300", "--test-every", "7"])
    meshes = REPO.parent / "shared" / "data" / "meshes"
    if (meshes / "bunny.obj").is_file():
        args += ["--meshes", str(meshes)]
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_scene.py"), "--out", str(path), "--seed", "0",
                    "--objects", "5", *args], check=True, capture_output=True)
    return path


def timed_train(data: Path, out: Path, minutes: float, device: str, downscale: float = 1.0,
                depth_supervision: bool = False) -> dict:
    wall, cpu = time.monotonic(), time.process_time()
    result = train_field(data, out, TrainOptions(minutes=minutes, device=device, downscale=downscale,
                                                 depth_supervision=depth_supervision))
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    threads = torch.get_num_threads()
    return {"steps": result.steps, "train_s": round(result.elapsed_s, 1), "train_psnr_db": round(result.train_psnr, 2),
            "cpu_share": round(cpu / (wall * threads), 3) if device == "cpu" else None}


def evaluate_views(field, frames, truth_depth=None, truth_instance=None) -> dict:
    psnrs, ssims, rel_errors = [], [], []
    for frame in frames:
        gt = load_image(frame)[..., :3]
        out = render_frame(field, frame.intrinsics, frame.cam_to_data)
        psnrs.append(psnr(out["rgb"], gt))
        ssims.append(ssim(np.clip(out["rgb"], 0, 1), gt))
        if truth_depth is not None:
            z_true = truth_depth(frame.index)
            objects = truth_instance(frame.index) > 0
            valid = objects & np.isfinite(z_true)
            z = np.where(np.isnan(out["z_depth"]), np.inf, out["z_depth"])  # a miss counts as a huge error
            rel_errors.append(np.abs(z[valid] - z_true[valid]) / z_true[valid])
    result = {"psnr_db": round(float(np.mean(psnrs)), 2), "ssim": round(float(np.mean(ssims)), 4),
              "views": len(frames)}
    if rel_errors:
        errors = np.concatenate(rel_errors)
        result["object_pixels"] = int(len(errors))
        result["median_depth_error"] = round(float(np.median(errors)), 5)
        result["share_within_1pct"] = round(float(np.mean(errors <= 0.01)), 4)
    return result


def render_speed(field, frames, device: str) -> dict:
    """Rays per second (wall and per CPU-second) for full (rgb + depth) and depth-only rendering."""
    rays = [camera_rays(f.intrinsics, f.cam_to_data) for f in frames]
    origins = torch.from_numpy(np.concatenate([r[0] for r in rays])).float().to(device)
    directions = torch.from_numpy(np.concatenate([r[1] for r in rays])).float().to(device)
    out = {}
    for name, depth_only in (("depth_only", True), ("full", False)):
        render_rays(field, origins[:4096], directions[:4096], depth_only=depth_only)  # warm up
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        render_rays(field, origins, directions, depth_only=depth_only)
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[f"{name}_rays_per_s"] = round(len(origins) / wall)
        if device == "cpu":
            # on a shared machine: rays per second of CPU time the process actually got, x threads
            out[f"{name}_rays_per_cpu_s_x_threads"] = round(len(origins) / cpu * torch.get_num_threads())
    out["rays"] = len(origins)
    return out


def run_scene(args, minutes: float, work: Path, result: dict) -> None:
    scene = args.scene or make_scene(REPO / ".cache" / ("bench_scene_quick" if args.quick else "bench_scene_400"),
                                     args.quick)
    from neurallabel.core.data.truth import load_scene_truth

    truth = load_scene_truth(scene)
    field_path = work / "scene_field.pt"
    field_path.unlink(missing_ok=True)
    scene_result = timed_train(scene, field_path, minutes, args.device)
    field = load_field(field_path, device=args.device)
    dataset = load_dataset(scene)
    test = dataset.split("test")
    scene_result.update(evaluate_views(field, test, truth.z_depth, truth.instance_ids))
    scene_result.update(render_speed(field, test[:3], args.device))
    scene_result["train_views"] = len(dataset.split("train"))
    result["scene"] = scene_result



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small scene, 1-minute trainings")
    parser.add_argument("--scene", type=Path, default=None, help="a make_scene.py scene (default: cached)")
    parser.add_argument("--minutes", type=float, default=None, help="training minutes (default 10, quick 1)")
    parser.add_argument("--fox", type=Path, default=REPO.parent / "shared" / "data" / "fox")
    parser.add_argument("--fox-sfm", type=Path, default=None, help="`neurallabel sfm` output of the fox images")
    parser.add_argument("--ds-minutes", type=float, default=None, help="minutes per DS-NeRF on/off run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--skip-fox", action="store_true")
    parser.add_argument("--skip-scene", action="store_true", help="only the fox (and its DS-NeRF comparison)")
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints (default: temporary)")
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None else (1.0 if args.quick else 10.0)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_field-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"bench": "field", "device": args.device, "quick": args.quick, "minutes": minutes,
                    "threads": torch.get_num_threads(), "targets": TARGETS}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    result["encodings"] = encoding_speeds(50_000 if args.quick else 200_000)

    if not args.skip_scene:
        run_scene(args, minutes, work, result)
    if not args.skip_fox and (args.fox / "transforms.json").is_file():
        fox_path = work / "fox_field.pt"
        fox_path.unlink(missing_ok=True)
        fox_result = timed_train(args.fox, fox_path, minutes, args.device, downscale=4.0)
        fox_dataset = load_dataset(args.fox, 4.0)
        fox_result.update(evaluate_views(load_field(fox_path, device=args.device), fox_dataset.split("test")))
        result["fox"] = fox_result
    if args.fox_sfm is not None:
        ds_minutes = args.ds_minutes or minutes
        comparison = {"minutes": ds_minutes}
        sfm_dataset = load_dataset(args.fox_sfm)
        for label, on in (("off", False), ("on", True)):
            path = work / f"fox_sfm_{label}.pt"
            path.unlink(missing_ok=True)
            run = timed_train(args.fox_sfm, path, ds_minutes, args.device, depth_supervision=on)
            run.update(evaluate_views(load_field(path, device=args.device), sfm_dataset.split("test")))
            comparison[label] = run
        result["fox_depth_supervision"] = comparison

    result["meets"] = {}
    if "scene" in result:
        scene_ok = result["scene"]
        result["meets"].update({
            "scene_psnr": scene_ok["psnr_db"] >= TARGETS["scene_psnr_db"],
            "scene_depth": scene_ok.get("median_depth_error", 1.0) <= TARGETS["scene_median_depth_error"],
            "depth_only_speed": scene_ok["depth_only_rays_per_s"] >= TARGETS["depth_only_rays_per_s"],
        })
    if "fox" in result:
        result["meets"]["fox_psnr"] = result["fox"]["psnr_db"] >= TARGETS["fox_psnr_db"]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
