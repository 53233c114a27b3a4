"""Datasets: posed photos of a scene, from transforms.json or a COLMAP sparse model.

Forms read by :func:`load_dataset` (it detects which one a path holds):

- transforms.json as instant-ngp and nerfstudio write it: intrinsics at the top level or per frame
  (``fl_x fl_y cx cy w h``; or NeRF-synthetic's ``camera_angle_x``), ``camera_model`` PINHOLE / OPENCV
  (``k1 k2 p1 p2 [k3]``) / OPENCV_FISHEYE (``k1..k4``; instant-ngp's ``"is_fisheye": true``), ``aabb_scale``;
  per-frame ``"split"`` keys or nerfstudio's ``train_filenames``/``val_filenames``/``test_filenames``;
- ``transforms_{train,val,test}.json`` in one folder (NeRF-synthetic, with extension-less ``file_path``
  such as ``./train/r_0``): the file names the split;
- a COLMAP sparse model (``cameras/images/points3D`` .bin or .txt) read with pycolmap, at the path or in
  ``sparse/0``; images from ``images/`` beside it (or ``images_dir``).

A :class:`Dataset` is a list of :class:`Frame` s, each with its image file, OpenGL camera-to-world pose and
:class:`~.cameras.Intrinsics`. A frame's ``index`` is its position in the dataset's frame list: that is the
``im_id`` of every label baked for it. Splits: from the file or the per-frame key; with neither, every 8th
frame (index 0, 8, 16, ...) is ``test`` and the rest ``train``.

Downscaling happens on load: ``downscale=4`` gives every frame intrinsics for an image a quarter of the
size (``Intrinsics.scaled``); :func:`neurallabel.core.io.images.load_image` then returns images of exactly
that size. Frames whose image file is missing (or is not a regular file: a folder, a FIFO, ``/dev/zero``)
are skipped and listed in ``Dataset.skipped`` (``strict`` refuses them instead). A skipped frame keeps its
index: the next frame is still the next position in the list, so ``im_id`` s never shift. Look frames up by
index with :meth:`Dataset.frame`, not ``dataset.frames[index]`` (that is the index-th *loaded* frame).

Every camera value is checked: intrinsics must be finite numbers (a NaN focal length, an Infinity width or
``camera_angle_x: 0`` is one error naming the file, frame and key) and poses must be rigid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.cameras import Intrinsics
from ..geometry.transforms import check_matrix4, check_rigid
from ..io.files import file_problem
from ..io.jsonfile import read_json
from .colmap import SparsePoints

__all__ = ["SPLITS", "HOLDOUT_EVERY", "Frame", "Dataset", "SparsePoints", "load_dataset", "load_transforms",
           "load_colmap", "load_sparse_points"]

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".exr")
HOLDOUT_EVERY = 8  # with no split given, every 8th frame is held out as `test` (the NeRF convention)


@dataclass
class Frame:
    """One posed image.

    ``intrinsics`` describe the image as it will be loaded (after the dataset's ``downscale``);
    ``source_size`` is the (width, height) of the image file itself; ``file_path`` is the path as the
    dataset file wrote it (COLMAP: the image name).
    """

    index: int
    image_path: Path
    cam_to_data: np.ndarray  # 4x4 camera-to-data pose (the dataset's own frame), OpenGL camera axes
    intrinsics: Intrinsics
    split: str = "train"
    file_path: str = ""
    source_size: Optional[tuple[int, int]] = None
    downscale: float = 1.0

    @property
    def name(self) -> str:
        return self.image_path.stem


@dataclass
class Dataset:
    """The loaded frames of a dataset. ``frames`` holds only frames whose photo is there, in index order;
    indices run over every frame the dataset lists (``0 .. frame_count - 1``), loaded or skipped."""

    path: Path  # the file (or folder) it was read from
    frames: list[Frame]
    aabb_scale: float = 1.0
    skipped: list[str] = field(default_factory=list)  # file paths of frames whose photo is missing
    extra: dict[str, Any] = field(default_factory=dict)
    form: str = "transforms"  # "transforms", "transforms_splits" or "colmap"
    downscale: float = 1.0
    #: frames the dataset lists, loaded or skipped (0 = count them: loaded + skipped)
    frame_count: int = 0
    #: index of each skipped frame -> why ("PATH does not exist", "PATH is not a regular file (a FIFO)")
    skip_reasons: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.frame_count:
            self.frame_count = len(self.frames) + len(self.skipped)
        self._by_index = {f.index: f for f in self.frames}

    def source_paths(self) -> list[Path]:
        """What the dataset was read from, for the output guards that must never write over it: its
        transforms file(s), or its COLMAP model folder (nothing may be written in or below that folder)."""
        if self.form == "colmap" or self.path.is_file():
            return [self.path]
        return sorted(self.path.glob("transforms*.json"))

    def split(self, name: str) -> list[Frame]:
        return [f for f in self.frames if f.split == name]

    @property
    def by_index(self) -> dict[int, Frame]:
        """Frame index -> loaded frame (skipped frames are absent)."""
        if len(self._by_index) != len(self.frames):  # frames was changed after loading
            self._by_index = {f.index: f for f in self.frames}
        return self._by_index

    def has_frame(self, index: int) -> bool:
        return index in self.by_index

    def skip_reason(self, index: int) -> str:
        """Why frame ``index`` is not loaded: its photo's problem, or that the dataset has no such frame."""
        if index in self.skip_reasons:
            return self.skip_reasons[index]
        if index in self.by_index:
            return "is loaded"
        return f"does not exist (the dataset has {self.frame_count} frames, 0..{self.frame_count - 1})"

    def frame(self, index: int) -> Frame:
        """The frame with ``Frame.index == index``; NeuralLabelError naming the frame when it was skipped or
        is out of range."""
        found = self.by_index.get(index)
        if found is None:
            what = "photo" if index in self.skip_reasons else "frame"
            raise NeuralLabelError(f"{self.path}: frame {index} is not loaded: its {what} {self.skip_reason(index)}")
        return found

    def skipped_summary(self) -> Optional[str]:
        """One line for the command line saying which frames were skipped (missing images), or None."""
        if not self.skipped:
            return None
        reasons = list(self.skip_reasons.values()) or self.skipped
        shown = ", ".join(reasons[:3]) + (", ..." if len(reasons) > 3 else "")
        return (f"{self.path}: skipped {len(self.skipped)} of {self.frame_count} frames "
                f"whose image is missing or unreadable ({shown})")


_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "camera_model",
                   "k1", "k2", "k3", "k4", "p1", "p2", "is_fisheye")
