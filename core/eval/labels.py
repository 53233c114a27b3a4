"""Label accuracy against a generated scene's truth (Cycles' instance ids and z-depth): the one evaluator of the
demo and the benchmarks.

Per object and frame (:func:`score_objects`): the IoU of the visible mask with the true instance mask, the IoU
of their 2D boxes, and the depth error on the pixels where both say "this object" and the truth has depth
(mesh pixels), for the labels' depth and optionally the depth source's own. :func:`summarize` pools them.
Depths are in the scene's units; summaries report millimetres (``to_mm``: generated scenes are in metres).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..data.truth import SceneTruth


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; NaN when both are empty."""
    union = np.count_nonzero(a | b)
    return float("nan") if union == 0 else np.count_nonzero(a & b) / union


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the inclusive pixel boxes of two masks (1 when both are empty, 0 when one is)."""
    if not a.any() or not b.any():
        return float(a.any() == b.any())
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _mask_box(a), _mask_box(b)
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


@dataclass(frozen=True)
class ObjectScore:
    """One object in one frame."""

    frame: int
    instance_id: int
    visible_iou: float
    box_iou: float
    depth_error: np.ndarray  # |depth - true z| on the object's true visible pixels it labels (NaN: no depth)
    source_depth_error: Optional[np.ndarray] = None  # the same for the depth source's own depth


def score_objects(frame: int, instance: np.ndarray, true_instance: np.ndarray, true_z: np.ndarray,
                  instance_ids: Iterable[int], *, depth: Optional[np.ndarray] = None,
                  source_depth: Optional[np.ndarray] = None) -> list[ObjectScore]:
    """Scores of the objects ``instance_ids`` in one frame's labels (``instance`` ids, z-``depth``) against the
    truth; an object neither the labels nor the truth show is left out."""
    scores = []
    for instance_id in instance_ids:
        predicted, true = instance == instance_id, true_instance == instance_id
        if not (predicted.any() or true.any()):
            continue
        both = predicted & true & np.isfinite(true_z)
        depth_error = np.abs(depth[both] - true_z[both]) if depth is not None else np.zeros(0)
        source_error = np.abs(source_depth[both] - true_z[both]) if source_depth is not None else None
        scores.append(ObjectScore(frame, int(instance_id), mask_iou(predicted, true), box_iou(predicted, true),
                                  depth_error, source_error))
    return scores


def error_stats(errors: Sequence[np.ndarray], to_mm: float = 1000.0) -> Optional[dict]:
    """Mean, median and 95th percentile (mm) of pooled depth errors, NaN (no depth) left out and counted in
    ``no_depth_fraction``; None without a finite error."""
    pooled = np.concatenate(list(errors)) if len(errors) else np.zeros(0)
    pooled = pooled * to_mm
    finite = np.isfinite(pooled)
    if not finite.any():
        return None
    return {"mean": float(np.nanmean(pooled)), "median": float(np.nanmedian(pooled)),
            "p95": float(np.nanpercentile(pooled, 95)), "no_depth_fraction": float(np.mean(~finite))}


def summarize(scores: Sequence[ObjectScore], to_mm: float = 1000.0) -> dict:
    """Pooled scores: mean and minimum visible-mask IoU, mean box IoU, depth errors in mm (:func:`error_stats`;
    ``source_depth_error_mm`` only where the source's depth was scored)."""
    ious = [s.visible_iou for s in scores]
    sources = [s.source_depth_error for s in scores if s.source_depth_error is not None]
    return {"instances": len(scores),
            "visible_iou_mean": float(np.mean(ious)) if ious else None,
            "visible_iou_min": float(np.min(ious)) if ious else None,
            "box_iou_mean": float(np.mean([s.box_iou for s in scores])) if scores else None,
            "depth_error_mm": error_stats([s.depth_error for s in scores], to_mm),
            "source_depth_error_mm": error_stats(sources, to_mm) if sources else None}


def score_raw_bake(bake_dir: str | Path, truth: "SceneTruth",
                   instance_ids: Optional[Iterable[int]] = None) -> list[ObjectScore]:
    """Scores of every frame of a bake's raw output (``DIR/raw/instance``, ``DIR/raw/depth``) against ``truth``,
    for ``instance_ids`` (default: all of the truth's objects; pass the spec's to leave unannotated clutter out)."""
    ids = [o.instance_id for o in truth.objects] if instance_ids is None else list(instance_ids)
    scores = []
    for index, instance in _raw_frames(bake_dir):
        depth = np.load(_raw_dir(bake_dir) / "depth" / f"{index:06d}.npy")
        scores += score_objects(index, instance, truth.instance_ids(index), truth.z_depth(index), ids, depth=depth)
    return scores


def per_object(scores: Sequence[ObjectScore]) -> dict[int, dict]:
    """Per instance id: the frames it was scored in and its visible-mask IoU's mean and minimum over them."""
    by_id: dict[int, list[float]] = {}
    for s in scores:
        by_id.setdefault(s.instance_id, []).append(s.visible_iou)
    return {i: {"frames": len(v), "visible_iou_mean": float(np.mean(v)), "visible_iou_min": float(np.min(v))}
            for i, v in sorted(by_id.items())}


def occlusion_decisions(bake_dir: str | Path, truth: "SceneTruth", mesh_ids: Iterable[int]) -> dict:
    """What the depth source decided on a bake's mesh pixels (those inside a mesh object's full silhouette,
    ``DIR/raw/full``): the pixels it occluded (labelled neither with that object nor with another mesh object
    -- background, or a box object in front), and how many of those were right (the truth shows something
    other than the mesh there: clutter, a box object, background).

    Pooled over the frames (a pixel counts once, right when the truth shows none of the meshes covering it)
    and per mesh object (``per_object[id]``: its silhouette pixels, occluded, right).
    """
    from PIL import Image

    mesh_ids = sorted(set(int(i) for i in mesh_ids))
    full_dir = _raw_dir(bake_dir) / "full"
    pooled = {"mesh_pixels": 0, "occluded": 0, "right": 0}
    per: dict[int, dict] = {i: {"mesh_pixels": 0, "occluded": 0, "right": 0} for i in mesh_ids}
    for index, instance in _raw_frames(bake_dir):
        true_ids = truth.instance_ids(index)
        labelled_mesh = np.isin(instance, mesh_ids)
        covered = np.zeros(instance.shape, dtype=bool)
        shows_a_cover = np.zeros(instance.shape, dtype=bool)  # the truth shows one of the meshes covering it
        for i in mesh_ids:
            path = full_dir / f"{index:06d}_{i:06d}.png"
            if not path.is_file():
                continue  # not in this frame
            with Image.open(path) as image:
                full = np.array(image) > 0
            occluded = full & ~labelled_mesh
            right = occluded & (true_ids != i)
            for key, mask in (("mesh_pixels", full), ("occluded", occluded), ("right", right)):
                per[i][key] += int(np.count_nonzero(mask))
            covered |= full
            shows_a_cover |= full & (true_ids == i)
        occluded = covered & ~labelled_mesh
        pooled["mesh_pixels"] += int(np.count_nonzero(covered))
        pooled["occluded"] += int(np.count_nonzero(occluded))
        pooled["right"] += int(np.count_nonzero(occluded & ~shows_a_cover))
    share = lambda a, b: a / b if b else None  # noqa: E731
    return {**pooled, "occluded_share": share(pooled["occluded"], pooled["mesh_pixels"]),
            "right_share": share(pooled["right"], pooled["occluded"]), "per_object": per}


def _raw_dir(bake_dir: str | Path) -> Path:
    from ..export.raw import ROOT  # lazily: the evaluator is imported without the exporters

    return Path(bake_dir) / ROOT


def _raw_frames(bake_dir: str | Path):
    """(frame index, uint16 instance map) of every frame in a bake's raw output, in index order."""
    from PIL import Image

    raw = _raw_dir(bake_dir)
    for index in sorted(int(p.stem) for p in (raw / "instance").glob("*.png")):
        with Image.open(raw / "instance" / f"{index:06d}.png") as image:
            yield index, np.array(image)
