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
that size. Frames whose image file is missing are skipped and listed in ``Dataset.skipped`` (``strict``
refuses them instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..geometry.cameras import Intrinsics
from .colmap import SparsePoints
from ..errors import NeuralLabelError
from ..io.jsonfile import read_json

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
    path: Path  # the file (or folder) it was read from
    frames: list[Frame]
    aabb_scale: float = 1.0
    skipped: list[str] = field(default_factory=list)  # frames whose image file does not exist
    extra: dict[str, Any] = field(default_factory=dict)
    form: str = "transforms"  # "transforms", "transforms_splits" or "colmap"
    downscale: float = 1.0

    def split(self, name: str) -> list[Frame]:
        return [f for f in self.frames if f.split == name]

    def skipped_summary(self) -> Optional[str]:
        """One line for the command line saying which frames were skipped (missing images), or None."""
        if not self.skipped:
            return None
        shown = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
        return (f"{self.path}: skipped {len(self.skipped)} of {len(self.skipped) + len(self.frames)} frames "
                f"whose image is missing ({shown})")


_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "camera_model",
                   "k1", "k2", "k3", "k4", "p1", "p2", "is_fisheye")
_SPLIT_LIST_KEYS = {"train_filenames": "train", "val_filenames": "val", "test_filenames": "test"}


def _fail(path: Path, problem: str) -> NeuralLabelError:
    return NeuralLabelError(f"{path}: {problem}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise _fail(path, "file does not exist")
    data = read_json(path)
    if not isinstance(data, dict):
        raise _fail(path, "expected a JSON object with a 'frames' list")
    return data


def _resolve_image(root: Path, file_path: str) -> Path:
    candidate = (root / file_path)
    if candidate.suffix and candidate.exists():
        return candidate
    # NeRF-synthetic writes extension-less paths ("./train/r_0").
    for suffix in IMAGE_SUFFIXES:
        with_suffix = candidate.with_name(candidate.name + suffix)
        if with_suffix.exists():
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

    width, height = get("w"), get("h")
    try:
        if width is None or height is None:
            width, height = file_size
        width, height = int(round(float(width))), int(round(float(height)))
        if (width, height) != tuple(file_size):
            raise _fail(path, f"frame {i}: the image is {file_size[0]}x{file_size[1]} but the camera says "
                              f"{width}x{height} (images of mixed sizes are not supported)")
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
        model = str(get("camera_model") or "PINHOLE").upper()
        if get("is_fisheye"):
            model = "OPENCV_FISHEYE"  # instant-ngp's colmap2nerf marks fisheye cameras this way
        if model == "SIMPLE_PINHOLE":
            model = "PINHOLE"
        if model == "PINHOLE" and any(get(k) for k in ("k1", "k2", "p1", "p2", "k3")):
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
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"frame {i}: bad camera value ({exc})") from None
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
            out[_norm(str(name))] = split
    return out


def _norm(file_path: str) -> str:
    return Path(file_path).as_posix().removeprefix("./")


def _frames_from(path: Path, data: dict, split: Optional[str], start: int, strict: bool,
                 skipped: list[str]) -> list[Frame]:
    frames_json = data.get("frames")
    if not isinstance(frames_json, list):
        raise _fail(path, "missing the 'frames' list")
    root = path.parent
    split_of = _split_lists(data, path)
    frames: list[Frame] = []
    for i, frame_json in enumerate(frames_json):
        if not isinstance(frame_json, dict) or "file_path" not in frame_json:
            raise _fail(path, f"frame {i} has no 'file_path'")
        file_path = str(frame_json["file_path"])
        image_path = _resolve_image(root, file_path)
        pose = _pose(frame_json, path, i)
        if not image_path.is_file():
            if strict:
                raise _fail(path, f"frame {i}: image {image_path} does not exist")
            skipped.append(file_path)
            continue
        intrinsics = _intrinsics(frame_json, data, image_size(image_path), path, i)
        frame_split = split or frame_json.get("split") or split_of.get(_norm(file_path))
        if frame_split is not None and frame_split not in SPLITS:
            raise _fail(path, f"frame {i}: split {frame_split!r} is not one of {', '.join(SPLITS)}")
        frames.append(Frame(start + len(frames), image_path, pose, intrinsics, frame_split or "", file_path,
                            (intrinsics.width, intrinsics.height)))
    _check_shared_size(path, data, frames_json, frames)
    return frames


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
            dataset = Dataset(path, frames, _aabb_scale(top, path), skipped, _extra(top), "transforms_splits")
            return _finish(dataset, downscale)
        else:
            raise _fail(path, "no transforms.json or transforms_{train,val,test}.json in this folder")
    data = _read_json(path)
    frames = _frames_from(path, data, None, 0, strict, skipped)
    dataset = Dataset(path, frames, _aabb_scale(data, path), skipped, _extra(data), "transforms")
    return _finish(dataset, downscale)


