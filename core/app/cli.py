"""The `neurallabel` command (also `python -m neurallabel.core.cli`).

This is the only place in `core` that prints. Each subcommand's arguments make a request of :mod:`.jobs`
(named as its fields); :func:`.jobs.run` does the work and the command prints its progress and result:
readable lines, or the JSON-lines events of :mod:`.events` with ``--json`` (the worker's protocol). Bad
input -> one line on stderr naming the flag at fault, exit code 2. Ctrl-C or SIGTERM -> "cancelled", exit code
130 (a re-run goes on from the finished units of work).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..errors import NeuralLabelError
from ..export import FORMATS
from ..progress import Cancelled
from .events import EventWriter, eta_seconds
from .jobs import (CAMERA_MODELS, DEPTH_LOSSES, MATCHERS, REQUESTS, SPLITS, SYNTH_CREDITS, SYNTH_ESTIMATORS,
                   SYNTH_TASKS, Request, at_field, run)


# --- progress display -----------------------------------------------------------------------------------


class ProgressBar:
    """A progress callback for people: a rich progress bar with ETA on a terminal, else a line on stderr per
    stage's end and at most one every 10 s."""

    def __init__(self) -> None:
        self._rich = None
        self._tasks: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._last_line = 0.0

    def __enter__(self) -> "ProgressBar":
        if sys.stderr.isatty():
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
        if done < total and now - self._last_line < 10.0:
            return
        self._last_line = now
        eta = eta_seconds(start, now, done, total)
        print(f"{stage}: {done}/{total}" + ("" if eta is None else f" (ETA {eta:.0f} s)"), file=sys.stderr,
              flush=True)


# --- requests from arguments, results to lines --------------------------------------------------------------


def request_from_args(args: argparse.Namespace) -> Request:
    """The command's request: its arguments by name (bake's occlusion flags make its label options)."""
    cls = REQUESTS[args.command]
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    if args.command == "bake":
        from ..labels.frame import LabelOptions

        with at_field("options"):
            values["options"] = LabelOptions(occlusion_abs_mm=args.occlusion_abs_mm,
                                             occlusion_rel=args.occlusion_rel,
                                             occlusion_min_confidence=args.occlusion_min_confidence,
                                             colour_edges=not args.no_colour_edges)
    return cls(**values)


def summary_lines(result: dict) -> list[str]:
    """What a command prints at its end (without ``--json``)."""
    kind = result["kind"]
    if kind == "demo":
        return list(result["lines"])
    if kind == "sfm" and "known_poses" in result:
        return [f"sfm: {result['points']} points triangulated from {result['registered']}/{result['images']} posed "
                f"images (poses kept from {result['known_poses']}), mean reprojection error "
                f"{result['mean_reprojection_error_px']:.2f} px, {result['seconds']:.0f} s",
                f"wrote {result['transforms']}"]
    if kind == "sfm":
        return [f"sfm: registered {result['registered']}/{result['images']} images, {result['points']} points, "
                f"mean reprojection error {result['mean_reprojection_error_px']:.2f} px, {result['seconds']:.0f} s",
                "self-check: " + ("passed" if result["self_check_passed"] else
                                  f"FAILED for {len(result['inconsistent_cameras'])} cameras (written anyway)"),
                f"wrote {result['transforms']}"]
    if kind == "train":
        return [f"train: {result['steps']} steps in {result['elapsed_s']:.0f} s on {result['device']} "
                f"({result['train_frames']} train views{', resumed' if result['resumed'] else ''}), "
                f"train PSNR {result['train_psnr']:.2f} dB",
                f"wrote {result['out']}"]
    if kind == "render":
        lines = [f"render: {result['count']} views of the {result['split']} split into {result['out']}"]
        if "psnr" in result:
            lines.append(f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f} (mean over the views)")
        lines.append(f"pictures: {Path(result['out']) / 'strip'} (truth | render | error), "
                     f"{Path(result['out']) / 'depth_colour'}")
        return lines
    if kind == "bake":
        per_frame = result["seconds_per_frame"]
        return [f"baked {result['frames']} frames ({result['skipped']} already done), {result['instances']} "
                f"instances, " + (f"{per_frame:.3f} s/frame" if per_frame is not None else "nothing new to label"),
                f"{result['frames_in_dataset']} frames in {result['out']} ({', '.join(result['formats'])})"] + (
                    [f"preview: open {result['preview']}"] if result.get("preview") else [])
    if kind == "synth":
        return [f"synth: baked {result['baked']} of {result['views']} views ({result['skipped']} already done); "
                f"dropped {result['inside_geometry']} inside geometry, {result['untrusted']} untrusted "
                f"({result['untrusted_dropped']} dropped), {result['negatives']} negatives (no object)",
                f"{result['frames_in_dataset']} views in {result['out']} (BOP scene {result['bop_scene']:06d}; "
                f"synth/psi.json, synth/transforms.json)"]
    if kind == "inspect":
        return [f"inspect: {len(result['frames'])} frames drawn into {result['out']}", f"open {result['index']}"]
    if kind == "correspond":
        return [f"correspond: {result['pairs_made']} pairs made, {result['pairs_done']}/{result['pairs']} done, "
                f"{result['accepted']}/{result['queries']} queries accepted ({result['mode']})",
                f"wrote {result['out']}"]
    if kind in SEMANTIC_KINDS:
        return semantic_summary_lines(result)
    if kind == "export_mesh":
        return [f"export-mesh: {result['vertices']} vertices, {result['faces']} faces at density "
                f"{result['threshold']:.4g} ({result['resolution']} voxels across)", f"wrote {result['out']}"]
    return [json.dumps(result)]


