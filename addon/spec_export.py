"""Scene -> label spec (DESIGN.md "Label spec"): what ``neurallabel.export_spec`` and ``neurallabel.bake`` write.

- world: Blender's world. ``world_from_data`` is the root empty "NeuralLabel Scene"'s ``matrix_world``
  (the cameras are its children at their dataset poses), ``units_to_mm`` = 1000 * the scene's unit scale.
- a BOX annotation: its local bounding box placed by ``matrix_world``; the pose is rotation + translation
  about the box centre, the scale goes into ``size``.
- a MESH annotation: its (evaluated) mesh in its own frame with the object's scale applied to the vertices,
  written to ``<spec dir>/meshes/``; the pose is ``matrix_world`` without the scale. BOP names models by
  category, so the objects of one category must share one geometry: they share one file.

Everything is checked before anything is written; a problem raises NeuralLabelError naming the object and
what to do. The scene itself is never changed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import bpy
import numpy as np

from ..core.errors import NeuralLabelError
from ..core.geometry.transforms import Similarity
from ..core.spec import LabelSpec, SpecObject, parse_spec, write_spec
from . import scene_io
from .annotations import annotation_objects, box_pose_and_size, is_sheared, mesh_pose
from .meshes import MeshGeometry, mesh_geometry, same_geometry, write_ply
from .properties import units_to_mm

MESHES_DIR = "meshes"  # the mesh annotations' files, next to the spec


def mesh_file_name(category: str, category_id: int) -> str:
    """``<category>-<id>.ply`` with the category made safe as a file name (one file per category)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", category).strip("._") or "mesh"
    return f"{safe}-{category_id}.ply"


def _check_annotation(obj: bpy.types.Object) -> None:
    """What core cannot see: a category typed with spaces only, ids never set."""
    a = obj.neurallabel
    if not a.category.strip():
        raise NeuralLabelError(f"annotation {obj.name!r} has no category: type one in NeuralLabel > "
                               "Annotations (e.g. 'mug')")
    if a.category_id < 1:
        raise NeuralLabelError(f"annotation {obj.name!r} has category id 0: set a category id of 1 or more")
    if a.instance_id < 1:
        raise NeuralLabelError(f"annotation {obj.name!r} has instance id 0: set an instance id of 1 or more")


