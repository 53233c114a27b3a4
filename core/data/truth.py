"""Ground truth of a generated scene (``scripts/make_scene.py``): objects, poses, boxes, true depth and ids.

Layout read here (units: metres)::

    SCENE/transforms.json         the dataset (read it with :func:`.dataset.load_transforms`)
    SCENE/gt/objects.json         {"units": "m", "objects": [{"name", "category", "category_id", "instance_id",
                                  "mesh", "pose", "box": {"pose", "size"}, "transparent"}], ...}
    SCENE/gt/depth/NNNNNN.npy     float32 z-depth along the optical axis, inf/NaN = nothing hit
    SCENE/gt/instance/NNNNNN.png  uint16 instance id at each pixel centre, 0 = floor/walls/background

``NNNNNN`` is the frame's index in transforms.json's frame list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.transforms import apply_points
from ..io.jsonfile import read_json
from ..io.meshes import load_mesh

_OBJECT_KEYS = ("name", "category", "category_id", "instance_id", "mesh", "pose", "box", "transparent")


@dataclass(frozen=True)
class TruthObject:
    name: str
    category: str
    category_id: int
    instance_id: int
    mesh_path: Path          # PLY, vertices in the object's own frame (metres)
    object_to_world: np.ndarray  # 4x4, rigid
    box_to_world: np.ndarray     # 4x4, rigid; the box is centred at its origin
    box_size: np.ndarray         # (3,) side lengths along the box axes
    transparent: bool

    def load_mesh(self):
        """The object's mesh (``trimesh.Trimesh``) in its own frame, exactly as stored (no processing)."""
        return load_mesh(self.mesh_path, what=f"object {self.name!r}: mesh")

    def world_vertices(self) -> np.ndarray:
        """(N, 3) mesh vertices in world coordinates."""
        vertices = np.asarray(self.load_mesh().vertices, dtype=np.float64)
        return apply_points(self.object_to_world, vertices)

    def box_corners(self) -> np.ndarray:
        """(8, 3) world coordinates of the enclosing box's corners."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        local = 0.5 * signs * self.box_size
        return apply_points(self.box_to_world, local)


@dataclass
class SceneTruth:
    path: Path  # the scene folder
    units: str
    objects: list[TruthObject]
    extra: dict[str, Any] = field(default_factory=dict)  # further top-level keys of objects.json

    @property
    def transforms_path(self) -> Path:
        return self.path / "transforms.json"

    def object(self, instance_id: int) -> TruthObject:
        for obj in self.objects:
            if obj.instance_id == instance_id:
                return obj
        raise NeuralLabelError(f"{self.path / 'gt' / 'objects.json'}: no object with instance id {instance_id}")

    def depth_path(self, frame_index: int) -> Path:
        return self.path / "gt" / "depth" / f"{frame_index:06d}.npy"

    def instance_path(self, frame_index: int) -> Path:
        return self.path / "gt" / "instance" / f"{frame_index:06d}.png"

    def z_depth(self, frame_index: int) -> np.ndarray:
        """(H, W) float32 true z-depth of a frame; inf/NaN where nothing was hit."""
        path = self.depth_path(frame_index)
        if not path.is_file():
            raise NeuralLabelError(f"{path}: no true depth for frame {frame_index}")
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise NeuralLabelError(f"{path}: cannot read the depth map ({exc})") from None
        if depth.ndim != 2 or depth.dtype != np.float32:
            raise NeuralLabelError(f"{path}: expected a 2-D float32 array, got {depth.dtype} {depth.shape}")
        return depth

    def instance_ids(self, frame_index: int) -> np.ndarray:
        """(H, W) uint16 true instance ids of a frame (0 = floor, walls, background)."""
        from PIL import Image

        path = self.instance_path(frame_index)
        if not path.is_file():
            raise NeuralLabelError(f"{path}: no true instance ids for frame {frame_index}")
        try:
            with Image.open(path) as image:
                ids = np.array(image)
        except OSError as exc:
            raise NeuralLabelError(f"{path}: cannot read the instance image ({exc})") from None
        if ids.ndim != 2:
            raise NeuralLabelError(f"{path}: expected a single-channel 16-bit image, got shape {ids.shape}")
        return ids.astype(np.uint16)


def _matrix(value: Any, where: str) -> np.ndarray:
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise NeuralLabelError(f"{where} must be a finite 4x4 matrix")
    return matrix


def load_scene_truth(scene_dir: str | Path) -> SceneTruth:
    """Read ``SCENE/gt/objects.json`` (a scene folder from ``scripts/make_scene.py``)."""
    scene_dir = Path(scene_dir)
    path = scene_dir / "gt" / "objects.json"
    if not path.is_file():
        raise NeuralLabelError(f"{path}: file does not exist (is {scene_dir} a generated scene?)")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise NeuralLabelError(f"{path}: expected an object with an 'objects' list")
    objects = []
    for i, entry in enumerate(data["objects"]):
        where = f"{path}: object {i}"
        if not isinstance(entry, dict):
            raise NeuralLabelError(f"{where} is not an object")
        missing = [k for k in _OBJECT_KEYS if k not in entry]
        if missing:
            raise NeuralLabelError(f"{where} lacks {', '.join(missing)}")
        box = entry["box"]
        if not isinstance(box, dict) or "pose" not in box or "size" not in box:
            raise NeuralLabelError(f"{where}: 'box' must have 'pose' and 'size'")
        size = np.asarray(box["size"], dtype=np.float64)
        if size.shape != (3,) or not np.all(size > 0):
            raise NeuralLabelError(f"{where}: box size must be 3 positive numbers")
        objects.append(TruthObject(
            name=str(entry["name"]), category=str(entry["category"]), category_id=int(entry["category_id"]),
            instance_id=int(entry["instance_id"]), mesh_path=scene_dir / str(entry["mesh"]),
            object_to_world=_matrix(entry["pose"], f"{where}: 'pose'"),
            box_to_world=_matrix(box["pose"], f"{where}: box 'pose'"), box_size=size,
            transparent=bool(entry["transparent"])))
    ids = [o.instance_id for o in objects]
    if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
        raise NeuralLabelError(f"{path}: instance ids must be unique and positive, got {ids}")
    extra = {k: v for k, v in data.items() if k not in ("units", "objects")}
    return SceneTruth(scene_dir, str(data.get("units", "m")), objects, extra)
