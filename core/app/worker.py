"""The worker process's jobs: ``python <extension>/core/worker.py job.json`` runs one heavy job outside Blender.

Blender starts it with ``subprocess.Popen`` (never ``multiprocessing``: spawned children cannot import
``bl_ext.*``) and reads its stdout, one JSON object per line::

    {"event": "progress", "done": 12, "total": 300, "stage": "bake", "eta_s": 41.0}
    {"event": "result", ...}                  # the job's result, last line on success (exit code 0)
    {"event": "error", "message": "..."}      # a problem the user can fix (exit code 2; 3: missing module);
                                              # "field": the job field at fault, when the error names one
    {"event": "cancelled"}                    # after SIGTERM (exit code 130)

A job file is a JSON object with ``kind`` in :data:`JOB_KINDS`, optional ``sys_path`` (folders put first on
``sys.path``, e.g. the add-on's own site-packages), optional ``threads`` (torch CPU threads) and the kind's
arguments (see each ``job_*`` function). SIGTERM is handled between units of work (a baked frame, an ICP
iteration): the bake writers write each file to a temp name and rename it, and stopping between frames
leaves only whole frames.
"""

from __future__ import annotations

import sys
from pathlib import Path

import json
import signal
import tempfile
import time
import traceback
from typing import Any, Callable, Optional, TextIO

import numpy as np

from ..errors import NeuralLabelError
from ..progress import Cancelled

JOB_KINDS = ("bake", "train", "preview", "surface_points", "snap")


class EventWriter:
    """Writes protocol events as JSON lines; progress at most ~10 per second, plus each stage's last."""

    def __init__(self, stream: TextIO, cancel_requested: Callable[[], bool] = lambda: False) -> None:
        self.stream = stream
        self.cancel_requested = cancel_requested
        self._started: dict[str, float] = {}
        self._last = 0.0

    def emit(self, event: dict) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def progress(self, done: int, total: int, stage: str) -> None:
        if self.cancel_requested():
            raise Cancelled()
        now = time.monotonic()
        start = self._started.setdefault(stage, now)
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        eta = (now - start) / done * (total - done) if done > 0 else None
        self.emit({"event": "progress", "done": int(done), "total": int(total), "stage": stage,
                   "eta_s": None if eta is None else round(eta, 1)})


# --- helpers ---------------------------------------------------------------------------------------------


def _required(job: dict, key: str) -> Any:
    if job.get(key) is None:
        raise NeuralLabelError(f"job {job.get('kind')!r}: missing {key!r}")
    return job[key]