def flag_name(args: argparse.Namespace, field: str) -> str:
    """How the command line spells a request field: ``SPEC`` for a positional argument, else ``--device``."""
    if field in args.positionals:
        return field.upper()
    if field == "options":  # bake's label options come from these flags
        return "--occlusion-mm/--occlusion-rel/--occlusion-min-confidence/--no-colour-edges"
    return "--" + field.replace("_", "-")


def error_line(exc: NeuralLabelError, args: argparse.Namespace) -> str:
    """The message with the field at fault spelt as the command line spells it: a message that starts with
    the field's name gets the flag instead, any other the flag in front."""
    message = str(exc)
    if exc.field is None:
        return message
    flag = flag_name(args, exc.field)
    for separator in (" ", ":"):
        if message.startswith(exc.field + separator):
            return flag + message[len(exc.field):]
    return f"{flag}: {message}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """States each option's default in its help and keeps the examples' line breaks. No "(default: None)" or
    "(default: False)" (flags and unset options say nothing), nor a second default where the text has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def package_version() -> str:
    """The installed package's version, else the one in the source tree's pyproject.toml."""
    from importlib import metadata

    try:
        return metadata.version("neurallabel")
    except metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, ValueError):
            return "unknown"


POSITIONAL_HELP = {
    "images": "folder of photos of the scene",
    "data": "dataset folder (transforms.json and its images)",
    "field": "trained field folder (the --out of train)",
    "spec": "label spec (spec.json, written by the Blender add-on)",
    "bake": "a bake's output folder (the --out of bake)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurallabel", formatter_class=HelpFormatter,
        description="Photos of a real scene -> neural radiance field -> labeled vision datasets.",
        epilog="example:\n  neurallabel demo --out .demo\n\n'neurallabel COMMAND --help' describes a command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do; 'neurallabel COMMAND --help' describes it")
    devices = "auto (CUDA when there is one), cpu, cuda or cuda:N"

    def add(name: str, help_text: str, example: str, positionals: tuple[str, ...] = ()
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter,
                           epilog=f"example:\n  neurallabel {name} {example}")
        p.add_argument("--json", action="store_true", help="print progress and the result as JSON lines")
        p.set_defaults(positionals=positionals)
        for positional in positionals:
            p.add_argument(positional, type=Path, help=POSITIONAL_HELP[positional])
        return p

    p = add("demo", "generate the built-in demo scene and run the pipeline on it", "--out .demo --views 20")
    p.add_argument("--out", type=Path, default=Path(".demo"), help="output folder")
    p.add_argument("--views", type=int, default=40, help="number of camera views")
    p.add_argument("--width", type=int, default=320, help="image width (pixels)")
    p.add_argument("--height", type=int, default=240, help="image height (pixels)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the scene and cameras")
    p.add_argument("--train-minutes", type=float, default=2.0, help="field training time (minutes)")

    p = add("sfm", "recover cameras from photos (pycolmap) and write transforms.json", "photos/ --out data/",
            ("images",))
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write (transforms.json)")
    p.add_argument("--downscale", type=float, default=None,
                   help="detect features on images shrunk by this factor (cameras stay full-size); "
                        "default: to 480 px on the longer side")
    p.add_argument("--matcher", choices=MATCHERS, default="auto",
                   help="image pairs to match: all (exhaustive), neighbours in name order (sequential)")
    p.add_argument("--camera-model", default="OPENCV", choices=CAMERA_MODELS,
                   help="COLMAP camera model (OPENCV: k1 k2 p1 p2, right for phone photos)")
    p.add_argument("--allow-inconsistent", action="store_true",
                   help="write the cameras even when the self-check finds some that contradict their own "
                        "matches (warns, naming them); by default sfm refuses with exit 2")
    p.add_argument("--known-poses", type=Path, default=None, metavar="TRANSFORMS",
                   help="keep this transforms.json's poses and intrinsics and only triangulate points from the "
                        "photos (for depth supervision and the field's bounds); writes its frames to --out")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")

    p = add("train", "train a radiance field on a dataset's train split", "data/ --out field/ --minutes 10",
            ("data",))
    p.add_argument("--out", type=Path, required=True, help="field folder to write (a re-run resumes it)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float,
                        help="stop after this much training time, in minutes (default: 5, unless --steps is given)")
    budget.add_argument("--steps", type=int, help="stop after this many steps instead of a time")
    p.add_argument("--device", default="auto", help=devices)
    p.add_argument("--downscale", type=float, default=1.0, help="train on images shrunk by this factor")
    p.add_argument("--depth-supervision", action="store_true",
                   help="sparse depth loss from SfM points (DS-NeRF)")
    p.add_argument("--depth-loss", choices=DEPTH_LOSSES, default="kl",
                   help="with --depth-supervision: DS-NeRF's KL form (default), or the squared error of the "
                        "expected distance (mse, as NeRF-Supervision)")
    p.add_argument("--strict", action="store_true", help="refuse a dataset with missing images")

    p = add("render", "render a trained field's views: rgb, z-depth, and PSNR/SSIM",
            "field/ --data data/ --out renders/", ("field",))
    p.add_argument("--data", type=Path, required=True, help="the dataset whose cameras to render")
    p.add_argument("--out", type=Path, required=True, help="folder to write the renders into")
    p.add_argument("--split", default="test", choices=SPLITS, help="which of the dataset's views to render")
    p.add_argument("--device", default="auto", help=devices)
    p.add_argument("--downscale", type=float, default=1.0, help="render images shrunk by this factor")

    p = add("bake", "bake labels for every frame from a label spec", "spec.json --out dataset/ --formats bop,coco",
            ("spec",))
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (a re-run goes on from the finished frames)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"comma-separated dataset formats to write, from {', '.join(FORMATS)}")
    p.add_argument("--coco-masks", dest="coco_masks", default="rle", choices=("rle", "polygon"),
                   help="COCO segmentation: RLE, or polygons (RLE where a polygon would change the mask)")
    p.add_argument("--frames", default=None, help="A:B, the frame indices A <= i < B (either may be empty)")
    p.add_argument("--shard", default=None,
                   help="I/N: bake every N-th selected frame starting at the I-th (I counts from 0); shards "
                        "baked into the same --out make one dataset")
    p.add_argument("--device", default="auto", help=devices)
    stages = p.add_mutually_exclusive_group()
    stages.add_argument("--no-assemble", action="store_true",
                        help="label and write the frames only (shards running at once); then --assemble-only")
    stages.add_argument("--assemble-only", action="store_true",
                        help="write the aggregate files once every selected frame is baked (else exit 2)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="bake the frames as Ray tasks: on a local cluster, or the cluster at ADDRESS "
                        "(pip install \"neurallabel[ray]\")")
    p.add_argument("--preview", type=int, default=None, metavar="N",
                   help="then draw N evenly spaced frames as `neurallabel inspect` does, into OUT/inspect/")
    p.add_argument("--model-cache", dest="model_cache", default="user", metavar="DIR",
                   help="box objects' meshes shared between bakes of the same boxes, field and dataset: 'user' "
                        "($NEURALLABEL_CACHE/box-meshes, default ~/.cache/neurallabel/box-meshes), a folder, "
                        "or 'none'")
    # Blender's Bake passes its scene's occlusion tolerances; these reproduce them (same defaults as LabelOptions).
    p.add_argument("--occlusion-mm", dest="occlusion_abs_mm", type=float, default=5.0,
                   help="the field's density within this band (mm) of an annotated mesh's surface belongs to "
                        "it and hides nothing ...")
    p.add_argument("--occlusion-rel", type=float, default=0.02, help="... plus this fraction of the depth")
    p.add_argument("--occlusion-min-confidence", type=float, default=0.5,
                   help="a mesh pixel is occluded when the probability that its ray does not reach the mesh "
                        "exceeds this (0-1; 0.5: the likelier of visible and occluded)")
    p.add_argument("--no-colour-edges", action="store_true",
                   help="box objects' masks from the field alone, without settling their outlines by the "
                        "photo's colours")

    # synth (issue 17): labelled novel views rendered from the field
    p = add("synth", "render and label novel views from the field, posed by bins around the training cameras",
            "spec.json --out synth/ --views 200 --distance 0.5:1.0:3", ("spec",))
    p.add_argument("--out", type=Path, required=True, help="output folder (a bake's layout plus synth/)")
    p.add_argument("--views", type=int, default=100, help="number of synthetic views to draw")
    for axis, unit in (("azimuth", "degrees"), ("elevation", "degrees"), ("distance", "world units")):
        p.add_argument(f"--{axis}", default=None, metavar="LOW:HIGH:BINS",
                       help=f"{axis} bins ({unit}; default: the training cameras' range)")
    p.add_argument("--weights", default=None, help="bin weights: uniform (the default), a JSON list or a psi.json")
    p.add_argument("--tau", type=float, default=0.1, help="Gumbel-softmax temperature (> 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws (a run replays exactly)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="keep bins outside the training cameras' hull (else clamped, with a warning)")
    p.add_argument("--size", default=None, metavar="WxH", help="image size (default: the dataset's camera)")
    p.add_argument("--min-confidence", type=float, default=0.5,
                   help="trust gate: drop views whose mean field confidence over object pixels is lower")
    p.add_argument("--keep-untrusted", action="store_true", help="flag untrusted views instead of dropping them")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated formats, from {', '.join(FORMATS)}")
    p.add_argument("--device", default="auto", help=devices)
    p.add_argument("--optimise", action="store_true", help="fit the pose distribution to --target first")
    p.add_argument("--target", type=Path, default=None, help="labelled target dataset (a COCO or bake folder)")
    p.add_argument("--task", default="segment", choices=SYNTH_TASKS, help="the downstream task to optimise for")
    p.add_argument("--iterations", type=int, default=10, help="optimisation iterations")
    p.add_argument("--views-per-iteration", type=int, default=40, help="views rendered per iteration")
    p.add_argument("--estimator", default="reinforce", choices=SYNTH_ESTIMATORS, help="gradient estimator")
    p.add_argument("--credit", default="groups", choices=SYNTH_CREDITS,
                   help="reinforce: each view's advantage from the reward of its group (groups), or from nets on "
                        "random halves of the views (subsets: its own marginal value, 4x the nets)")
    p.add_argument("--fit-to-poses", type=Path, default=None,
                   help="a dataset (transforms.json) whose camera histogram becomes the weights (baseline)")

    p = add("inspect", "draw a bake's labels: overlays, depth, confidence, contact sheet and index.html",
            "dataset/ --max 24   (then open dataset/inspect/index.html)", ("bake",))
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the pictures (default: BAKE/inspect; never one holding the bake's files)")
    p.add_argument("--frames", default=None, help="A:B, the frame indices A <= i < B (either may be empty)")
    p.add_argument("--max", type=int, default=None, help="at most this many frames, spread evenly (default: all)")

    # correspond (issue 15): dense correspondences from the field's depth distribution
    p = add("correspond", "dense pixel correspondences between view pairs, drawn from a field's depth distribution",
            "field.pt --data data/ --out corr/ --pairs 50 --per-pair 2000", ("field",))
    p.add_argument("--data", type=Path, required=True, help="the dataset the field was trained on")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; writes OUT/correspondences/ (a re-run goes on from the finished pairs)")
    p.add_argument("--pairs", type=int, default=None, help="at most this many view pairs (default: every pair)")
    p.add_argument("--per-pair", type=int, default=1000, help="query pixels per pair")
    p.add_argument("--mode", default="sample", choices=("sample", "mean", "median", "mode"),
                   help="depth per query: drawn from the ray's weights (with the round trip), or one depth "
                        "per ray (with the depth-visibility check)")
    p.add_argument("--round-trip-px", type=float, default=2.0,
                   help="sample mode: keep a pair whose round trip back to A lands within this many pixels")
    p.add_argument("--mask-from", type=Path, default=None, metavar="BAKE_DIR",
                   help="query only inside the objects' masks of this bake (its raw/instance/)")
    p.add_argument("--shard", default=None,
                   help="I/N: every N-th pair starting at the I-th; shards written into one --out merge")
    p.add_argument("--seed", type=int, default=0, help="random seed of the pairs, pixels and depth draws")
    p.add_argument("--max-angle", type=float, default=45.0, help="largest angle between a pair's optical axes")
    p.add_argument("--whole-field", action="store_true",
                   help="open scenes: also keep points outside the field's detailed box")
    p.add_argument("--device", default="auto", help=devices)
    add_semantic_commands(sub, add, devices)
    add_export_mesh_command(add, devices)
    return parser


def add_export_mesh_command(add, devices: str) -> None:
    """``export-mesh`` (issue 14): the field's surface as a PLY triangle mesh."""
    p = add("export-mesh", "write the field's surface in its detailed region as a triangle mesh (PLY, the "
            "dataset frame; marching cubes on its density, vertex colours from its rgb)",
            "field.pt --out field_mesh.ply --resolution 256", ("field",))
    p.set_defaults(command="export_mesh")
    p.add_argument("--out", type=Path, required=True, help="the .ply file to write")
    p.add_argument("--resolution", type=int, default=256, help="voxels along the region's longest side (8-1024)")
    p.add_argument("--threshold", type=float, default=None,
                   help="iso-level: a density per data unit (default: ln 2 / the field's render step, where a "
                        "sharp field renders its surface; lower it for a half-trained field)")
    p.add_argument("--no-colour", dest="colour", action="store_false",
                   help="no vertex colours (by default: the field's colour looking into the surface)")
    p.add_argument("--device", default="auto", help=devices)


# --- semantic head and active selection (issue 16) ---------------------------------------------------------

SEMANTIC_KINDS = ("semantic_train", "semantic_render", "select")


def add_semantic_commands(sub, add, devices: str) -> None:
    """``semantic train``, ``semantic render`` (nested under ``semantic``) and ``select``."""
    semantic = sub.add_parser("semantic", help="a semantic head on a trained field: train it, render it",
                              description="a semantic head on a trained field: train it from a few labelled "
                                          "pixels, render every view's category map", formatter_class=HelpFormatter,
                              epilog="example:\n  neurallabel semantic train field.pt --data data/ --labels labels/ "
                                     "--out head.pt\n  neurallabel semantic render head.pt --data data/ --out semantic/")
    nested = semantic.add_subparsers(dest="semantic_command", required=True, metavar="SUBCOMMAND",
                                     help="train or render; 'neurallabel semantic SUBCOMMAND --help' describes it")
    p = nested.add_parser("train", help="train a semantic head from label images (uint16 category PNGs, "
                          "65535 = unlabelled)", formatter_class=HelpFormatter,
                          epilog="example:\n  neurallabel semantic train field.pt --data data/ --labels labels/ "
                                 "--out head.pt")
    p.set_defaults(command="semantic_train", positionals=("field",))
    p.add_argument("field", type=Path, help=POSITIONAL_HELP["field"])
    p.add_argument("--json", action="store_true", help="print progress and the result as JSON lines")
    p.add_argument("--data", type=Path, required=True, help="the dataset the field was trained on")
    p.add_argument("--labels", type=Path, required=True,
                   help="folder of label images NNNNNN.png (frame index) or <photo stem>.png; a bake's raw/category")
    p.add_argument("--out", type=Path, required=True, help="the head checkpoint to write")
    p.add_argument("--classes", default=None, help="the class table, comma-separated ids (default: those labelled)")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--device", default="auto", help=devices)
    p.add_argument("--downscale", type=float, default=1.0, help="the label images are the photos shrunk by this")

    p = nested.add_parser("render", help="render a semantic head: category, entropy and preview per view",
                          formatter_class=HelpFormatter,
                          epilog="example:\n  neurallabel semantic render head.pt --data data/ --out semantic/")
    p.set_defaults(command="semantic_render", positionals=("head",))
    p.add_argument("head", type=Path, help="semantic head checkpoint (the --out of semantic train)")
    p.add_argument("--json", action="store_true", help="print progress and the result as JSON lines")
    p.add_argument("--data", type=Path, required=True, help="the dataset whose views to render")
    p.add_argument("--out", type=Path, required=True, help="folder to write category/, entropy/, preview/ into")
    p.add_argument("--split", default="all", choices=SPLITS, help="which of the dataset's views to render")
    p.add_argument("--field", type=Path, default=None, help="the field (default: the one the head was trained with)")
    p.add_argument("--device", default="auto", help=devices)
    p.add_argument("--downscale", type=float, default=1.0, help="render images shrunk by this factor")

    p = add("select", "choose what to label next: pixels, patches or images of the train views",
            "field.pt --data data/ --budget 4096 --granularity patch:16 --strategy geometry --out selection.json",
            ("field",))
    p.add_argument("--data", type=Path, required=True, help="the dataset the field was trained on")
    p.add_argument("--out", type=Path, required=True, help="JSON list [{frame, image, x, y, w, h}] to write")
    p.add_argument("--budget", type=int, required=True, help="pixels to label this round")
    p.add_argument("--granularity", default="patch:16", help="pixel, patch:K (K x K pixels) or image")
    p.add_argument("--strategy", default="geometry", choices=("random", "entropy", "margin", "geometry"),
                   help="how to choose (geometry: uncertainty x surface not covered by any label yet)")
    p.add_argument("--head", type=Path, default=None, help="a semantic head (its uncertainty); none: first round")
    p.add_argument("--labels", type=Path, default=None, help="label images so far (their pixels are not chosen)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same selection)")
    p.add_argument("--state", type=Path, default=None,
                   help="the rounds so far (default: OUT's name with .state.json; a re-run adds a round)")
    p.add_argument("--device", default="auto", help=devices)
    p.add_argument("--downscale", type=float, default=1.0,
                   help="select in the images shrunk by this factor (rectangles and labels at that size)")


def semantic_summary_lines(result: dict) -> list[str]:
    kind = result["kind"]
    if kind == "semantic_train":
        return [f"semantic train: {result['labelled_pixels']} labelled pixels in {result['label_frames']} images, "
                f"classes {result['classes']}", f"wrote {result['out']}"]
    if kind == "semantic_render":
        return [f"semantic render: {result['count']} views of the {result['split']} split into {result['out']}"]
    return [f"select: round {result['round']}, {result['units']} units, {result['pixels']} pixels "
            f"(budget {result['budget']})", f"wrote {result['out']} (state {result['state']})"]


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[dict]:
    """SIGTERM (``kill``, a batch system's stop, a container's stop) stops the command as Ctrl-C does: a
    KeyboardInterrupt -> "cancelled", exit code 130. Writes are atomic (temp file + rename), so only whole files
    remain; a temp file the interrupt catches mid-creation is removed by the next run (its process is gone).
    Once ``state["done"]`` is set a SIGTERM is ignored (the result is being printed). Restores the previous
    handler on exit; outside the main thread (no signals there) it does nothing."""
    state = {"done": False}

    def on_sigterm(signum, frame) -> None:
        if not state["done"]:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_interrupts() as signals:
        return _main(args, signals)


def _main(args: argparse.Namespace, signals: dict) -> int:
    events = EventWriter(sys.stdout, min_interval_s=0.2) if args.json else None

    def notice(line: str) -> None:  # e.g. the photos a dataset skipped: one line, before the work
        if events is not None:
            events.notice(line)
        else:
            print(line, flush=True)

    try:
        request = request_from_args(args)
        if args.command == "sfm" and not args.verbose:
            import pycolmap

            pycolmap.logging.minloglevel = 2  # COLMAP's INFO/WARNING log lines would bury the progress bar
        if events is not None:
            result = run(request, events.progress, notice)
            signals["done"] = True
            events.result({"command": args.command, **result})
        else:
            with ProgressBar() as progress:
                result = run(request, progress, notice)
            signals["done"] = True
            for line in summary_lines(result):
                print(line, flush=True)
        return 0
    except NeuralLabelError as exc:
        line = error_line(exc, args)
        if events is not None:
            events.error(line, exc.field)
        print(f"neurallabel {args.command}: error: {line}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        if events is not None:
            events.cancelled()
        print(f"neurallabel {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
