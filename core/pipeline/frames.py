"""Which frames a bake (or a piece of one) covers: the one grammar for ``frames`` (A:B) and ``shard`` (I/N)."""

from __future__ import annotations

from typing import Any, Optional

from ..data.dataset import Dataset
from ..errors import NeuralLabelError
from ..spec import LabelSpec


def parse_frames(value: Any) -> Optional[tuple[int, int]]:
    """``"A:B"`` (either side may be empty) or a (start, stop) pair -> (start, stop), stop exclusive."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2:
            raise NeuralLabelError(f"frames {value!r}: expected A:B (e.g. 0:100)", field="frames")
        try:
            start = int(parts[0]) if parts[0].strip() else 0
            stop = int(parts[1]) if parts[1].strip() else None
        except ValueError:
            raise NeuralLabelError(f"frames {value!r}: A and B must be integers", field="frames") from None
        return start, stop
    start, stop = value
    return int(start), (None if stop is None else int(stop))


def parse_shard(value: Any) -> Optional[tuple[int, int]]:
    """``"I/N"`` (0 <= I < N) or an (I, N) pair."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            i, n = (int(v) for v in value.split("/"))
        except ValueError:
            raise NeuralLabelError(f"shard {value!r}: expected I/N, e.g. 0/4 (I counts from 0)", field="shard") from None
    else:
        i, n = (int(v) for v in value)
    if n < 1 or not 0 <= i < n:
        raise NeuralLabelError(f"shard {i}/{n}: need N >= 1 and 0 <= I < N (I counts from 0)", field="shard")
    return i, n


def select_frames(spec: LabelSpec, dataset: Dataset, frames: Any = None, shard: Any = None) -> list[int]:
    """Frame indices to bake: the spec's frames, within ``frames`` (A:B), then every N-th from I (shard).
    NeuralLabelError (naming ``frames`` or ``shard``) when that leaves no frame: an empty bake is a mistake."""
    count = dataset.frame_count  # frame indices are positions in the dataset's list, photos missing or not
    selected = sorted(dataset.by_index) if spec.frames is None else list(spec.frames)
    bad = [i for i in selected if not 0 <= i < count]
    if bad:
        raise NeuralLabelError(f"spec frame index {bad[0]} is out of range: {dataset.path} has {count} frames")
    for i in selected:
        dataset.frame(i)  # a spec frame whose photo was skipped: one error naming the frame and why
    if not selected:
        raise NeuralLabelError(f"{dataset.path}: no frame to bake (no frame of the spec has a photo)")
    span = parse_frames(frames)
    if span is not None:
        start, stop = span
        stop = count if stop is None else stop
        if not 0 <= start < count or not start < stop <= count:
            raise NeuralLabelError(f"frames {start}:{stop} is out of range: {dataset.path} has {count} "
                                   f"frames (0..{count - 1}; B is exclusive)", field="frames")
        chosen = [i for i in selected if start <= i < stop]
        if not chosen:
            raise NeuralLabelError(f"frames {start}:{stop} selects no frame to bake: the spec's frames with a "
                                   f"photo are {_shown(selected)}", field="frames")
        selected = chosen
    part = parse_shard(shard)
    if part is not None:
        chosen = selected[part[0]::part[1]]
        if not chosen:
            raise NeuralLabelError(f"shard {part[0]}/{part[1]} selects no frame: {len(selected)} frames are "
                                   f"selected, fewer than {part[0] + 1}", field="shard")
        selected = chosen
    return selected


def _shown(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices[:8]) + (", ..." if len(indices) > 8 else "")
