"""The three commands' work: train a head from label images, render it, choose the next units to label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import NeuralLabelError
from ..io.atomic import write_json
from ..progress import ProgressFn, report
from .head import HeadCheckpoint, check_head_matches, load_head, save_head
from .labels import VOID, class_table, load_labels, ray_targets
from .pool import build_pool, parse_granularity, rays_in_rects
from .rays import RayCache, cache_frame, cache_frames, load_cache, save_cache
from .state import add_round, load_state, round_rng, selected_before
from .strategies import score_pool, select_units, surface_cells
from .train import HeadTrainOptions, train_head

NoticeFn = Callable[[str], None]


def labelled_cache(field, frames, labels: dict[int, np.ndarray], *, progress: Optional[ProgressFn] = None
                   ) -> RayCache:
    """The rays of the labelled (non-void) pixels only: all training needs."""
    parts = []
    labelled_frames = [f for f in frames if f.index in labels]
    for n, frame in enumerate(labelled_frames):
        ys, xs = np.nonzero(labels[frame.index] != VOID)
        if len(xs):
            parts.append(cache_frame(field, frame, np.stack([xs, ys], axis=-1)))
        report(progress, n + 1, len(labelled_frames), "cache labelled rays")
    if not parts:
        raise NeuralLabelError("the label images hold no labelled pixel (all 0xFFFF)", field="labels")
    return RayCache.concat(parts)


def train_from_labels(field, field_fingerprint: str | None, frames, labels_dir: Path, out: Path, *,
                      class_ids: Optional[Sequence[int]] = None, options: Optional[HeadTrainOptions] = None,
                      field_path: Optional[Path] = None, notice: NoticeFn = lambda line: None,
                      progress: Optional[ProgressFn] = None) -> dict:
    labels = load_labels(labels_dir, frames, class_ids)
    if not labels:
        raise NeuralLabelError(f"{labels_dir}: no label image (NNNNNN.png) in it", field="labels")
    table, empty = class_table(labels, class_ids)
    for class_id in empty:
        notice(f"warning: class {class_id} has no labelled pixel; the head will hardly ever predict it")
    cache = labelled_cache(field, frames, labels, progress=progress)
    targets = ray_targets(cache, labels, table)
    head = train_head(cache, targets, table, options)
    info = {"field": str(field_path.resolve()) if field_path else None, "labels": str(Path(labels_dir).resolve()),
            "labelled_pixels": int((targets >= 0).sum()), "frames": sorted(labels)}
    save_head(out, head, field_fingerprint=field_fingerprint, info=info)
    return {"out": str(out), "classes": table, "empty_classes": empty, **{k: info[k] for k in ("labelled_pixels",)},
            "label_frames": len(labels)}


@dataclass
class SelectionRound:
    selected: list[dict]
    cost: int
    budget: int
    round: int
    pool_exhausted: bool


def select_next(field, field_fingerprint: str | None, frames, *, budget: int, granularity: str, strategy: str,
                seed: int, state_path: Path, out: Path, head: Optional[HeadCheckpoint] = None,
                labels: Optional[dict[int, np.ndarray]] = None, notice: NoticeFn = lambda line: None,
                progress: Optional[ProgressFn] = None, ray_cache: Optional[Path] = None,
                ray_cache_key: Optional[dict] = None) -> SelectionRound:
    """One round: choose units of the train ``frames`` for ``budget`` more labelled pixels, write them to
    ``out`` as ``[{frame, image, x, y, w, h}]`` and append the round to the state file.

    With ``ray_cache`` the frozen field's rays are kept in that file between rounds (marching every train
    pixel is most of a first round); ``ray_cache_key`` says what they were computed from."""
    grain = parse_granularity(granularity)
    state = load_state(state_path, field_fingerprint, strategy, str(grain), seed)
    key = dict(ray_cache_key or {}, frames=[[f.index, f.intrinsics.width, f.intrinsics.height] for f in frames])
    cache = load_cache(ray_cache, key) if ray_cache is not None else None
    if cache is None:
        cache = cache_frames(field, frames, progress=progress)
        if ray_cache is not None:
            save_cache(ray_cache, cache, key)
    pool = build_pool(cache, frames, grain)
    labelled = rays_in_rects(cache, selected_before(state))
    for index, ids in (labels or {}).items():
        rays = np.nonzero(cache.frame == index)[0]
        labelled[rays] |= ids[cache.y[rays], cache.x[rays]] != VOID
    entropy = margin = None
    if head is not None:
        entropy, margin = score_pool(head.head, cache, pool)
    cells = surface_cells(cache, np.asarray(field.config.roi_aabb, dtype=np.float64).reshape(6))
    selection = select_units(pool, cache, strategy, budget, labelled=labelled, cells=cells, rng=round_rng(state),
                             entropy=entropy, margin=margin)
    if selection.pool_exhausted:
        notice(f"select: the budget ({budget} pixels) is larger than the pool left to label; taking the whole "
               f"pool ({selection.cost} pixels)")
    names = {f.index: f.image_path.name for f in frames}
    rects = [pool.rect(u, names) for u in selection.units]
    # the selection first, then the state: a kill in between re-runs this very round (same seed, same units)
    write_json(out, rects)
    add_round(state_path, state, budget, selection.cost, rects)
    return SelectionRound(rects, selection.cost, budget, len(state["rounds"]), selection.pool_exhausted)


def load_checked_head(path: Path, field_fingerprint: str | None) -> HeadCheckpoint:
    head = load_head(path)
    check_head_matches(head, field_fingerprint, path)
    return head
