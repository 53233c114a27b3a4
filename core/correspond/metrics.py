"""Correspondence accuracy: PCK@k (strict ``<``, as NeRF-Supervision), AEPE, and a resolution-free PCK.

Errors are end-point distances in pixels; NaN errors (no prediction) count as misses in PCK and are left out
of AEPE. Empty inputs give NaN.
"""

from __future__ import annotations

import numpy as np


def endpoint_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64), axis=-1)


def pck(errors: np.ndarray, k: float) -> float:
    """Share of errors strictly under ``k`` pixels."""
    errors = np.asarray(errors, dtype=np.float64)
    return float(np.mean(np.nan_to_num(errors, nan=np.inf) < k)) if errors.size else float("nan")


def aepe(errors: np.ndarray) -> float:
    """Average end-point error over the finite errors."""
    errors = np.asarray(errors, dtype=np.float64)
    finite = errors[np.isfinite(errors)]
    return float(finite.mean()) if finite.size else float("nan")


def pck_alpha(errors: np.ndarray, alpha: float, width: int, height: int) -> float:
    """PCK at ``alpha * max(H, W)``: the same number for a photo and its downscaled copy."""
    return pck(errors, alpha * max(width, height))
