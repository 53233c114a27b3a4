"""The pinhole camera of a distorted photo (BOP and other pinhole formats).

A pinhole format needs images that a plain ``K [R|t]`` projection fits. OpenCV's optimal new camera matrix
(alpha 0: only valid pixels, same size) becomes the pinhole ``K``; the rotation and the optical axis stay, so
a z-depth stays the z-depth of the same camera. Labels (masks, depth) are computed in that camera directly
(:func:`pinhole_view`: no resampling, so a model vertex projects into its mask within a pixel); only the
photo's colours are resampled (:func:`remap`). Matrices here use the OpenCV pixel convention (top-left pixel
centre at 0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.cameras import Intrinsics, fisheye_params, opencv_params
from ..geometry.view import View


def cv2_distortion(intrinsics: Intrinsics) -> np.ndarray:
    """The project's lens parameters as OpenCV ``distCoeffs``: (k1, k2, p1, p2, k3) for OPENCV (cv2's own
    order), (k1, k2, k3, k4) for OPENCV_FISHEYE (cv2.fisheye's ``D``); empty for a pinhole camera."""
    if intrinsics.model == "OPENCV":
        return np.array(opencv_params(intrinsics.distortion), dtype=np.float64)
    if intrinsics.model == "OPENCV_FISHEYE":
        return np.array(fisheye_params(intrinsics.distortion), dtype=np.float64).reshape(4, 1)
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class PinholeMaps:
    """Remap tables from the pinhole image back into the distorted photo, and the pinhole ``K``."""

    K: np.ndarray  # (3, 3) new camera matrix, OpenCV pixel convention
    map_x: np.ndarray  # (H, W) float32: source column of each pinhole pixel
    map_y: np.ndarray


def pinhole_maps(intrinsics: Intrinsics) -> PinholeMaps:
    """The undistortion of ``intrinsics`` (which must have distortion) into a same-size pinhole camera."""
    import cv2

    K = intrinsics.K_opencv
    D = cv2_distortion(intrinsics)
    size = (intrinsics.width, intrinsics.height)
    eye = np.eye(3)
    if intrinsics.model == "OPENCV_FISHEYE":
        new_K = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, D, size, eye, balance=0.0)
        map_x, map_y = cv2.fisheye.initUndistortRectifyMap(K, D, eye, new_K, size, cv2.CV_32FC1)
    else:
        new_K, _ = cv2.getOptimalNewCameraMatrix(K, D, size, 0.0, size)
        map_x, map_y = cv2.initUndistortRectifyMap(K, D, eye, new_K, size, cv2.CV_32FC1)
    return PinholeMaps(np.asarray(new_K, dtype=np.float64), map_x, map_y)


def pinhole_intrinsics(intrinsics: Intrinsics, K_opencv: np.ndarray) -> Intrinsics:
    """The same-size PINHOLE camera of an OpenCV-convention ``K`` (back to the 0.5 pixel-centre convention)."""
    return Intrinsics(intrinsics.width, intrinsics.height, float(K_opencv[0, 0]), float(K_opencv[1, 1]),
                      float(K_opencv[0, 2]) + 0.5, float(K_opencv[1, 2]) + 0.5)


def pinhole_view(view: View, maps: PinholeMaps) -> View:
    """``view`` with the pinhole camera of ``maps`` (same pose, name and photo): labelling it gives the labels
    of the undistorted image."""
    return replace(view, intrinsics=pinhole_intrinsics(view.intrinsics, maps.K))


def remap(image: np.ndarray, maps: PinholeMaps, nearest: bool) -> np.ndarray:
    """``image`` (the distorted photo's grid) resampled on the pinhole grid; outside the photo: 0.

    ``nearest`` for anything that must not blend (ids), linear otherwise (colour).
    """
    import cv2

    if image.shape[:2] != maps.map_x.shape:
        raise NeuralLabelError(f"image of {image.shape[1]}x{image.shape[0]} pixels does not match the camera's "
                               f"{maps.map_x.shape[1]}x{maps.map_x.shape[0]}", field="image")
    source = image.astype(np.uint8) if image.dtype == bool else image
    out = cv2.remap(source, maps.map_x, maps.map_y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool) if image.dtype == bool else out
