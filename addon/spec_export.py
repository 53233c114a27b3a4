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

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import bpy
import numpy as np

from ..core.errors import NeuralLabelError
from ..core.spec import SPEC_VERSION, parse_spec
from . import scene_io
from .annotations import annotation_objects, box_pose_and_size, mesh_pose

SHEAR_TOLERANCE = 1e-5  # relative: a float32 world matrix without shear is far below this


@dataclass
class MeshGeometry:
    vertices: np.ndarray  # (V,3) float64, the object's own frame with its scale applied
    faces: np.ndarray  # (F,3) int


def float32_value(value: float) -> float:
    """The decimal a user typed into a float32 property (0.01, not 0.009999999776482582)."""
    return float(np.format_float_positional(np.float32(value), unique=True))


def scene_root(scene: bpy.types.Scene) -> Optional[bpy.types.Object]:
    root = scene.neurallabel.root
    if root is None:
        root = bpy.data.objects.get(scene_io.ROOT_NAME)
    return root


def world_from_data(scene: bpy.types.Scene) -> np.ndarray:
    """The root empty's world matrix (identity without a root)."""
    root = scene_root(scene)
    return scene_io.root_matrix(root) if root is not None else np.eye(4)


def _abspath(path: str) -> str:
    return str(Path(bpy.path.abspath(path)).resolve()) if path else ""


def _check_no_shear(obj: bpy.types.Object, rigid: np.ndarray, scale: np.ndarray) -> None:
    m = np.array([list(row) for row in obj.matrix_world], dtype=np.float64)[:3, :3]
    rebuilt = rigid[:3, :3] * scale[None, :]
    if np.abs(rebuilt - m).max() > SHEAR_TOLERANCE * max(float(np.abs(scale).max()), 1e-12):
        raise NeuralLabelError(
            f"annotation {obj.name!r} is sheared (a parent with non-uniform scale rotates it): apply the "
            "parent's scale (Ctrl+A > Scale) or unparent it, then export again")


def mesh_geometry(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph, scale: np.ndarray) -> MeshGeometry:
    """The object's evaluated mesh (modifiers applied) as triangles, its scale applied to the vertices."""
    if obj.type != "MESH":
        raise NeuralLabelError(f"mesh annotation {obj.name!r} is a {obj.type.lower()}, not a mesh: convert it "
                               "(Object > Convert > Mesh) or set its role to Box")
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        vertices = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", vertices)
        faces = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("vertices", faces)
    finally:
        evaluated.to_mesh_clear()
    if len(faces) == 0:
        raise NeuralLabelError(f"mesh annotation {obj.name!r} has no faces: give it a surface mesh")
    return MeshGeometry(vertices.reshape(-1, 3).astype(np.float64) * scale[None, :], faces.reshape(-1, 3))


