"""Camera models: intrinsics, lens distortion, rays and projection.

Conventions (DESIGN.md):
- camera-to-world poses are OpenGL / Blender cameras: x right, y up, z back (the camera looks along -z);
- intrinsics follow transforms.json: the centre of the top-left pixel is at (0.5, 0.5), so pixel (col, row)
  has its centre at (col + 0.5, row + 0.5); OpenCV/BOP put it at (0, 0): ``cx_opencv = cx - 0.5``;
- lens distortion acts on normalised OpenCV coordinates (x right, y down, z forward), as in COLMAP/OpenCV;
- depth is z-depth along the optical axis unless a name says ``distance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import NeuralLabelError
from .transforms import apply_directions

#: Flip between OpenGL camera axes (x right, y up, z back) and OpenCV ones (x right, y down, z forward).
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

CAMERA_MODELS = {"PINHOLE": 0, "OPENCV": 5, "OPENCV_FISHEYE": 4}  # model -> max number of parameters


@dataclass(frozen=True)
class Intrinsics:
    """A camera's intrinsics in the transforms.json pixel convention (top-left pixel centre at 0.5, 0.5).

    ``distortion`` holds (k1, k2, p1, p2[, k3]) for ``OPENCV`` and (k1, k2, k3, k4) for ``OPENCV_FISHEYE``.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "PINHOLE"
    distortion: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODELS:
            raise NeuralLabelError(
                f"camera model {self.model!r} is not supported; use one of {', '.join(CAMERA_MODELS)}"
            )
        if len(self.distortion) > CAMERA_MODELS[self.model]:
            raise NeuralLabelError(
                f"camera model {self.model} takes at most {CAMERA_MODELS[self.model]} distortion "
                f"parameters, got {len(self.distortion)}"
            )
        if self.width <= 0 or self.height <= 0 or self.fx <= 0 or self.fy <= 0:
            raise NeuralLabelError(
                f"camera intrinsics must have positive size and focal length, got "
                f"{self.width}x{self.height}, fx={self.fx}, fy={self.fy}"
            )

    @property
    def has_distortion(self) -> bool:
        return self.model != "PINHOLE" and any(abs(k) > 0.0 for k in self.distortion)

    @property
    def K(self) -> np.ndarray:
        """3x3 matrix in the transforms.json pixel convention."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def K_opencv(self) -> np.ndarray:
        """3x3 matrix in the OpenCV/BOP pixel convention (top-left pixel centre at 0, 0)."""
        K = self.K
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        return K

    def scaled(self, factor: float) -> "Intrinsics":
        """The same camera for an image resized by ``factor`` (0.25 = a quarter of the width).

        With the pixel-centre-at-0.5 convention, focal lengths and principal point scale alike.
        """
        width = int(round(self.width * factor))
        height = int(round(self.height * factor))
        sx, sy = width / self.width, height / self.height
        return replace(self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
                       cx=self.cx * sx, cy=self.cy * sy)


# --- lens distortion on normalised OpenCV coordinates ------------------------------------------------


def opencv_params(distortion: tuple[float, ...]) -> tuple[float, float, float, float, float]:
    k = list(distortion) + [0.0] * (5 - len(distortion))
    return k[0], k[1], k[2], k[3], k[4]  # k1, k2, p1, p2, k3


def fisheye_params(distortion: tuple[float, ...]) -> tuple[float, float, float, float]:
    k = list(distortion) + [0.0] * (4 - len(distortion))
    return k[0], k[1], k[2], k[3]


def distort(intrinsics: Intrinsics, xy: np.ndarray) -> np.ndarray:
    """Apply the lens model to undistorted normalised coordinates ``xy`` (N, 2) -> distorted (N, 2)."""
    xy = np.asarray(xy, dtype=np.float64)
    if not intrinsics.has_distortion:
        return xy.copy()
    x, y = xy[..., 0], xy[..., 1]
    if intrinsics.model == "OPENCV":
        k1, k2, p1, p2, k3 = opencv_params(intrinsics.distortion)
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        return np.stack([xd, yd], axis=-1)
    # OPENCV_FISHEYE: equidistant model on the angle from the axis.
    k1, k2, k3, k4 = fisheye_params(intrinsics.distortion)
    r = np.sqrt(x * x + y * y)
    theta = np.arctan(r)
    t2 = theta * theta
    theta_d = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
    return xy * scale[..., None]


def undistort(intrinsics: Intrinsics, xy_distorted: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Invert :func:`distort` by Newton's method: distorted normalised coordinates -> undistorted."""
    xy_d = np.asarray(xy_distorted, dtype=np.float64)
    if not intrinsics.has_distortion:
        return xy_d.copy()
    if intrinsics.model == "OPENCV":
        k1, k2, p1, p2, k3 = opencv_params(intrinsics.distortion)
        xy = xy_d.copy()
        for _ in range(iterations):
            x, y = xy[..., 0], xy[..., 1]
            r2 = x * x + y * y
            radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
            d_radial = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)  # d(radial)/d(r2)
            fx = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x) - xy_d[..., 0]
            fy = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y - xy_d[..., 1]
            j00 = radial + 2.0 * x * x * d_radial + 2.0 * p1 * y + 6.0 * p2 * x
            j01 = 2.0 * x * y * d_radial + 2.0 * p1 * x + 2.0 * p2 * y
            j11 = radial + 2.0 * y * y * d_radial + 6.0 * p1 * y + 2.0 * p2 * x
            det = j00 * j11 - j01 * j01
            det = np.where(np.abs(det) < 1e-12, 1e-12, det)
            xy = xy - np.stack([(j11 * fx - j01 * fy) / det, (j00 * fy - j01 * fx) / det], axis=-1)
        return xy
    k1, k2, k3, k4 = fisheye_params(intrinsics.distortion)
    r_d = np.sqrt(np.sum(xy_d * xy_d, axis=-1))
    theta = np.clip(r_d, 0.0, np.pi / 2 - 1e-6)
    for _ in range(iterations):
        t2 = theta * theta
        f = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - r_d
        df = 1.0 + t2 * (3.0 * k1 + t2 * (5.0 * k2 + t2 * (7.0 * k3 + t2 * 9.0 * k4)))
        theta = np.clip(theta - f / df, 0.0, np.pi / 2 - 1e-6)
    r = np.tan(theta)
    scale = np.where(r_d > 1e-12, r / np.maximum(r_d, 1e-12), 1.0)
    return xy_d * scale[..., None]


