"""The `neurallabel` command (also `python -m neurallabel.core.cli`).

This is the only place in `core` that prints. Each subcommand parses its arguments, calls library functions
with a progress callback, and prints a short summary. Bad input -> one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import NeuralLabelError, NotImplementedYet
from ..progress import Cancelled, ProgressFn


# --- progress display -----------------------------------------------------------------------------------


class ProgressPrinter:
    """A progress callback: a rich progress bar with ETA on a terminal, JSON lines with ``--json``."""

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines
        self._rich = None
        self._tasks: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._last_emit = 0.0

    def __enter__(self) -> "ProgressPrinter":
        if not self.json_lines and sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  transient=False)
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.monotonic()
        start = self._started.setdefault(stage, now)
        if self._rich is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._rich.add_task(stage, total=total)
            self._rich.update(self._tasks[stage], completed=done, total=total)
            return
        # Plain output: JSON lines, at most ~5 per second plus the last one of each stage.
        if not self.json_lines and not self._should_log(done, total, now):
            return
        if self.json_lines and done < total and now - self._last_emit < 0.2:
            return
        self._last_emit = now
        eta = (now - start) / done * (total - done) if done > 0 else None
        event = {"event": "progress", "done": done, "total": total, "stage": stage,
                 "eta_s": None if eta is None else round(eta, 1)}
        if self.json_lines:
            print(json.dumps(event), flush=True)
        else:
            print(f"{stage}: {done}/{total}" + ("" if eta is None else f" (ETA {eta:.0f} s)"),
                  file=sys.stderr, flush=True)

    def _should_log(self, done: int, total: int, now: float) -> bool:
        return done >= total or now - self._last_emit >= 10.0


def emit_result(args: argparse.Namespace, result: dict, lines: Sequence[str]) -> None:
    """The end of a command: a JSON result line with ``--json``, readable lines otherwise."""
    if getattr(args, "json", False):
        print(json.dumps({"event": "result", **result}), flush=True)
    else:
        for line in lines:
            print(line, flush=True)


# --- subcommands ----------------------------------------------------------------------------------------
# Each handler takes the parsed arguments and a progress callback and returns the exit code.


def cmd_demo(args: argparse.Namespace, progress: ProgressFn) -> int:
    from .demo import run_demo

    result, lines = run_demo(args, progress)
    emit_result(args, result, lines)
    return 0


def cmd_sfm(args: argparse.Namespace, progress: ProgressFn) -> int:
    import pycolmap

    from ..data.sfm import run_sfm

    if not args.verbose:
        pycolmap.logging.minloglevel = 2  # COLMAP's INFO/WARNING log lines would bury the progress bar
    result = run_sfm(args.images, args.out, downscale=args.downscale, matcher=args.matcher,
                     camera_model=args.camera_model, progress=progress)
    lines = [f"sfm: registered {result.num_registered}/{result.num_images} images, {result.num_points} points, "
             f"mean reprojection error {result.mean_reprojection_error_px:.2f} px, {result.seconds:.0f} s",
             f"wrote {result.transforms_path}"]
    if result.unregistered:
        shown = ", ".join(result.unregistered[:5]) + (" ..." if len(result.unregistered) > 5 else "")
        lines.insert(1, f"sfm: skipped {len(result.unregistered)} images that could not be registered: {shown}")
    emit_result(args, {"command": "sfm", "transforms": str(result.transforms_path),
                       "images": result.num_images, "registered": result.num_registered,
                       "points": result.num_points, "unregistered": result.unregistered,
                       "mean_reprojection_error_px": result.mean_reprojection_error_px,
                       "camera_model": result.camera_model, "cameras": result.num_cameras,
                       "seconds": result.seconds}, lines)
    return 0


def cmd_train(args: argparse.Namespace, progress: ProgressFn) -> int:
    from ..train.loop import TrainOptions, train_field

    options = TrainOptions(steps=args.steps, minutes=args.minutes, device=args.device, downscale=args.downscale,
                           strict=args.strict, depth_supervision=args.depth_supervision)
    result = train_field(args.data, args.out, options, progress=progress)
    emit_result(args, {"command": "train", **result.to_dict()}, [
        f"train: {result.steps} steps in {result.elapsed_s:.0f} s on {result.device} "
        f"({result.train_frames} train views{', resumed' if result.resumed else ''}), "
        f"train PSNR {result.train_psnr:.2f} dB",
        f"wrote {result.out}"])
    return 0


def cmd_render(args: argparse.Namespace, progress: ProgressFn) -> int:
    from ..data.dataset import load_dataset
    from ..field.model import load_field
    from ..render.volume import render_views
    from ..train.loop import resolve_device

    device = resolve_device(args.device)
    field = load_field(args.field, device=str(device))
    dataset = load_dataset(args.data, args.downscale)
    frames = dataset.frames if args.split == "all" else dataset.split(args.split)
    if not frames:
        raise NeuralLabelError(f"{dataset.path}: no frame in the {args.split!r} split")
    summary = render_views(field, frames, args.out, progress=progress)
    lines = [f"render: {summary['count']} views of the {args.split} split into {args.out}"]
    if "psnr" in summary:
        lines.append(f"PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f} (mean over the views)")
    emit_result(args, {"command": "render", "out": str(args.out), "split": args.split, **summary}, lines)
    return 0


def cmd_bake(args: argparse.Namespace, progress: ProgressFn) -> int:
    from ..pipeline.bake import bake
    from ..spec import load_spec

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from ..labels.frame import LabelOptions

    spec = load_spec(args.spec)
    options = LabelOptions(occlusion_abs_mm=args.occlusion_mm, occlusion_rel=args.occlusion_rel,
                           occlusion_min_confidence=args.occlusion_min_confidence)
    summary = bake(spec, args.out, formats=args.formats, frames=args.frames, shard=args.shard, device=device,
                   progress=progress, options=options)
    per_frame = summary["seconds_per_frame"]
    emit_result(args, summary, [
        f"baked {summary['frames']} frames ({summary['skipped']} already done), {summary['instances']} "
        f"instances, " + (f"{per_frame:.3f} s/frame" if per_frame is not None else "nothing new to label"),
        f"{summary['frames_in_dataset']} frames in {args.out} ({', '.join(summary['formats'])})"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurallabel",
        description="Photos of a real scene -> neural radiance field -> labeled vision datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print progress and the result as JSON lines")
        p.set_defaults(handler=handler)
        return p

    p = add("demo", cmd_demo, "generate the built-in demo scene and run the pipeline on it")
    p.add_argument("--out", type=Path, default=Path(".demo"), help="output folder (default: .demo)")
    p.add_argument("--views", type=int, default=40, help="number of camera views (default 40)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-minutes", type=float, default=2.0, help="field training time (default 2)")

    p = add("sfm", cmd_sfm, "recover cameras from photos (pycolmap) and write transforms.json")
    p.add_argument("images", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--downscale", type=float, default=1.0,
                   help="detect features on images shrunk by this factor (cameras stay full-size)")
    p.add_argument("--matcher", choices=("auto", "exhaustive", "sequential"), default="auto",
                   help="image pairs to match: all (exhaustive), neighbours in name order (sequential)")
    p.add_argument("--camera-model", default="OPENCV",
                   choices=("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE"),
                   help="COLMAP camera model (default OPENCV: k1 k2 p1 p2, right for phone photos)")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")

    p = add("train", cmd_train, "train a radiance field on a dataset's train split")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float)
    budget.add_argument("--steps", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--downscale", type=float, default=1.0)
    p.add_argument("--depth-supervision", action="store_true",
                   help="sparse depth loss from SfM points (DS-NeRF)")
    p.add_argument("--strict", action="store_true", help="refuse a dataset with missing images")

    p = add("render", cmd_render, "render a trained field's views: rgb, z-depth, and PSNR/SSIM")
    p.add_argument("field", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--downscale", type=float, default=1.0)

    p = add("bake", cmd_bake, "bake labels for every frame from a label spec")
    p.add_argument("spec", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--formats", default="bop,coco,raw")
    p.add_argument("--frames", default=None, help="A:B, the frame indices A <= i < B (either may be empty)")
    p.add_argument("--shard", default=None,
                   help="I/N: bake every N-th selected frame starting at the I-th (I counts from 0); shards "
                        "baked into the same --out make one dataset")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    # Blender's Bake passes its scene's occlusion tolerances; these reproduce them (same defaults as LabelOptions).
    p.add_argument("--occlusion-mm", type=float, default=5.0,
                   help="a mesh pixel is occluded when the field's surface is nearer by more than this (mm) ...")
    p.add_argument("--occlusion-rel", type=float, default=0.02, help="... plus this fraction of the depth")
    p.add_argument("--occlusion-min-confidence", type=float, default=0.5,
                   help="... and only where the field is at least this confident of its surface (0-1; 0: off)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with ProgressPrinter(args.json) as progress:
            return int(args.handler(args, progress) or 0)
    except NeuralLabelError as exc:
        if args.json:
            print(json.dumps({"event": "error", "message": str(exc)}), flush=True)
        print(f"neurallabel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"neurallabel {args.command}: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"neurallabel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