def _rigid_pose(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """The object's rigid pose and scale (NeuralLabelError for a zero scale or a shear)."""
    try:
        rigid, scale = mesh_pose(obj)
    except ValueError as exc:  # annotations.rigid_and_scale: a zero scale
        raise NeuralLabelError(f"annotation {obj.name!r}: {exc}; give it a non-zero scale") from None
    if is_sheared(obj, rigid, scale):
        raise NeuralLabelError(
            f"annotation {obj.name!r} is sheared (a parent with non-uniform scale rotates it): apply the "
            "parent's scale (Ctrl+A > Scale) or unparent it, then export again")
    return rigid, scale


def _box_object(obj: bpy.types.Object) -> SpecObject:
    _rigid_pose(obj)
    pose, size = box_pose_and_size(obj)
    if not np.all(size > 0):
        raise NeuralLabelError(f"box {obj.name!r} is flat (size {np.round(size, 6).tolist()}): "
                               "give it a size along every axis")
    a = obj.neurallabel
    return SpecObject(obj.name, a.category.strip(), int(a.category_id), int(a.instance_id), "box", pose,
                      size=size, transparent=bool(a.transparent))


def _mesh_object(obj: bpy.types.Object, spec_dir: Path, depsgraph: bpy.types.Depsgraph,
                 meshes: dict[Path, tuple[MeshGeometry, bpy.types.Object]]) -> SpecObject:
    """A mesh annotation; its geometry joins ``meshes`` (one file per category, shared by its objects)."""
    pose, scale = _rigid_pose(obj)
    geometry = mesh_geometry(obj, depsgraph, scale)
    a = obj.neurallabel
    path = spec_dir / MESHES_DIR / mesh_file_name(a.category, a.category_id)
    if path in meshes:
        first_geometry, first = meshes[path]
        if not same_geometry(first_geometry, geometry):
            raise NeuralLabelError(
                f"{first.name!r} and {obj.name!r} have category {a.category!r} but different meshes "
                "(or scales): BOP names models by category, so give one of them another category")
    else:
        meshes[path] = (geometry, obj)
    return SpecObject(obj.name, a.category.strip(), int(a.category_id), int(a.instance_id), "mesh", pose,
                      mesh_path=path, transparent=bool(a.transparent))


def _world_from_data(scene: bpy.types.Scene) -> np.ndarray:
    try:
        return Similarity.checked(scene_io.world_from_data(scene), "world_from_data").matrix
    except NeuralLabelError:
        raise NeuralLabelError(f"the root empty {scene_io.ROOT_NAME!r} must be moved, rotated and scaled "
                               "uniformly only (no mirror, one scale on all axes): fix its scale in the N panel"
                               ) from None


def build_spec(context: bpy.types.Context, spec_path: str | Path, frames: Optional[list[int]] = None
               ) -> tuple[LabelSpec, dict[Path, MeshGeometry]]:
    """The scene's label spec and the mesh files it names (absolute paths, not written yet), checked.

    ``frames``: frame indices the spec lists; default None (all). The scene's frame range is not written
    into the spec: the bake takes it as its ``--frames A:B`` argument, so ranges baked one after another into
    one folder make one dataset (the spec, and so the folder's fingerprint, stays the same).
    """
    scene = context.scene
    props = scene.neurallabel
    spec_dir = Path(spec_path).resolve().parent
    data = scene_io.absolute_path(props.dataset_path)
    if not data:
        raise NeuralLabelError("no dataset: import one first (NeuralLabel > Scene > Import Dataset)")
    if not Path(data).exists():
        raise NeuralLabelError(f"the dataset {data} does not exist: import the dataset again or fix the path "
                               "in NeuralLabel > Scene")
    field = scene_io.absolute_path(props.field_path) or None
    if field is not None and not Path(field).exists():
        raise NeuralLabelError(f"the field {field} does not exist: load a field again (NeuralLabel > Field) "
                               "or clear the path to bake mesh-only labels")
    annotations = annotation_objects(scene)
    if not annotations:
        raise NeuralLabelError("no annotations: add a box or a mesh (NeuralLabel > Annotations) first")
    for obj in annotations:
        _check_annotation(obj)

    depsgraph = context.evaluated_depsgraph_get()
    meshes: dict[Path, tuple[MeshGeometry, bpy.types.Object]] = {}
    objects = [_box_object(obj) if obj.neurallabel.role == "BOX" else _mesh_object(obj, spec_dir, depsgraph, meshes)
               for obj in annotations]
    spec = LabelSpec(None, Path(data), None if field is None else Path(field), _world_from_data(scene),
                     units_to_mm(scene), frames, objects)
    _validate(spec, spec_dir)
    return spec, {path: geometry for path, (geometry, _) in meshes.items()}


def _validate(spec: LabelSpec, spec_dir: Path) -> None:
    """The engine's own validator (ids, categories, poses), run before anything is written.

    The mesh files do not exist yet, and parse_spec wants existing files: the copy it checks names this
    module's file instead (the geometry and the one-mesh-per-category rule were checked above).
    """
    checked = spec.to_json(None)
    for obj in checked["objects"]:
        if obj["kind"] == "mesh":
            obj["mesh"] = str(Path(__file__).resolve())  # any existing file: the geometry is checked above
    parse_spec(checked, spec_dir, source="exported label spec", load_meshes=False, check_frames=False)


def export_spec(context: bpy.types.Context, spec_path: str | Path, frames: Optional[list[int]] = None) -> Path:
    """Write the label spec and its meshes; returns the spec's path.

    Mesh paths are relative to the spec (the meshes sit next to it); the dataset and field stay absolute,
    so a spec written into an output folder still finds them when the folder moves.
    """
    spec_path = Path(bpy.path.abspath(str(spec_path))).resolve()
    spec, meshes = build_spec(context, spec_path, frames)
    for path, geometry in meshes.items():
        write_ply(path, geometry)
    return write_spec(spec, spec_path, absolute_inputs=True)
