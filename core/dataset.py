"""Datasets: posed photos of a scene, read from transforms.json (instant-ngp, nerfstudio, NeRF-synthetic).

A :class:`Dataset` is a list of :class:`Frame` s, each with its image file, OpenGL camera-to-world pose and
:class:`~.cameras.Intrinsics`. A frame's ``index`` is its position in the dataset's frame list: that is the
``im_id`` of every label baked for it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .cameras import Intrinsics
from .errors import NeuralLabelError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".exr")
HOLDOUT_EVERY = 8  # with no split given, every 8th frame is held out as `test` (the NeRF convention)


@dataclass
class Frame:
    index: int
    image_path: Path
    cam_to_world: np.ndarray  # 4x4, OpenGL camera axes
    intrinsics: Intrinsics
    split: str = "train"

    @property
    def name(self) -> str:
        return self.image_path.stem


@dataclass
class Dataset:
    path: Path  # the file (or folder) it was read from
    frames: list[Frame]
    aabb_scale: float = 1.0
    skipped: list[str] = field(default_factory=list)  # frames whose image file does not exist
    extra: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Frame]:
        return [f for f in self.frames if f.split == name]


_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "camera_model",
                   "k1", "k2", "k3", "k4", "p1", "p2")


def _fail(path: Path, problem: str) -> NeuralLabelError:
    return NeuralLabelError(f"{path}: {problem}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise _fail(path, "file does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise _fail(path, "not a text file") from None
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object with a 'frames' list")
    return data


def _resolve_image(root: Path, file_path: str) -> Path:
    candidate = (root / file_path)
    if candidate.suffix and candidate.exists():
        return candidate
    if not candidate.suffix or not candidate.exists():
        # NeRF-synthetic writes extension-less paths ("./train/r_0").
        for suffix in IMAGE_SUFFIXES:
            with_suffix = candidate.with_name(candidate.name + suffix)
            if with_suffix.exists():
                return with_suffix
    return candidate


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _intrinsics(source: dict, fallback: dict, image_path: Optional[Path], path: Path) -> Intrinsics:
    """Intrinsics from per-frame keys, falling back to top-level keys."""

    def get(key: str) -> Any:
        return source.get(key, fallback.get(key))

    width, height = get("w"), get("h")
    if width is None or height is None:
        if image_path is None or not image_path.exists():
            raise _fail(path, "no image size ('w', 'h') and no image to read it from")
        width, height = _image_size(image_path)
    width, height = int(round(float(width))), int(round(float(height)))
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = 0.5 * width / math.tan(0.5 * float(get("camera_angle_x")))
    if fy is None and get("camera_angle_y") is not None:
        fy = 0.5 * height / math.tan(0.5 * float(get("camera_angle_y")))
    if fx is None and fy is None:
        raise _fail(path, "no focal length: give 'fl_x' (and 'fl_y') or 'camera_angle_x'")
    fx = float(fx if fx is not None else fy)
    fy = float(fy if fy is not None else fx)
    cx = float(get("cx") if get("cx") is not None else width / 2.0)
    cy = float(get("cy") if get("cy") is not None else height / 2.0)
    model = get("camera_model") or "PINHOLE"
    model = str(model).upper()
    if model == "SIMPLE_PINHOLE":
        model = "PINHOLE"
    if model == "PINHOLE" and any(get(k) for k in ("k1", "k2", "p1", "p2")):
        model = "OPENCV"  # instant-ngp writes k1 k2 p1 p2 without naming the model
    if model == "OPENCV":
        distortion = tuple(float(get(k) or 0.0) for k in ("k1", "k2", "p1", "p2", "k3"))
        if distortion[4] == 0.0:
            distortion = distortion[:4]
    elif model == "OPENCV_FISHEYE":
        distortion = tuple(float(get(k) or 0.0) for k in ("k1", "k2", "k3", "k4"))
    elif model == "PINHOLE":
        distortion = ()
    else:
        raise _fail(path, f"camera_model {model!r} is not supported (PINHOLE, OPENCV, OPENCV_FISHEYE)")
    try:
        return Intrinsics(width, height, fx, fy, cx, cy, model, distortion)
    except NeuralLabelError as exc:
        raise _fail(path, str(exc)) from None


def _pose(frame: dict, path: Path, i: int) -> np.ndarray:
    matrix = frame.get("transform_matrix")
    try:
        pose = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        pose = None
    if pose is None or pose.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(pose)):
        raise _fail(path, f"frame {i}: 'transform_matrix' must be a finite 4x4 (or 3x4) matrix")
    if pose.shape == (3, 4):
        pose = np.vstack([pose, [0.0, 0.0, 0.0, 1.0]])
    return pose


def _frames_from(path: Path, data: dict, split: Optional[str], start: int, strict: bool,
                 skipped: list[str]) -> list[Frame]:
    frames_json = data.get("frames")
    if not isinstance(frames_json, list):
        raise _fail(path, "missing the 'frames' list")
    root = path.parent
    frames: list[Frame] = []
    for i, frame_json in enumerate(frames_json):
        if not isinstance(frame_json, dict) or "file_path" not in frame_json:
            raise _fail(path, f"frame {i} has no 'file_path'")
        image_path = _resolve_image(root, str(frame_json["file_path"]))
        pose = _pose(frame_json, path, i)
        if not image_path.exists():
            if strict:
                raise _fail(path, f"frame {i}: image {image_path} does not exist")
            skipped.append(str(frame_json["file_path"]))
            continue
        intrinsics = _intrinsics(frame_json, data, image_path, path)
        frame_split = split or frame_json.get("split")
        if frame_split is not None and frame_split not in SPLITS:
            raise _fail(path, f"frame {i}: split {frame_split!r} is not one of {', '.join(SPLITS)}")
        frames.append(Frame(start + len(frames), image_path, pose, intrinsics, frame_split or ""))
    return frames


def load_transforms(path: str | Path, downscale: float = 1.0, strict: bool = False) -> Dataset:
    """Read a transforms.json (or a folder holding it, or `transforms_{train,val,test}.json`).

    ``downscale`` (>= 1) divides the image size; intrinsics follow. With ``strict`` a frame whose image
    is missing is an error; otherwise it is skipped and listed in ``Dataset.skipped``.
    """
    path = Path(path)
    if downscale < 1.0:
        raise NeuralLabelError(f"downscale must be >= 1 (got {downscale})")
    skipped: list[str] = []
    if path.is_dir():
        single = path / "transforms.json"
        split_files = [path / f"transforms_{s}.json" for s in SPLITS]
        if single.is_file():
            path = single
        elif any(p.is_file() for p in split_files):
            frames: list[Frame] = []
            top: dict = {}
            for split, split_path in zip(SPLITS, split_files):
                if split_path.is_file():
                    data = _read_json(split_path)
                    top = top or data
                    frames += _frames_from(split_path, data, split, len(frames), strict, skipped)
            dataset = Dataset(path, frames, float(top.get("aabb_scale", 1.0)), skipped,
                              {k: v for k, v in top.items() if k != "frames" and k not in _INTRINSIC_KEYS})
            return _finish(dataset, downscale)
        else:
            raise _fail(path, "no transforms.json or transforms_{train,val,test}.json in this folder")
    data = _read_json(path)
    frames = _frames_from(path, data, None, 0, strict, skipped)
    dataset = Dataset(path, frames, float(data.get("aabb_scale", 1.0)), skipped,
                      {k: v for k, v in data.items() if k != "frames" and k not in _INTRINSIC_KEYS})
    return _finish(dataset, downscale)


def _finish(dataset: Dataset, downscale: float) -> Dataset:
    if not dataset.frames:
        raise _fail(dataset.path, "the dataset has 0 usable frames"
                    + (f" ({len(dataset.skipped)} images missing)" if dataset.skipped else ""))
    if not any(f.split for f in dataset.frames):
        for f in dataset.frames:
            f.split = "test" if f.index % HOLDOUT_EVERY == 0 else "train"
    else:
        for f in dataset.frames:
            f.split = f.split or "train"
    if downscale != 1.0:
        for f in dataset.frames:
            f.intrinsics = f.intrinsics.scaled(1.0 / downscale)
    return dataset