# --- pixels, rays and projection ----------------------------------------------------------------------


def pixel_centers(width: int, height: int) -> np.ndarray:
    """(H*W, 2) continuous pixel coordinates of every pixel centre, row-major (row 0 first)."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([cols.ravel(), rows.ravel()], axis=-1)


def camera_directions(intrinsics: Intrinsics, pixels: np.ndarray | None = None) -> np.ndarray:
    """Ray directions in OpenGL camera axes with z = -1 (so z-depth = t for these unnormalised rays).

    ``pixels`` are continuous pixel coordinates (N, 2); default: every pixel centre, row-major.
    Rays pass through the distorted camera: the pixel is undistorted before it is back-projected.
    """
    if pixels is None:
        pixels = pixel_centers(intrinsics.width, intrinsics.height)
    pixels = np.asarray(pixels, dtype=np.float64)
    xy_d = np.stack([(pixels[:, 0] - intrinsics.cx) / intrinsics.fx,
                     (pixels[:, 1] - intrinsics.cy) / intrinsics.fy], axis=-1)
    xy = undistort(intrinsics, xy_d)
    return np.stack([xy[:, 0], -xy[:, 1], -np.ones(len(xy))], axis=-1)


def camera_rays(intrinsics: Intrinsics, cam_to_world: np.ndarray, pixels: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World rays through pixel centres (or ``pixels``) of a camera.

    Returns ``origins`` (N, 3), unit ``directions`` (N, 3) and ``z_per_distance`` (N,): the z-depth reached
    per unit of distance along each ray, so ``z_depth = distance * z_per_distance``.
    """
    cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
    dirs_cam = camera_directions(intrinsics, pixels)
    norms = np.linalg.norm(dirs_cam, axis=-1)
    dirs_world = apply_directions(cam_to_world, dirs_cam)
    dirs_world /= np.linalg.norm(dirs_world, axis=-1, keepdims=True)
    origins = np.broadcast_to(cam_to_world[:3, 3], dirs_world.shape).copy()
    return origins, dirs_world, 1.0 / norms


def world_to_camera_opencv(cam_to_world: np.ndarray) -> np.ndarray:
    """4x4 ``cam_from_world`` in OpenCV camera axes from an OpenGL camera-to-world pose."""
    cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
    return OPENGL_TO_OPENCV @ np.linalg.inv(cam_to_world)


def project_points(intrinsics: Intrinsics, cam_to_world: np.ndarray, points: np.ndarray,
                   apply_distortion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N, 3) into continuous pixel coordinates (transforms.json convention).

    Returns ``pixels`` (N, 2) and ``z_depth`` (N,) (positive in front of the camera). A thin wrapper of
    :func:`.projection.project` for callers that hold an OpenGL camera pose.
    """
    from .projection import project  # projection builds on this module's lens model

    return project(intrinsics, world_to_camera_opencv(cam_to_world), points, apply_distortion)
