"""What the writers need besides one view's labels: the spec, dataset, categories and object models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..data.dataset import Dataset
from ..geometry.view import View
from ..spec import LabelSpec

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels


@dataclass
class ExportContext:
    spec: LabelSpec
    dataset: Dataset
    #: instance_id -> model mesh (trimesh) in the object's own frame, world units; an object without a model
    #: (a box object baked without a field, or whose box holds no surface) is absent.
    models: dict[int, Any] = field(default_factory=dict)
    #: how the COCO writer stores masks: "rle" or "polygon" (with RLE where a polygon cannot be exact)
    coco_masks: str = "rle"
    #: the BOP scene id the views go into (synthetic views get their own, e.g. 1)
    bop_scene: int = 0
    #: a view without a photo (synthetic): its RGB (H, W, 3) uint8, rendered from the field; None: no image
    rendered_rgb: Optional[Callable[[View], np.ndarray]] = None
    #: labels another camera of the bake's scene (full depth, no confidence): the BOP writer labels the pinhole
    #: camera of a distorted photo directly, so its masks and depth are not resampled; None: not available
    label_view: Optional[Callable[[View], "FrameLabels"]] = None

    def dataset_root(self) -> Path:
        """The dataset folder (absolute): image paths in the outputs are relative to it."""
        return (self.dataset.path if self.dataset.path.is_dir() else self.dataset.path.parent).resolve()

    @property
    def units_to_mm(self) -> float:
        return self.spec.units_to_mm

    def bop_scene_dir(self) -> str:
        """The BOP scene folder of the views, relative to the bake's output folder."""
        return f"bop/train/{self.bop_scene:06d}"

    def image_name(self, view: View) -> str:
        """The view's photo relative to the dataset folder (posix); a synthetic view's name (it has no file)."""
        if view.image_path is None:
            return view.name
        try:
            return view.image_path.resolve().relative_to(self.dataset_root()).as_posix()
        except ValueError:
            return view.image_path.name