def write_ply(path: Path, geometry: MeshGeometry) -> None:
    """A binary little-endian PLY (float32 vertices, triangle faces); temp file + rename."""
    vertices = geometry.vertices.astype("<f4")
    faces = np.empty(len(geometry.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"] = 3
    faces["v"] = geometry.faces
    header = ("ply\nformat binary_little_endian 1.0\ncomment NeuralLabel annotation mesh (own frame)\n"
              f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertices.tobytes())
        f.write(faces.tobytes())
    tmp.replace(path)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "mesh"


def _same_geometry(a: MeshGeometry, b: MeshGeometry) -> bool:
    return (a.vertices.shape == b.vertices.shape and a.faces.shape == b.faces.shape
            and np.array_equal(a.faces, b.faces) and np.allclose(a.vertices, b.vertices, rtol=0, atol=1e-7))


def build_spec(context: bpy.types.Context, spec_path: str | Path, frames: Optional[list[int]] = None
               ) -> tuple[dict, dict[str, MeshGeometry]]:
    """The spec JSON (paths relative to the spec's folder) and the mesh files it needs, checked.

    ``frames``: frame indices the spec lists; default None (all). The scene's frame range is not written
    into the spec: the bake takes it as its ``--frames A:B`` argument, so ranges baked one after another into
    one folder make one dataset (the spec, and so the folder's fingerprint, stays the same).
    """
    scene = context.scene
    props = scene.neurallabel
    spec_dir = Path(spec_path).resolve().parent
    data = _abspath(props.dataset_path)
    if not data:
        raise NeuralLabelError("no dataset: import one first (NeuralLabel > Scene > Import Dataset)")
    if not Path(data).exists():
        raise NeuralLabelError(f"the dataset {data} does not exist: import the dataset again or fix the path "
                               "in NeuralLabel > Scene")
    field = _abspath(props.field_path) or None
    if field is not None and not Path(field).exists():
        raise NeuralLabelError(f"the field {field} does not exist: load a field again (NeuralLabel > Field) "
                               "or clear the path to bake mesh-only labels")
    objects = annotation_objects(scene)
    if not objects:
        raise NeuralLabelError("no annotations: add a box or a mesh (NeuralLabel > Annotations) first")
    by_instance: dict[int, bpy.types.Object] = {}
    for obj in objects:
        a = obj.neurallabel
        if not a.category.strip():
            raise NeuralLabelError(f"annotation {obj.name!r} has no category: type one in NeuralLabel > "
                                   "Annotations (e.g. 'mug')")
        if a.category_id < 1:
            raise NeuralLabelError(f"annotation {obj.name!r} has category id 0: set a category id of 1 or more")
        if a.instance_id < 1:
            raise NeuralLabelError(f"annotation {obj.name!r} has instance id 0: set an instance id of 1 or more")
        other = by_instance.setdefault(a.instance_id, obj)
        if other is not obj:
            raise NeuralLabelError(f"annotations {other.name!r} and {obj.name!r} share instance id "
                                   f"{a.instance_id}: give one of them another id in NeuralLabel > Annotations")

    depsgraph = context.evaluated_depsgraph_get()
    meshes: dict[str, MeshGeometry] = {}
    mesh_of_category: dict[int, tuple[str, bpy.types.Object]] = {}
    objects_json = []
    for obj in objects:
        a = obj.neurallabel
        entry = {"name": obj.name, "category": a.category.strip(), "category_id": int(a.category_id),
                 "instance_id": int(a.instance_id)}
        try:
            if a.role == "BOX":
                pose, size = box_pose_and_size(obj)
                rigid, scale = mesh_pose(obj)
                _check_no_shear(obj, rigid, scale)
                if not np.all(size > 0):
                    raise NeuralLabelError(f"box {obj.name!r} is flat (size {np.round(size, 6).tolist()}): "
                                           "give it a size along every axis")
                entry.update(kind="box", pose=pose.tolist(), size=[float(s) for s in size])
            else:
                pose, scale = mesh_pose(obj)
                _check_no_shear(obj, pose, scale)
                geometry = mesh_geometry(obj, depsgraph, scale)
                if a.category_id in mesh_of_category:
                    relpath, first = mesh_of_category[a.category_id]
                    if not _same_geometry(meshes[relpath], geometry):
                        raise NeuralLabelError(
                            f"{first.name!r} and {obj.name!r} have category {a.category!r} but different meshes "
                            "(or scales): BOP names models by category, so give one of them another category")
                else:
                    relpath = f"meshes/{_safe_name(a.category)}-{a.category_id}.ply"
                    meshes[relpath] = geometry
                    mesh_of_category[a.category_id] = (relpath, obj)
                entry.update(kind="mesh", mesh=relpath, pose=pose.tolist())
        except ValueError as exc:  # annotations.rigid_and_scale: a zero scale
            raise NeuralLabelError(f"annotation {obj.name!r}: {exc}; give it a non-zero scale") from None
        entry["transparent"] = bool(a.transparent)
        objects_json.append(entry)

    root_matrix = world_from_data(scene)
    linear = root_matrix[:3, :3]
    root_scale = float(np.cbrt(abs(np.linalg.det(linear)))) if np.linalg.det(linear) > 0 else 0.0
    if root_scale <= 0 or np.abs(linear.T @ linear / root_scale**2 - np.eye(3)).max() > SHEAR_TOLERANCE:
        raise NeuralLabelError(f"the root empty {scene_io.ROOT_NAME!r} must be moved, rotated and scaled "
                               "uniformly only (no mirror, one scale on all axes): fix its scale in the N panel")
    spec = {"neurallabel_spec": SPEC_VERSION, "data": data, "field": field,
            "world_from_data": root_matrix.tolist(),
            "units_to_mm": 1000.0 * float32_value(scene.unit_settings.scale_length),
            "frames": frames, "objects": objects_json}
    _validate(spec, spec_dir)
    return spec, meshes


def _validate(spec: dict, spec_dir: Path) -> None:
    """The engine's own validator, run before anything is written.

    The mesh files do not exist yet, and parse_spec wants existing files: the copy it checks names this
    module's file instead (the geometry and the one-mesh-per-category rule were checked above).
    """
    checked = json.loads(json.dumps(spec))
    for obj in checked["objects"]:
        if obj["kind"] == "mesh":
            obj["mesh"] = str(Path(__file__).resolve())  # any existing file: the geometry is checked above
    parse_spec(checked, spec_dir, source="exported label spec", load_meshes=False, check_frames=False)


def export_spec(context: bpy.types.Context, spec_path: str | Path, frames: Optional[list[int]] = None) -> Path:
    """Write the label spec and its meshes; returns the spec's path."""
    spec_path = Path(bpy.path.abspath(str(spec_path))).resolve()
    spec, meshes = build_spec(context, spec_path, frames)
    for relpath, geometry in meshes.items():
        write_ply(spec_path.parent / relpath, geometry)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec_path.with_name(spec_path.name + ".tmp")
    tmp.write_text(json.dumps(spec, indent=1))
    tmp.replace(spec_path)
    return spec_path
