"""What the writers need besides one frame's labels: the spec, dataset, categories and object models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.dataset import Dataset, Frame
from ..spec import LabelSpec


@dataclass
class ExportContext:
    spec: LabelSpec
    dataset: Dataset
    #: category_id -> model mesh (trimesh) in the object's own frame, world units; a category without a model
    #: (a box object baked without a field) is absent.
    models: dict[int, Any] = field(default_factory=dict)

    @property
    def units_to_mm(self) -> float:
        return self.spec.units_to_mm

    def cam_to_world(self, frame: Frame) -> np.ndarray:
        return self.spec.cam_to_world(frame.cam_to_data)

    def image_name(self, frame: Frame) -> str:
        """The frame's image path relative to the dataset folder (posix)."""
        root = self.dataset.path if self.dataset.path.is_dir() else self.dataset.path.parent
        try:
            return frame.image_path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return frame.image_path.name