_SPLIT_LIST_KEYS = {"train_filenames": "train", "val_filenames": "val", "test_filenames": "test"}


def _fail(path: Path, problem: str) -> NeuralLabelError:
    return NeuralLabelError(f"{path}: {problem}")


def read_transforms_json(path: Path) -> dict:
    """A transforms file's JSON object (NeuralLabelError naming the file for anything else)."""
    data = read_json(path)  # "does not exist", or a folder, a FIFO, /dev/zero: "is not a regular file"
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object with a 'frames' list")
    return data


def resolve_image(root: Path, file_path: str) -> Path:
    candidate = (root / file_path)
    if candidate.suffix and file_problem(candidate) != "does not exist":
        return candidate
    # NeRF-synthetic writes extension-less paths ("./train/r_0").
    if candidate.name:
        for suffix in IMAGE_SUFFIXES:
            with_suffix = candidate.with_name(candidate.name + suffix)
            if file_problem(with_suffix) != "does not exist":
                return with_suffix
    return candidate


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (the pixels are not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise NeuralLabelError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _intrinsics(source: dict, fallback: dict, file_size: tuple[int, int], path: Path, i: int) -> Intrinsics:
    """Intrinsics from per-frame keys, falling back to top-level keys; the size is checked against the file."""

    def get(key: str) -> Any:
        return source.get(key, fallback.get(key))

    def number(key: str, default: Optional[float] = None, positive: bool = False) -> Optional[float]:
        """A finite number (positive if asked) under ``key``; None when absent and no default."""
        value = get(key)
        if value is None:
            return default
        try:
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or not math.isfinite(number) or (positive and not number > 0):
            shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
            raise _fail(path, f"frame {i}: '{key}' must be a finite{' positive' if positive else ''} number, "
                              f"got {shown[:40]}")
        return number

    width, height = number("w", positive=True), number("h", positive=True)
    if width is None or height is None:
        width, height = file_size
    width, height = int(round(width)), int(round(height))
    if (width, height) != tuple(file_size):
        raise _fail(path, f"frame {i}: the image is {file_size[0]}x{file_size[1]} but the camera says "
                          f"{width}x{height} (images of mixed sizes are not supported)")
    fx, fy = number("fl_x", positive=True), number("fl_y", positive=True)
    for key, size in (("camera_angle_x", width), ("camera_angle_y", height)):
        angle = number(key, positive=True)
        if angle is not None and not angle < math.pi:
            raise _fail(path, f"frame {i}: '{key}' must be a field of view in radians, 0 < angle < pi, got {angle}")
        if angle is not None and key == "camera_angle_x" and fx is None:
            fx = 0.5 * size / math.tan(0.5 * angle)
        if angle is not None and key == "camera_angle_y" and fy is None:
            fy = 0.5 * size / math.tan(0.5 * angle)
    if fx is None and fy is None:
        raise _fail(path, "no focal length: give 'fl_x' (and 'fl_y') or 'camera_angle_x'")
    fx = fx if fx is not None else fy
    fy = fy if fy is not None else fx
    cx = number("cx", width / 2.0)
    cy = number("cy", height / 2.0)
    model = str(get("camera_model") or "PINHOLE").upper()
    if get("is_fisheye"):
        model = "OPENCV_FISHEYE"  # instant-ngp's colmap2nerf marks fisheye cameras this way
    if model == "SIMPLE_PINHOLE":
        model = "PINHOLE"
    if model == "PINHOLE" and any(number(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3")):
        model = "OPENCV"  # instant-ngp writes k1 k2 p1 p2 without naming the model
    if model == "OPENCV":
        distortion = tuple(number(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3"))
        if distortion[4] == 0.0:
            distortion = distortion[:4]
    elif model == "OPENCV_FISHEYE":
        distortion = tuple(number(k, 0.0) for k in ("k1", "k2", "k3", "k4"))
    elif model == "PINHOLE":
        distortion = ()
    else:
        raise _fail(path, f"camera_model {model[:40]!r} is not supported (PINHOLE, OPENCV, OPENCV_FISHEYE)")
    try:
        return Intrinsics(width, height, fx, fy, cx, cy, model, distortion)
    except NeuralLabelError as exc:
        raise _fail(path, f"frame {i}: {exc}") from None


def _pose(frame: dict, path: Path, i: int) -> np.ndarray:
    """The frame's camera-to-data pose: a finite rigid 4x4 (or 3x4) matrix, errors naming the frame."""
    matrix = frame.get("transform_matrix")
    what = f"{path}: frame {i}: 'transform_matrix'"
    try:
        pose = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        pose = None
    if pose is None or pose.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(pose)):
        raise NeuralLabelError(f"{what} must be a finite 4x4 (or 3x4) matrix")
    if pose.shape == (3, 4):
        pose = np.vstack([pose, [0.0, 0.0, 0.0, 1.0]])
    check_matrix4(pose, what)  # the last row [0, 0, 0, 1]
    check_rigid(pose, what)  # a camera's axes are unit length and orthogonal: no scale, shear or mirror
    return pose


def _split_lists(data: dict, path: Path) -> dict[str, str]:
    """nerfstudio's ``train_filenames``/``val_filenames``/``test_filenames``: normalised file path -> split."""
    out: dict[str, str] = {}
    for key, split in _SPLIT_LIST_KEYS.items():
        names = data.get(key)
        if names is None:
            continue
        if not isinstance(names, list):
            raise _fail(path, f"'{key}' must be a list of file paths")
        for name in names:
            out[normalize_file_path(str(name))] = split
    return out


def normalize_file_path(file_path: str) -> str:
    return Path(file_path).as_posix().removeprefix("./")


def _frames_from(path: Path, data: dict, split: Optional[str], start: int, strict: bool,
                 skipped: list[str], skip_reasons: dict[int, str]) -> tuple[list[Frame], int]:
    """The loaded frames of one transforms file and how many frames it lists. A frame's index is
    ``start`` + its position in the file's list, whether or not its photo is there."""
    frames_json = data.get("frames")
    if not isinstance(frames_json, list):
        raise _fail(path, "missing the 'frames' list")
    root = path.parent
    split_of = _split_lists(data, path)
    frames: list[Frame] = []
    for i, frame_json in enumerate(frames_json):
        if not isinstance(frame_json, dict) or "file_path" not in frame_json:
            raise _fail(path, f"frame {i} has no 'file_path'")
        if not isinstance(frame_json["file_path"], str) or not frame_json["file_path"]:
            raise _fail(path, f"frame {i}: 'file_path' must be a non-empty string")
        file_path = frame_json["file_path"]
        image_path = resolve_image(root, file_path)
        pose = _pose(frame_json, path, i)
        problem = file_problem(image_path)
        if problem is not None:
            if strict:
                raise _fail(path, f"frame {i}: image {image_path} {problem}")
            skipped.append(file_path)
            skip_reasons[start + i] = f"{image_path} {problem}"
            continue
        intrinsics = _intrinsics(frame_json, data, image_size(image_path), path, i)
        frame_split = split or frame_json.get("split") or split_of.get(normalize_file_path(file_path))
        if frame_split is not None and frame_split not in SPLITS:
            raise _fail(path, f"frame {i}: split {str(frame_split)[:40]!r} is not one of {', '.join(SPLITS)}")
        frames.append(Frame(start + i, image_path, pose, intrinsics, frame_split or "", file_path,
                            (intrinsics.width, intrinsics.height)))
    _check_shared_size(path, data, frames_json, frames)
    return frames, len(frames_json)


def _check_shared_size(path: Path, data: dict, frames_json: list, frames: list[Frame]) -> None:
    """Frames that share top-level intrinsics (no per-frame w/h) must share one image size."""
    if any(isinstance(fj, dict) and ("w" in fj or "h" in fj) for fj in frames_json):
        return  # nerfstudio multi-camera: each frame declares its own size
    sizes = {f.source_size for f in frames}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise _fail(path, f"images of mixed sizes ({listed}) share one camera; give each frame its own "
                          "'w', 'h' and intrinsics, or resize the images")


def _extra(data: dict) -> dict:
    return {k: v for k, v in data.items()
            if k != "frames" and k not in _INTRINSIC_KEYS and k not in _SPLIT_LIST_KEYS}


def load_transforms(path: str | Path, downscale: float = 1.0, strict: bool = False) -> Dataset:
    """Read a transforms.json (or a folder holding it, or `transforms_{train,val,test}.json`).

    ``downscale`` (>= 1) divides the image size; intrinsics follow. With ``strict`` a frame whose image
    is missing is an error; otherwise it is skipped and listed in ``Dataset.skipped``.
    """
    path = Path(path)
    _check_downscale(downscale)
    skipped: list[str] = []
    skip_reasons: dict[int, str] = {}
    if path.is_dir():
        single = path / "transforms.json"
        split_files = [path / f"transforms_{s}.json" for s in SPLITS]
        if file_problem(single) != "does not exist":
            path = single
        elif any(file_problem(p) != "does not exist" for p in split_files):
            frames: list[Frame] = []
            top: dict = {}
            count = 0
            for split, split_path in zip(SPLITS, split_files):
                if file_problem(split_path) != "does not exist":
                    data = read_transforms_json(split_path)
                    top = top or data
                    loaded, listed = _frames_from(split_path, data, split, count, strict, skipped, skip_reasons)
                    frames += loaded
                    count += listed
            dataset = Dataset(path, frames, _aabb_scale(top, path), skipped, _extra(top), "transforms_splits",
                              frame_count=count, skip_reasons=skip_reasons)
            return _finish(dataset, downscale)
        else:
            raise _fail(path, "no transforms.json or transforms_{train,val,test}.json in this folder")
    data = read_transforms_json(path)
    frames, count = _frames_from(path, data, None, 0, strict, skipped, skip_reasons)
    dataset = Dataset(path, frames, _aabb_scale(data, path), skipped, _extra(data), "transforms",
                      frame_count=count, skip_reasons=skip_reasons)
    return _finish(dataset, downscale)


def _aabb_scale(data: dict, path: Path) -> float:
    raw = data.get("aabb_scale", 1.0)
    try:
        value = None if isinstance(raw, bool) else float(raw)
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None:
        raise _fail(path, f"'aabb_scale' must be a number, got {str(raw)[:40]!r}")
    if not (value > 0 and math.isfinite(value)):
        raise _fail(path, f"'aabb_scale' must be a finite positive number, got {value}")
    return value


def _check_downscale(downscale: float) -> None:
    if not (isinstance(downscale, (int, float)) and math.isfinite(downscale) and downscale >= 1.0):
        raise NeuralLabelError(f"downscale must be a number >= 1 (got {downscale})")


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
    dataset.downscale = float(downscale)
    for f in dataset.frames:
        f.downscale = float(downscale)
        if downscale != 1.0:
            f.intrinsics = f.intrinsics.scaled(1.0 / downscale)
    return dataset


# --- COLMAP ------------------------------------------------------------------------------------------------


def load_colmap(path: str | Path, images_dir: str | Path | None = None, downscale: float = 1.0,
                strict: bool = False) -> Dataset:
    """A COLMAP sparse model (``path`` itself or ``path/sparse/0``) as a :class:`Dataset`.

    Frames are the registered images sorted by name; poses become OpenGL camera-to-world; cameras become
    :class:`Intrinsics` (see :func:`.colmap.intrinsics_from_colmap`). ``images_dir`` defaults to the
    ``images/`` folder found beside the model. The model's points are read by :func:`load_sparse_points`.
    """
    from . import colmap

    path = Path(path)
    _check_downscale(downscale)
    model_dir = colmap.find_model_dir(path)
    if model_dir is None:
        raise _fail(path, "no COLMAP model here (cameras, images and points3D .bin or .txt)")
    reconstruction = colmap.read_model(model_dir)
    images = colmap.registered_images(reconstruction)
    if images_dir is None:
        images_dir = colmap.find_images_dir(model_dir, (im.name for im in images))
        if images_dir is None:
            raise _fail(model_dir, "cannot find the model's images (looked for an images/ folder beside the "
                                   "model and up to three levels up)")
    images_dir = Path(images_dir)
    skipped: list[str] = []
    skip_reasons: dict[int, str] = {}
    frames: list[Frame] = []
    intrinsics_of: dict[int, Intrinsics] = {}
    for index, image in enumerate(images):
        image_path = images_dir / image.name
        problem = file_problem(image_path)
        if problem is not None:
            if strict:
                raise _fail(model_dir, f"image {image_path} {problem}")
            skipped.append(image.name)
            skip_reasons[index] = f"{image_path} {problem}"
            continue
        if image.camera_id not in intrinsics_of:
            try:
                intrinsics_of[image.camera_id] = colmap.intrinsics_from_colmap(reconstruction.cameras[image.camera_id])
            except NeuralLabelError as exc:
                raise _fail(model_dir, str(exc)) from None
        intrinsics = intrinsics_of[image.camera_id]
        file_size = image_size(image_path)
        if file_size != (intrinsics.width, intrinsics.height):
            raise _fail(model_dir, f"image {image.name} is {file_size[0]}x{file_size[1]} but its COLMAP camera "
                                   f"{image.camera_id} is {intrinsics.width}x{intrinsics.height}")
        cam_to_world = colmap.cam_to_world_from_colmap(image.cam_from_world().matrix())
        frames.append(Frame(index, image_path, cam_to_world, intrinsics, "", image.name, file_size))
    # Frame index i is the i-th registered image, loaded or not.
    extra = {"colmap_model": str(model_dir), "colmap_image_ids": [im.image_id for im in images]}
    dataset = Dataset(model_dir, frames, 1.0, skipped, extra, "colmap", frame_count=len(images),
                      skip_reasons=skip_reasons)
    return _finish(dataset, downscale)


# --- one entry point ---------------------------------------------------------------------------------------


def load_dataset(path: str | Path, downscale: float = 1.0, strict: bool = False) -> Dataset:
    """Load any supported dataset form from a file or folder (see the module docstring).

    transforms.json (or a folder with it or with ``transforms_{split}.json``) wins over a COLMAP model in the
    same folder. Raises :class:`NeuralLabelError` naming the path when nothing usable is there.
    """
    from . import colmap

    path = Path(path)
    problem = file_problem(path)
    if problem == "does not exist" or (problem is not None and not path.is_dir()):
        raise _fail(path, problem)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return load_transforms(path, downscale, strict)
        if path.stem in colmap.MODEL_FILES and path.suffix in (".bin", ".txt"):
            return load_colmap(path.parent, None, downscale, strict)
        raise _fail(path, "not a transforms.json file or a COLMAP model")
    names = ["transforms.json"] + [f"transforms_{s}.json" for s in SPLITS]
    if any(file_problem(path / name) != "does not exist" for name in names):
        return load_transforms(path, downscale, strict)
    if colmap.find_model_dir(path) is not None:
        return load_colmap(path, None, downscale, strict)
    raise _fail(path, "no dataset here: expected transforms.json, transforms_{train,val,test}.json or a "
                      "COLMAP sparse model (cameras/images/points3D, maybe in sparse/0)")


# --- sparse points -----------------------------------------------------------------------------------------


def load_sparse_points(dataset: Dataset) -> Optional[SparsePoints]:
    """The SfM points of a dataset with their observations, in the dataset's frames and pixels.

    Sources: the ``"sparse_points"`` npz named in transforms.json (written by ``neurallabel sfm``), or the
    COLMAP model a dataset was loaded from. ``None`` when the dataset has none. ``obs_frame`` holds
    ``Frame.index`` values; ``obs_pixel`` is scaled to the loaded (downscaled) image size; observations in
    frames that were skipped (missing image) are dropped.
    """
    if dataset.form == "colmap":
        return _sparse_from_colmap(dataset)
    name = dataset.extra.get("sparse_points")
    if not name:
        return None
    root = dataset.path.parent if dataset.path.is_file() else dataset.path
    npz_path = root / str(name)
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise _fail(npz_path, "sparse points file named in the dataset does not exist") from None
    except (ValueError, OSError) as exc:
        raise _fail(npz_path, f"not a readable sparse points file ({exc})") from None
    needed = ("points", "colors", "errors", "obs_point", "obs_frame", "obs_pixel", "frame_names")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise _fail(npz_path, f"sparse points file lacks {', '.join(missing)}")
    frame_names = [normalize_file_path(str(n)) for n in arrays["frame_names"]]
    # The npz counts frames in transforms.json order; map them onto the loaded frames by file path.
    index_of = {normalize_file_path(f.file_path): f.index for f in dataset.frames}
    remap = np.array([index_of.get(n, -1) for n in frame_names], dtype=np.int64)
    obs_frame = arrays["obs_frame"].astype(np.int64)
    if len(obs_frame) and (obs_frame.min() < 0 or obs_frame.max() >= len(remap)):
        raise _fail(npz_path, "obs_frame refers to frames that transforms.json does not list")
    sparse = SparsePoints(arrays["points"].astype(np.float64), arrays["colors"].astype(np.uint8),
                          arrays["errors"].astype(np.float64), arrays["obs_point"].astype(np.int64),
                          remap[obs_frame], arrays["obs_pixel"].astype(np.float64))
    return _to_loaded_frames(sparse, dataset)


def _sparse_from_colmap(dataset: Dataset) -> SparsePoints:
    from . import colmap

    reconstruction = colmap.read_model(Path(dataset.extra["colmap_model"]))
    image_ids = dataset.extra["colmap_image_ids"]
    sparse = colmap.sparse_points_from_reconstruction(
        reconstruction, {image_id: i for i, image_id in enumerate(image_ids)})
    return _to_loaded_frames(sparse, dataset)


def _to_loaded_frames(sparse: SparsePoints, dataset: Dataset) -> SparsePoints:
    """Drop observations of frames not loaded (-1, or skipped) and scale pixels from the file size to the
    loaded size."""
    loaded = np.zeros(dataset.frame_count + 1, dtype=bool)  # the last slot stands for -1 (not in the dataset)
    loaded[[f.index for f in dataset.frames]] = True
    keep = loaded[sparse.obs_frame]
    obs_point, obs_frame, obs_pixel = sparse.obs_point[keep], sparse.obs_frame[keep], sparse.obs_pixel[keep]
    scale = np.ones((dataset.frame_count, 2))
    for f in dataset.frames:
        w, h = f.source_size or (f.intrinsics.width, f.intrinsics.height)
        scale[f.index] = (f.intrinsics.width / w, f.intrinsics.height / h)
    # Pixel-centre-at-0.5 coordinates scale with the image: u' = u * w'/w.
    obs_pixel = obs_pixel * scale[obs_frame]
    return SparsePoints(sparse.points, sparse.colors, sparse.errors, obs_point, obs_frame, obs_pixel)
