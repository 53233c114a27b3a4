"""COLMAP sparse models (through pycolmap) <-> NeuralLabel cameras, frames and sparse points.

COLMAP stores world-to-camera poses in OpenCV camera axes (x right, y down, z forward); NeuralLabel keeps
OpenGL camera-to-world poses (x right, y up, z back): ``cam_to_world = inv(cam_from_world) @ diag(1,-1,-1,1)``.
COLMAP's image coordinates put the centre of the top-left pixel at (0.5, 0.5), exactly like transforms.json,
so principal points and 2D observations are used as they are (no half-pixel shift).

pycolmap is imported inside the functions: ``core`` stays importable where pycolmap is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

from ..geometry.cameras import OPENGL_TO_OPENCV, Intrinsics
from ..errors import NeuralLabelError

if TYPE_CHECKING:  # pragma: no cover
    import pycolmap

MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class SparsePoints:
    """SfM points with their per-view observations (for DS-NeRF depth supervision).

    - ``points`` (P, 3) float64 world positions in the dataset's frame; ``colors`` (P, 3) uint8;
      ``errors`` (P,) mean reprojection error in pixels (of the full-resolution images);
    - one row per observation: ``obs_point`` (M,) index into ``points``, ``obs_frame`` (M,) the observing
      frame's ``Frame.index`` in the dataset, ``obs_pixel`` (M, 2) continuous pixel coordinates in that
      frame's (possibly downscaled) image, transforms.json convention (top-left pixel centre at 0.5, 0.5).
    """

    points: np.ndarray
    colors: np.ndarray
    errors: np.ndarray
    obs_point: np.ndarray
    obs_frame: np.ndarray
    obs_pixel: np.ndarray

    def __len__(self) -> int:
        return len(self.points)

    def observation_z_depth(self, frames: Sequence) -> np.ndarray:
        """(M,) z-depth of each observed point in its observing frame (``frames[i].index == i`` expected),
        the depth target of DS-NeRF."""
        from ..geometry.cameras import world_to_camera_opencv

        depth = np.empty(len(self.obs_point), dtype=np.float64)
        by_index = {f.index: f for f in frames}
        for frame_index in np.unique(self.obs_frame):
            rows = np.nonzero(self.obs_frame == frame_index)[0]
            cam_from_world = world_to_camera_opencv(by_index[int(frame_index)].cam_to_data)
            p = self.points[self.obs_point[rows]]
            depth[rows] = p @ cam_from_world[2, :3] + cam_from_world[2, 3]
        return depth


# --- cameras -----------------------------------------------------------------------------------------------


def intrinsics_from_colmap(camera: "pycolmap.Camera") -> Intrinsics:
    """A COLMAP camera as :class:`Intrinsics` (same pixel convention, same lens model on OpenCV coordinates).

    SIMPLE_RADIAL / RADIAL / FULL_OPENCV (with k4..k6 = 0) become OPENCV; SIMPLE_RADIAL_FISHEYE /
    RADIAL_FISHEYE become OPENCV_FISHEYE (COLMAP's fisheye models distort the same angle theta).
    """
    name = camera.model.name
    p = [float(v) for v in camera.params]
    w, h = int(camera.width), int(camera.height)
    if name == "SIMPLE_PINHOLE":
        return Intrinsics(w, h, p[0], p[0], p[1], p[2], "PINHOLE")
    if name == "PINHOLE":
        return Intrinsics(w, h, p[0], p[1], p[2], p[3], "PINHOLE")
    if name == "SIMPLE_RADIAL":
        return Intrinsics(w, h, p[0], p[0], p[1], p[2], "OPENCV", (p[3], 0.0, 0.0, 0.0))
    if name == "RADIAL":
        return Intrinsics(w, h, p[0], p[0], p[1], p[2], "OPENCV", (p[3], p[4], 0.0, 0.0))
    if name == "OPENCV":
        return Intrinsics(w, h, p[0], p[1], p[2], p[3], "OPENCV", tuple(p[4:8]))
    if name == "FULL_OPENCV" and all(abs(k) == 0.0 for k in p[9:12]):
        return Intrinsics(w, h, p[0], p[1], p[2], p[3], "OPENCV", tuple(p[4:9]))
    if name == "OPENCV_FISHEYE":
        return Intrinsics(w, h, p[0], p[1], p[2], p[3], "OPENCV_FISHEYE", tuple(p[4:8]))
    if name == "SIMPLE_RADIAL_FISHEYE":
        return Intrinsics(w, h, p[0], p[0], p[1], p[2], "OPENCV_FISHEYE", (p[3], 0.0, 0.0, 0.0))
    if name == "RADIAL_FISHEYE":
        return Intrinsics(w, h, p[0], p[0], p[1], p[2], "OPENCV_FISHEYE", (p[3], p[4], 0.0, 0.0))
    raise NeuralLabelError(
        f"COLMAP camera {camera.camera_id} uses model {name}, which NeuralLabel does not support; "
        "use SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE or a radial fisheye")


def cam_to_world_from_colmap(cam_from_world_3x4: np.ndarray) -> np.ndarray:
    """OpenGL 4x4 camera-to-world from COLMAP's OpenCV 3x4 world-to-camera matrix."""
    cam_from_world = np.eye(4)
    cam_from_world[:3, :] = np.asarray(cam_from_world_3x4, dtype=np.float64)
    return np.linalg.inv(cam_from_world) @ OPENGL_TO_OPENCV


def transforms_camera_keys(intrinsics: Intrinsics) -> dict:
    """transforms.json (nerfstudio) keys for one camera."""
    keys: dict = {"camera_model": intrinsics.model, "w": intrinsics.width, "h": intrinsics.height,
                  "fl_x": intrinsics.fx, "fl_y": intrinsics.fy, "cx": intrinsics.cx, "cy": intrinsics.cy}
    if intrinsics.model == "OPENCV":
        names = ("k1", "k2", "p1", "p2", "k3")
    elif intrinsics.model == "OPENCV_FISHEYE":
        names = ("k1", "k2", "k3", "k4")
    else:
        names = ()
    keys.update({n: float(v) for n, v in zip(names, intrinsics.distortion)})
    return keys


# --- models on disk ----------------------------------------------------------------------------------------


def find_model_dir(path: Path) -> Optional[Path]:
    """The folder holding ``cameras/images/points3D`` (.bin or .txt) at or under ``path`` (``sparse/0``,
    ``sparse``, ``colmap/sparse/0``, ``distorted/sparse/0``), or None."""
    for candidate in (path, path / "sparse" / "0", path / "sparse", path / "colmap" / "sparse" / "0",
                      path / "distorted" / "sparse" / "0"):
        if all((candidate / f"{n}.bin").is_file() or (candidate / f"{n}.txt").is_file() for n in MODEL_FILES):
            return candidate
    return None


def read_model(model_dir: Path) -> "pycolmap.Reconstruction":
    """Read a COLMAP sparse model (binary or text) with pycolmap; NeuralLabelError naming the folder if bad."""
    import pycolmap

    try:
        return pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError with COLMAP's check message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NeuralLabelError(f"{model_dir}: not a readable COLMAP sparse model ({first})") from None


def registered_images(reconstruction: "pycolmap.Reconstruction") -> list:
    """Registered images (with a pose), sorted by name: the frame order NeuralLabel uses."""
    images = [im for im in reconstruction.images.values() if im.has_pose]
    return sorted(images, key=lambda im: im.name)


def sparse_points_from_reconstruction(reconstruction: "pycolmap.Reconstruction",
                                      frame_of_image: dict[int, int]) -> SparsePoints:
    """All 3D points of a reconstruction and their observations in the images listed in ``frame_of_image``
    (COLMAP image id -> frame index); observations in other images are dropped, points left without any
    observation too. Pixel coordinates are COLMAP's (full resolution, pixel centre at 0.5)."""
    points, colors, errors = [], [], []
    obs_point: list[int] = []
    obs_frame: list[int] = []
    obs_pixel: list[np.ndarray] = []
    for point in reconstruction.points3D.values():
        kept = [(frame_of_image[el.image_id], el) for el in point.track.elements if el.image_id in frame_of_image]
        if not kept:
            continue
        index = len(points)
        points.append(np.asarray(point.xyz, dtype=np.float64))
        colors.append(np.asarray(point.color, dtype=np.uint8))
        errors.append(float(point.error))
        for frame_index, el in kept:
            obs_point.append(index)
            obs_frame.append(frame_index)
            obs_pixel.append(np.asarray(reconstruction.images[el.image_id].points2D[el.point2D_idx].xy))
    return SparsePoints(
        points=np.asarray(points, dtype=np.float64).reshape(-1, 3),
        colors=np.asarray(colors, dtype=np.uint8).reshape(-1, 3),
        errors=np.asarray(errors, dtype=np.float64),
        obs_point=np.asarray(obs_point, dtype=np.int64),
        obs_frame=np.asarray(obs_frame, dtype=np.int64),
        obs_pixel=np.asarray(obs_pixel, dtype=np.float64).reshape(-1, 2))


def find_images_dir(model_dir: Path, names: Iterable[str]) -> Optional[Path]:
    """Guess where a model's images are: ``images/`` beside ``sparse/``, next to the model, or one or two
    levels up. The first folder holding any of ``names`` wins."""
    names = list(names)[:5]
    candidates = [model_dir / "images", model_dir.parent / "images", model_dir.parent.parent / "images",
                  model_dir.parent.parent.parent / "images", model_dir, model_dir.parent]
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / n).is_file() for n in names):
            return candidate
    return None
