"""A ``View``: one camera to label or render -- a dataset photo, or a synthetic camera with no file.

Label math, scene queries and writers take views, never dataset frames: a view carries its pose in both
frames, computed once (``cam_to_data`` for the field, which lives in the dataset's frame, and the rigid
``cam_to_world`` for meshes, boxes, poses and every output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .cameras import Intrinsics
from .transforms import Similarity

if TYPE_CHECKING:
    from ..data.dataset import Frame


@dataclass(frozen=True)
class View:
    index: int  # the frame's position in its dataset (or the synthetic view's number): output file names
    name: str  # a human name: the photo's stem, or e.g. "synth_000012"
    intrinsics: Intrinsics
    cam_to_data: np.ndarray  # 4x4 OpenGL camera pose in the dataset's frame (the field's frame)
    cam_to_world: np.ndarray  # 4x4 rigid OpenGL camera pose in the metric world frame
    image_path: Optional[Path] = None  # the photo; None for a synthetic view
    split: str = "train"

    @property
    def width(self) -> int:
        return self.intrinsics.width

    @property
    def height(self) -> int:
        return self.intrinsics.height

    @classmethod
    def from_frame(cls, frame: "Frame", world_from_data: Similarity) -> "View":
        """The view of a dataset frame, its world pose through the spec's ``world_from_data``."""
        cam_to_data = np.asarray(frame.cam_to_data, dtype=np.float64)
        return cls(frame.index, frame.name, frame.intrinsics, cam_to_data, world_from_data.rigid_pose(cam_to_data),
                   frame.image_path, frame.split)

    @classmethod
    def synthetic(cls, index: int, intrinsics: Intrinsics, cam_to_world: np.ndarray,
                  world_from_data: Similarity, name: Optional[str] = None) -> "View":
        """A camera with no photo, placed in the world frame."""
        cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
        data_from_world = world_from_data.inverse()
        return cls(index, name or f"view_{index:06d}", intrinsics, data_from_world.rigid_pose(cam_to_world),
                   cam_to_world, None, "synthetic")


def spread_views(views: Sequence[View], count: int) -> list[View]:
    """Up to ``count`` of ``views``, evenly spread in their order (the first and the last among them)."""
    picks = sorted({int(round(x)) for x in np.linspace(0, len(views) - 1, min(len(views), count))})
    return [views[p] for p in picks]
