"""What a trained head says per pixel: class probabilities, the category map, entropy and margin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..io.atomic import png_bytes, write_bytes
from ..progress import ProgressFn, report
from .head import SemanticHead, ray_logits
from .labels import VOID, label_name
from .rays import RayCache, cache_frame

#: what :func:`render_semantic` writes into its folder
SEMANTIC_OUTPUTS = ("category", "entropy", "preview")


@dataclass
class SemanticPrediction:
    """Per cached ray: ``probabilities`` (N, C), ``ids`` (N,) the most likely category id, ``category`` (N,)
    the same with ``VOID`` where the field sees no surface, ``entropy`` (N,) normalised to [0, 1] by log C,
    ``margin`` (N,) top-1 minus top-2 probability."""

    probabilities: np.ndarray
    ids: np.ndarray
    category: np.ndarray
    entropy: np.ndarray
    margin: np.ndarray


@torch.no_grad()
def predict(head: SemanticHead, cache: RayCache) -> SemanticPrediction:
    probs = torch.softmax(ray_logits(head, cache), dim=-1).numpy()
    n_classes = probs.shape[1]
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1) / max(np.log(n_classes), 1e-12)
    top = np.sort(probs, axis=1)[:, ::-1]
    margin = top[:, 0] - (top[:, 1] if n_classes > 1 else 0.0)
    ids = np.asarray(head.config.class_ids, dtype=np.int64)[probs.argmax(axis=1)]
    category = np.where(cache.has_surface, ids, VOID)
    return SemanticPrediction(probs, ids, category, np.clip(entropy, 0.0, 1.0), margin)


def preview_colours(category: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: a stable colour per category id, black where void."""
    from ..eval.inspect import colour

    rgb = np.zeros(category.shape + (3,), dtype=np.uint8)
    for value in np.unique(category):
        if value != VOID:
            rgb[category == value] = colour(int(value) + 1)  # +1: id 0 (background) gets a colour too
    return rgb


def render_semantic(field, head: SemanticHead, frames, out_dir: str | Path, *,
                    progress: Optional[ProgressFn] = None) -> list[dict]:
    """Write ``out_dir/category/NNNNNN.png`` (uint16 ids, the bake's raw/category layout; ``0xFFFF`` where
    the field sees no surface), ``entropy/NNNNNN.png`` (uint8, 255 = uniform over the classes) and
    ``preview/NNNNNN.png`` (a colour per category) for each frame; per frame its mean entropy."""
    out_dir = Path(out_dir)
    views = []
    for n, frame in enumerate(frames):
        shape = (frame.intrinsics.height, frame.intrinsics.width)
        prediction = predict(head, cache_frame(field, frame))
        category = prediction.category.reshape(shape)
        entropy = prediction.entropy.reshape(shape)
        name = label_name(frame)
        write_bytes(out_dir / "category" / name, png_bytes(category.astype(np.uint16)))
        write_bytes(out_dir / "entropy" / name, png_bytes(np.round(entropy * 255).astype(np.uint8)))
        write_bytes(out_dir / "preview" / name, png_bytes(preview_colours(category)))
        views.append({"frame": frame.index, "name": frame.name, "mean_entropy": float(entropy.mean())})
        report(progress, n + 1, len(frames), "semantic render")
    return views