def _aabb_scale(data: dict, path: Path) -> float:
    try:
        value = float(data.get("aabb_scale", 1.0))
    except (TypeError, ValueError):
        raise _fail(path, f"'aabb_scale' must be a number, got {data.get('aabb_scale')!r}") from None
    if not value > 0:
        raise _fail(path, f"'aabb_scale' must be positive, got {value}")
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
    frames: list[Frame] = []
    intrinsics_of: dict[int, Intrinsics] = {}
    for image in images:
        image_path = images_dir / image.name
        if not image_path.is_file():
            if strict:
                raise _fail(model_dir, f"image {image_path} does not exist")
            skipped.append(image.name)
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
        frames.append(Frame(len(frames), image_path, cam_to_world, intrinsics, "", image.name, file_size))
    extra = {"colmap_model": str(model_dir), "colmap_image_ids": [im.image_id for im in images
                                                                 if im.name not in skipped]}
    dataset = Dataset(model_dir, frames, 1.0, skipped, extra, "colmap")
    return _finish(dataset, downscale)


# --- one entry point ---------------------------------------------------------------------------------------


def load_dataset(path: str | Path, downscale: float = 1.0, strict: bool = False) -> Dataset:
    """Load any supported dataset form from a file or folder (see the module docstring).

    transforms.json (or a folder with it or with ``transforms_{split}.json``) wins over a COLMAP model in the
    same folder. Raises :class:`NeuralLabelError` naming the path when nothing usable is there.
    """
    from . import colmap

    path = Path(path)
    if not path.exists():
        raise _fail(path, "does not exist")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return load_transforms(path, downscale, strict)
        if path.stem in colmap.MODEL_FILES and path.suffix in (".bin", ".txt"):
            return load_colmap(path.parent, None, downscale, strict)
        raise _fail(path, "not a transforms.json file or a COLMAP model")
    if (path / "transforms.json").is_file() or any((path / f"transforms_{s}.json").is_file() for s in SPLITS):
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
    frame_names = [_norm(str(n)) for n in arrays["frame_names"]]
    # The npz counts frames in transforms.json order; map them onto the loaded frames by file path.
    index_of = {_norm(f.file_path): f.index for f in dataset.frames}
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
    """Drop observations of frames not loaded (-1) and scale pixels from the file size to the loaded size."""
    keep = sparse.obs_frame >= 0
    obs_point, obs_frame, obs_pixel = sparse.obs_point[keep], sparse.obs_frame[keep], sparse.obs_pixel[keep]
    scale = np.ones((len(dataset.frames), 2))
    for f in dataset.frames:
        w, h = f.source_size or (f.intrinsics.width, f.intrinsics.height)
        scale[f.index] = (f.intrinsics.width / w, f.intrinsics.height / h)
    # Pixel-centre-at-0.5 coordinates scale with the image: u' = u * w'/w.
    obs_pixel = obs_pixel * scale[obs_frame]
    return SparsePoints(sparse.points, sparse.colors, sparse.errors, obs_point, obs_frame, obs_pixel)
