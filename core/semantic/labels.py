"""Label images: uint16 category PNGs per frame, ``0xFFFF`` = unlabelled (void), ids = the spec's
``category_id`` (0 = background). A file is named like a bake's ``raw/category`` (``NNNNNN.png``, the
frame's index) or after the frame's photo (``<stem>.png``); a baked ``raw/category`` folder is valid input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import NeuralLabelError

VOID = 0xFFFF


def label_name(frame) -> str:
    """The file name a frame's label (and its rendered category map) has: the bake's ``NNNNNN.png``."""
    return f"{frame.index:06d}.png"


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            ids = np.array(image)
    except OSError as exc:
        raise NeuralLabelError(f"{path}: not a readable label image ({exc.__class__.__name__})", field="labels") from None
    if ids.ndim != 2:
        raise NeuralLabelError(f"{path}: expected a single-channel uint16 category image, got shape {ids.shape}",
                               field="labels")
    return ids.astype(np.int64)


def load_labels(labels_dir: str | Path, frames: Sequence, class_ids: Optional[Sequence[int]] = None
                ) -> dict[int, np.ndarray]:
    """Frame index -> (H, W) int64 ids (``VOID`` where unlabelled) for each label PNG in ``labels_dir``.

    NeuralLabelError (field ``labels``) naming the file for: a name that is no frame of ``frames``, a size
    other than the frame's, ids outside ``class_ids`` (when given)."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise NeuralLabelError(f"{labels_dir}: not a folder of label images", field="labels")
    by_name = {}
    for frame in frames:
        by_name[label_name(frame)] = frame
        by_name.setdefault(f"{frame.name}.png", frame)
    known = None if class_ids is None else set(int(c) for c in class_ids) | {VOID}
    labels: dict[int, np.ndarray] = {}
    for path in sorted(labels_dir.glob("*.png")):
        frame = by_name.get(path.name)
        if frame is None:
            raise NeuralLabelError(f"{path}: no frame of this dataset is called that (name label images "
                                   "NNNNNN.png by frame index, or after the photo)", field="labels")
        ids = read_label_png(path)
        size = (frame.intrinsics.height, frame.intrinsics.width)
        if ids.shape != size:
            raise NeuralLabelError(f"{path}: the label image is {ids.shape[1]}x{ids.shape[0]} but frame "
                                   f"{frame.index} is {size[1]}x{size[0]}", field="labels")
        if known is not None:
            unknown = sorted(set(np.unique(ids).tolist()) - known)
            if unknown:
                raise NeuralLabelError(f"{path}: category ids {unknown[:5]} are not in the class table "
                                       f"{sorted(known - {VOID})}", field="labels")
        labels[frame.index] = ids
    return labels


def class_table(labels: dict[int, np.ndarray], class_ids: Optional[Sequence[int]] = None
                ) -> tuple[list[int], list[int]]:
    """The class table (``class_ids`` or the ids the labels use) and the classes with no labelled pixel."""
    used = set()
    for ids in labels.values():
        used |= set(np.unique(ids).tolist())
    used.discard(VOID)
    table = sorted(int(c) for c in class_ids) if class_ids is not None else sorted(used)
    return table, [c for c in table if c not in used]


def ray_targets(cache, labels: dict[int, np.ndarray], class_ids: Sequence[int]) -> np.ndarray:
    """(N,) class index (into ``class_ids``) of each cached ray; -1 where unlabelled or no label image."""
    lookup = {int(c): i for i, c in enumerate(class_ids)}
    target = np.full(cache.n_rays, -1, dtype=np.int64)
    for index, ids in labels.items():
        rays = np.nonzero(cache.frame == index)[0]
        if len(rays) == 0:
            continue
        values = ids[cache.y[rays], cache.x[rays]]
        mapped = np.array([lookup.get(int(v), -1) for v in np.unique(values)])
        target[rays] = mapped[np.searchsorted(np.unique(values), values)]
    return target
