"""Semantic-NeRF's scores: per-class IoU from a confusion matrix, mIoU = nan-mean over the classes present
in the truth (a class absent from the truth neither helps nor hurts)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .labels import VOID


def confusion(truth: np.ndarray, predicted: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """(C, C) counts [true class, predicted class] over pixels whose truth is a class of ``class_ids``
    (void and unknown truth ignored; a prediction outside the table counts as wrong)."""
    ids = np.asarray(class_ids, dtype=np.int64)
    truth, predicted = np.asarray(truth).ravel().astype(np.int64), np.asarray(predicted).ravel().astype(np.int64)
    t = np.searchsorted(ids, truth).clip(0, len(ids) - 1)
    p = np.searchsorted(ids, predicted).clip(0, len(ids) - 1)
    valid = (ids[t] == truth) & (truth != VOID)
    p_known = ids[p] == predicted
    n = len(ids)
    matrix = np.bincount(t[valid & p_known] * n + p[valid & p_known], minlength=n * n).reshape(n, n)
    # a wrong id outside the table still costs its true class a miss
    missed = np.bincount(t[valid & ~p_known], minlength=n)
    return np.concatenate([matrix, missed[:, None]], axis=1)


def mean_iou(matrix: np.ndarray) -> float:
    """nan-mean IoU over the classes with truth pixels (NaN when there is none)."""
    n = matrix.shape[0]
    tp = np.diag(matrix[:, :n]).astype(np.float64)
    truth = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix[:, :n].sum(axis=0).astype(np.float64)
    present = truth > 0
    if not present.any():
        return float("nan")
    iou = tp[present] / (truth[present] + predicted[present] - tp[present])
    return float(np.mean(iou))


def miou(truth: np.ndarray, predicted: np.ndarray, class_ids: Sequence[int]) -> float:
    return mean_iou(confusion(truth, predicted, sorted(class_ids)))
