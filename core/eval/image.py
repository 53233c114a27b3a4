"""Image quality: PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), and the
pictures that show it: a truth | render | error strip."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(prediction: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1]."""
    mse = float(np.mean((np.asarray(prediction, np.float64) - np.asarray(target, np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(prediction: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two (H, W) or (H, W, C) images, channels averaged (valid windows only,
    like scikit-image's ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``)."""
    a = torch.as_tensor(np.asarray(prediction, np.float64))
    b = torch.as_tensor(np.asarray(target, np.float64))
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 2:
        a, b = a[..., None], b[..., None]
    channels = a.shape[-1]
    a = a.permute(2, 0, 1)[:, None]  # (C, 1, H, W)
    b = b.permute(2, 0, 1)[:, None]
    window = _gaussian_window()[None, None]
    if a.shape[-1] < 11 or a.shape[-2] < 11:
        raise ValueError("ssim: images must be at least 11x11 pixels")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = F.conv2d(a, window), F.conv2d(b, window)
    var_a = F.conv2d(a * a, window) - mu_a ** 2
    var_b = F.conv2d(b * b, window) - mu_b ** 2
    cov = F.conv2d(a * b, window) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.reshape(channels, -1).mean())


#: the error picture's full scale: a mean absolute difference of a quarter of the range (or more) is brightest
ERROR_FULL_SCALE = 0.25


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] (clipped) as uint8."""
    return np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255).astype(np.uint8)


def error_colours(prediction: np.ndarray, target: np.ndarray, full_scale: float = ERROR_FULL_SCALE) -> np.ndarray:
    """The per-pixel absolute difference of two (H, W, 3) images in [0, 1] (mean over channels) as RGB uint8:
    OpenCV's inferno colour map from black (equal) to pale yellow (``full_scale`` or more). A fixed scale, so
    the pictures of different views compare."""
    import cv2

    error = np.abs(np.asarray(prediction, np.float64) - np.asarray(target, np.float64)).mean(axis=-1)
    level = np.round(np.clip(error / full_scale, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(level, cv2.COLORMAP_INFERNO)[:, :, ::-1].copy()


def comparison_strip(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """truth | render | error side by side (RGB uint8, 3 W wide) of two (H, W, 3) images in [0, 1]."""
    return np.hstack([to_uint8(target), to_uint8(prediction), error_colours(prediction, target)])