def _matrix(value: Any, what: str) -> np.ndarray:
    matrix = np.asarray(value if value is not None else np.eye(4), dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise NeuralLabelError(f"{what} must be a finite 4x4 matrix")
    return matrix


def _similarity_scale(matrix: np.ndarray, what: str) -> float:
    """The uniform scale of a similarity transform (NeuralLabelError if it is not one)."""
    lengths = np.linalg.norm(matrix[:3, :3], axis=0)
    scale = float(lengths.mean())
    rotation = matrix[:3, :3] / scale
    if scale <= 0 or np.abs(rotation.T @ rotation - np.eye(3)).max() > 1e-5 or np.linalg.det(rotation) < 0:
        raise NeuralLabelError(f"{what} must be rotation + translation + uniform scale (no shear, no mirror)")
    return scale


def _field(job: dict):
    try:
        from ..field.model import load_field
    except ImportError as exc:
        if "field" not in str(exc) and "render" not in str(exc):
            raise
        raise NeuralLabelError("the field engine is not available yet in this NeuralLabel version") from None
    return load_field(job["field"], device=_device(job))


def _depth_source(job: dict, progress):
    """(dataset, scene query): true depth maps from ``depth_dir`` (named like the images) or a field."""
    from ..data.dataset import load_transforms
    from ..scene.queries import DepthMapQuery, FieldQuery

    dataset = load_transforms(_required(job, "data"))
    if job.get("depth_dir"):
        depth_dir = Path(job["depth_dir"])
        cache: dict[int, np.ndarray] = {}

        def depth_map(frame):
            if frame.index not in cache:
                path = depth_dir / f"{frame.name}.npy"
                if not path.is_file():
                    raise NeuralLabelError(f"{path}: depth map does not exist")
                cache[frame.index] = np.load(path)
            return cache[frame.index]

        return dataset, DepthMapQuery(depth_map)
    if not job.get("field"):
        raise NeuralLabelError("no field: train or load a field first (Field > Load field)")
    return dataset, FieldQuery(_field(job), device=_device(job))


def _surface_in_world(job: dict, box_world: dict, margin_world: float, progress):
    """Surface points (world) near a world box: the box goes into the cameras' frame and back."""
    from ..geometry.box import Box
    from ..geometry.transforms import Similarity
    from ..geometry.view import View
    from ..scene.surface import surface_points

    world_from_data = _matrix(job.get("world_from_data"), "world_from_data")
    scale = _similarity_scale(world_from_data, "world_from_data")
    dataset, scene = _depth_source(job, progress)
    views = [View.from_frame(frame, Similarity(world_from_data)) for frame in dataset.frames]
    box = Box(_matrix(box_world.get("pose"), "box pose"), np.asarray(box_world["size"], dtype=np.float64))
    box_data = box.transformed(np.linalg.inv(world_from_data))
    surface = surface_points(views, box_data, scene, margin=margin_world / scale,
                             max_views=int(job.get("max_views", 12)), progress=progress)
    points = surface.points @ world_from_data[:3, :3].T + world_from_data[:3, 3]
    return points, surface.view_count


def _read_mesh(path: str) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many kinds for unreadable files
        raise NeuralLabelError(f"{path}: cannot read the mesh ({exc})") from None
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


# --- jobs ------------------------------------------------------------------------------------------------


def _device(job: dict) -> str:
    """The job's device; "auto" (or none) -> CUDA when this worker's torch has it, else the CPU."""
    device = job.get("device") or "auto"
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    return device


def job_bake(job: dict, events: EventWriter) -> dict:
    """``spec``, ``out``; optional ``formats`` (list), ``frames`` ("A:B" or [A, B), B exclusive), ``shard``
    ("I/N"), ``device``, ``options`` (LabelOptions fields, e.g. occlusion tolerances). Runs exactly what
    ``neurallabel bake`` runs."""
    try:
        from ..pipeline.bake import bake
        from ..labels.frame import LabelOptions
        from ..spec import load_spec
    except ImportError as exc:
        if not any(name in str(exc) for name in ("bake", "spec", "labels")):
            raise
        raise NeuralLabelError("the bake engine is not available yet in this NeuralLabel version "
                               "(core/bake.py and core/spec.py have not landed)") from None
    spec = load_spec(_required(job, "spec"))
    kwargs: dict[str, Any] = {"formats": tuple(job.get("formats") or ("bop", "coco", "raw")),
                              "device": _device(job), "progress": events.progress}
    if job.get("frames") is not None:
        kwargs["frames"] = job["frames"]
    if job.get("shard") is not None:
        kwargs["shard"] = job["shard"]
    if job.get("options"):
        try:
            kwargs["options"] = LabelOptions(**job["options"])
        except TypeError as exc:
            raise NeuralLabelError(f"bake options {job['options']}: {exc}") from None
    summary = bake(spec, Path(_required(job, "out")), **kwargs)
    return {"kind": "bake", "out": str(job["out"]), "summary": summary}


def job_train(job: dict, events: EventWriter) -> Optional[dict]:
    """``data``, ``out``; optional ``minutes`` or ``steps``, ``device``. The CLI's own JSON lines are the
    protocol, so this hands over to ``neurallabel train --json`` (which prints its result or error)."""
    from .cli import main as cli_main

    argv = ["train", str(_required(job, "data")), "--out", str(_required(job, "out")), "--json"]
    if job.get("minutes") is not None:
        argv += ["--minutes", str(job["minutes"])]
    if job.get("steps") is not None:
        argv += ["--steps", str(job["steps"])]
    if job.get("device"):
        argv += ["--device", str(job["device"])]
    code = cli_main(argv)
    if code != 0:
        raise SystemExit(code)
    return None


def _palette(ids: np.ndarray) -> np.ndarray:
    """A stable bright colour per id (uint8 RGB)."""
    ids = ids.astype(np.uint64)
    hashed = (ids * np.uint64(2654435761)) % np.uint64(2**32)
    rgb = np.stack([(hashed >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], axis=-1)
    return (96 + (rgb.astype(np.float64) * (159.0 / 255.0))).astype(np.uint8)


def preview_image(photo: np.ndarray, instance: np.ndarray, z_depth: np.ndarray) -> np.ndarray:
    """Visible masks over the photo (left) and the depth (right, near = bright) as one RGB image."""
    photo = photo[..., :3].astype(np.float64)
    if photo.shape[:2] != instance.shape:
        from PIL import Image

        photo = np.asarray(Image.fromarray(photo.astype(np.uint8)).resize(instance.shape[::-1]),
                           dtype=np.float64)
    overlay = photo.copy()
    labelled = instance > 0
    overlay[labelled] = 0.45 * photo[labelled] + 0.55 * _palette(instance[labelled])
    finite = np.isfinite(z_depth)
    depth_rgb = np.zeros(photo.shape)
    if finite.any():
        near, far = np.percentile(z_depth[finite], [1, 99])
        level = 1.0 - np.clip((z_depth - near) / max(far - near, 1e-9), 0.0, 1.0)
        depth_rgb[finite] = (40.0 + 215.0 * level[finite])[:, None]
    return np.concatenate([overlay, depth_rgb], axis=1).clip(0, 255).astype(np.uint8)


def job_preview(job: dict, events: EventWriter) -> dict:
    """``spec``, ``frame`` (index); optional ``out`` (folder), ``device``. Bakes one frame (raw) and writes
    ``preview.png`` (masks over the photo | depth)."""
    from PIL import Image

    from ..data.dataset import load_transforms

    frame_index = int(_required(job, "frame"))
    out = Path(job.get("out") or tempfile.mkdtemp(prefix="neurallabel-preview-"))
    bake_job = {"kind": "bake", "spec": job["spec"], "out": str(out), "formats": ["raw"],
                "frames": [frame_index, frame_index + 1], "device": job.get("device"),
                "options": job.get("options")}
    job_bake(bake_job, events)
    raw = out / "raw"
    instance_path, depth_path = raw / "instance" / f"{frame_index:06d}.png", raw / "depth" / f"{frame_index:06d}.npy"
    if not instance_path.is_file() or not depth_path.is_file():
        raise NeuralLabelError(f"the bake wrote no raw labels for frame {frame_index} in {raw}")
    instance = np.asarray(Image.open(instance_path)).astype(np.int64)
    z_depth = np.load(depth_path)
    spec_json = json.loads(Path(job["spec"]).read_text())
    data_path = Path(spec_json["data"])
    if not data_path.is_absolute():
        data_path = Path(job["spec"]).parent / data_path
    frames = {f.index: f for f in load_transforms(data_path).frames}
    if frame_index not in frames:
        raise NeuralLabelError(f"{data_path}: no frame {frame_index}")
    photo = np.asarray(Image.open(frames[frame_index].image_path).convert("RGB"))
    image_path = out / "preview.png"
    Image.fromarray(preview_image(photo, instance, z_depth)).save(image_path)
    ids = sorted(int(i) for i in np.unique(instance) if i > 0)
    return {"kind": "preview", "image": str(image_path), "frame": frame_index, "instance_ids": ids,
            "width": int(instance.shape[1]), "height": int(instance.shape[0])}


def job_surface_points(job: dict, events: EventWriter) -> dict:
    """``data`` and ``field`` (or ``depth_dir`` of true depth maps), ``out`` (.npy of world points (N,3));
    optional ``world_from_data``, ``box`` ({"pose", "size"} in world; null: a preview cloud of the whole
    field, cropped to its box), ``margin`` (world units), ``max_views``."""
    out = Path(_required(job, "out"))
    if job.get("box") is None:
        from ..data.dataset import load_transforms
        from ..scene.surface import field_cloud

        world_from_data = _matrix(job.get("world_from_data"), "world_from_data")
        _similarity_scale(world_from_data, "world_from_data")
        if not job.get("field"):
            raise NeuralLabelError("no field: train or load a field first")
        dataset = load_transforms(_required(job, "data"))
        points = field_cloud(_field(job), dataset.frames, views=int(job.get("max_views", 6)),
                             progress=events.progress)
        points = points @ world_from_data[:3, :3].T + world_from_data[:3, 3]
        views = min(len(dataset.frames), int(job.get("max_views", 6)))
    else:
        points, views = _surface_in_world(job, job["box"], float(job.get("margin", 0.0)), events.progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, points.astype(np.float32))
    return {"kind": "surface_points", "points": str(out), "count": int(len(points)), "views": int(views)}


def job_snap(job: dict, events: EventWriter) -> dict:
    """``mesh`` (PLY/OBJ in the object's own frame, world units), ``pose`` (4x4 object-to-world, rigid),
    ``data`` + ``field`` or ``depth_dir``; optional ``world_from_data``, ``margin``, ``max_distance``
    (default: 3 cm or a fifth of the mesh's size, whichever is larger), ``model_points``."""
    from ..geometry.icp import icp_point_to_plane, sample_mesh_surface
    from ..scene.surface import estimate_normals

    vertices, faces = _read_mesh(str(_required(job, "mesh")))
    pose = _matrix(_required(job, "pose"), "pose")
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre = np.eye(4)
    centre[:3, 3] = 0.5 * (lo + hi)
    size = float(np.linalg.norm(hi - lo))
    max_distance = float(job.get("max_distance") or max(0.03, 0.2 * size))
    margin = float(job.get("margin") or max_distance)
    scene_points, views = _surface_in_world(job, {"pose": pose @ centre, "size": (hi - lo).tolist()}, margin,
                                            events.progress)
    model_points, model_normals = sample_mesh_surface(vertices, faces, int(job.get("model_points", 20000)))
    result = icp_point_to_plane(model_points, model_normals, scene_points, pose, max_distance=max_distance,
                                scene_normals=estimate_normals(scene_points), progress=events.progress)
    # A snap that runs away is worse than none: the surface there does not look like the mesh.
    moved = float(np.linalg.norm((result.pose @ centre)[:3, 3] - (pose @ centre)[:3, 3]))
    turned = float(np.degrees(np.arccos(np.clip((np.trace(pose[:3, :3].T @ result.pose[:3, :3]) - 1) / 2, -1, 1))))
    if moved > max_distance or turned > 30.0:
        raise NeuralLabelError(
            f"the snap would move the mesh by {moved:.3g} (scene units) and turn it by {turned:.0f} degrees: the "
            f"surface near it does not match the mesh (RMS residual {result.rmse:.3g}). The mesh stays where it was; "
            "place it closer (within the search distance), raise the search distance, or check the field there")
    return {"kind": "snap", "pose": result.pose.tolist(), "fitness": result.fitness, "rmse": result.rmse,
            "iterations": result.iterations, "converged": result.converged,
            "scene_points": int(len(scene_points)), "views": int(views)}


JOBS: dict[str, Callable[[dict, EventWriter], Optional[dict]]] = {
    "bake": job_bake, "train": job_train, "preview": job_preview,
    "surface_points": job_surface_points, "snap": job_snap}


def run_job(job: dict, events: EventWriter) -> Optional[dict]:
    """Run one job in this process (also used in-process by Blender's background mode)."""
    kind = job.get("kind")
    if kind not in JOBS:
        raise NeuralLabelError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
    if job.get("field") or kind == "train" or job.get("threads"):
        import torch  # first: a worker Python without torch is told so before any other work

        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
    return JOBS[kind](job, events)


def _missing_module_message(exc: ModuleNotFoundError) -> str:
    return (f"the worker's Python ({sys.executable}) cannot import {exc.name!r}: install the dependencies "
            "(Edit > Preferences > Add-ons > NeuralLabel > Install dependencies) or set the worker Python "
            "to an environment that has them (torch, numpy, scipy, trimesh, pillow)")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python core/worker.py JOB.json", file=sys.stderr)
        return 2
    cancel = {"requested": False}

    def on_sigterm(signum, frame):  # stop at the next unit of work (see the module docstring)
        cancel["requested"] = True

    signal.signal(signal.SIGTERM, on_sigterm)
    events = EventWriter(sys.stdout, lambda: cancel["requested"])
    try:
        try:
            job = json.loads(Path(argv[0]).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise NeuralLabelError(f"{argv[0]}: cannot read the job ({exc})") from None
        if not isinstance(job, dict):
            raise NeuralLabelError(f"{argv[0]}: a job must be a JSON object")
        for folder in reversed(job.get("sys_path") or []):
            if folder not in sys.path:
                sys.path.insert(0, str(folder))
        if job.get("kind") == "train":  # the CLI has no cancel hook: SIGTERM interrupts it
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        result = run_job(job, events)
        # Done: a SIGTERM from now on has nothing to stop (and must not kill the exit half-way).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if result is not None:
            events.emit({"event": "result", **result})
        return 0
    except Cancelled:
        events.emit({"event": "cancelled"})
        return 130
    except NeuralLabelError as exc:
        events.emit({"event": "error", "message": str(exc), **({"field": exc.field} if exc.field else {})})
        return 2
    except ModuleNotFoundError as exc:
        events.emit({"event": "error", "message": _missing_module_message(exc)})
        return 3
    except SystemExit as exc:
        return int(exc.code or 0)
    except KeyboardInterrupt:
        events.emit({"event": "cancelled"})
        return 130
    except Exception as exc:  # a bug: the traceback goes to stderr, the message to Blender
        traceback.print_exc(file=sys.stderr)
        events.emit({"event": "error", "message": f"worker failed: {type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
