"""Annotations in the scene: boxes and meshes, their poses, categories and unique instance ids.

A box annotation (role BOX) is the object's local bounding box placed by ``matrix_world``: the scale becomes
the box size and never part of the pose. A mesh annotation (role MESH) is a mesh whose local vertices are
the vertices of ``mesh_path`` (its own frame), placed by ``matrix_world``. Poses are in Blender's world
frame; the root empty "NeuralLabel Scene" maps the dataset frame into it (``world_from_data``).
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix, Vector

from .scene_io import named_collection

COLLECTION_NAME = "NeuralLabel Annotations"
ANNOTATION_ROLES = ("BOX", "MESH")
SHEAR_TOLERANCE = 1e-5  # relative: a float32 world matrix without shear is far below this


def annotation_objects(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """Every annotation object in the scene, sorted by name (a stable order)."""
    return sorted((o for o in scene.objects if o.neurallabel.role in ANNOTATION_ROLES), key=lambda o: o.name)


def annotations_collection(scene: bpy.types.Scene) -> bpy.types.Collection:
    """The "NeuralLabel Annotations" collection of this scene, created and linked when missing."""
    return named_collection(scene, COLLECTION_NAME)


def next_instance_id(scene: bpy.types.Scene, exclude: bpy.types.Object | None = None) -> int:
    used = [o.neurallabel.instance_id for o in annotation_objects(scene) if o != exclude]
    return max(used, default=0) + 1


def category_id_for(scene: bpy.types.Scene, category: str, exclude: bpy.types.Object | None = None) -> int:
    """The id of ``category``: the one another annotation of that category has, or the next free one."""
    ids: dict[str, int] = {}
    for obj in annotation_objects(scene):
        a = obj.neurallabel
        if obj != exclude and a.category and a.category_id > 0:
            ids.setdefault(a.category, a.category_id)
    if category in ids:
        return ids[category]
    return max(ids.values(), default=0) + 1


def ensure_unique_instance_ids(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """Give every annotation without an id, or sharing one, a new unique instance id.

    Among objects sharing an id, the one named in ``instance_owner`` (the object the id was given to)
    keeps it: a duplicate carries its original's name there. Returns the objects whose id changed.
    Writes only values that differ, so calling it from a depsgraph handler settles at once.
    """
    changed: list[bpy.types.Object] = []
    by_id: dict[int, list[bpy.types.Object]] = {}
    for obj in annotation_objects(scene):
        by_id.setdefault(obj.neurallabel.instance_id, []).append(obj)
    next_id = max((i for i in by_id), default=0) + 1
    for instance_id, objects in sorted(by_id.items()):
        # Objects linked from a library cannot be changed: they keep their ids.
        linked = [o for o in objects if o.library is not None]
        if instance_id > 0:
            keeper = linked[0] if linked else next(
                (o for o in objects if o.neurallabel.instance_owner == o.name), objects[0])
            losers = [o for o in objects if o != keeper and o.library is None]
        else:
            keeper, losers = None, [o for o in objects if o.library is None]
        for obj in losers:
            obj.neurallabel.instance_id = next_id
            next_id += 1
            changed.append(obj)
        for obj in ([keeper] if keeper is not None and keeper.library is None else []) + losers:
            if obj.neurallabel.instance_owner != obj.name:
                obj.neurallabel.instance_owner = obj.name
    return changed


@bpy.app.handlers.persistent
def _fix_duplicate_ids(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph | None = None) -> None:
    # depsgraph_update_post: runs after duplicate (Shift+D), paste, link... Blender passes the scene.
    if scene is not None and hasattr(scene, "neurallabel"):
        ensure_unique_instance_ids(scene)


@bpy.app.handlers.persistent
def _fix_duplicate_ids_on_load(_filepath: str = "") -> None:
    for scene in bpy.data.scenes:
        ensure_unique_instance_ids(scene)


# --- poses ----------------------------------------------------------------------------------------------


def matrix_to_numpy(matrix: Matrix) -> np.ndarray:
    return np.array([list(row) for row in matrix], dtype=np.float64)


def rigid_and_scale(matrix_world: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Split a world matrix into a rigid 4x4 (rotation, translation) and the per-axis scale (3,)."""
    m = matrix_to_numpy(matrix_world)
    linear = m[:3, :3]
    scale = np.linalg.norm(linear, axis=0)
    if np.any(scale <= 0.0):
        raise ValueError("the object's scale is zero along an axis")
    rotation = linear / scale
    if np.linalg.det(rotation) < 0.0:  # a mirrored object: fold the reflection into the scale
        rotation[:, 0] *= -1.0
        scale[0] *= -1.0
    # Re-orthonormalise (float32 matrices, possible shear) with the closest rotation.
    u, _, vt = np.linalg.svd(rotation)
    rotation = u @ vt
    rigid = np.eye(4)
    rigid[:3, :3] = rotation
    rigid[:3, 3] = m[:3, 3]
    return rigid, scale


def box_pose_and_size(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """A box annotation's box-to-world pose (box centred at its origin, rigid) and size (sx, sy, sz)."""
    corners = np.array([list(c) for c in obj.bound_box], dtype=np.float64)
    local_min, local_max = corners.min(axis=0), corners.max(axis=0)
    rigid, scale = rigid_and_scale(obj.matrix_world)
    centre_local = 0.5 * (local_min + local_max)
    pose = rigid.copy()
    pose[:3, 3] = rigid[:3, :3] @ (scale * centre_local) + rigid[:3, 3]
    return pose, np.abs(scale) * (local_max - local_min)


def mesh_pose(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """A mesh annotation's object-to-world pose (rigid) and the scale its mesh file is shown at (3,)."""
    return rigid_and_scale(obj.matrix_world)


def is_sheared(obj: bpy.types.Object, rigid: np.ndarray, scale: np.ndarray) -> bool:
    """Whether ``matrix_world`` is more than ``rigid`` and a per-axis ``scale`` (a parent with non-uniform
    scale rotates it): such an object has no box or mesh pose."""
    linear = matrix_to_numpy(obj.matrix_world)[:3, :3]
    rebuilt = rigid[:3, :3] * scale[None, :]
    return np.abs(rebuilt - linear).max() > SHEAR_TOLERANCE * max(float(np.abs(scale).max()), 1e-12)


# --- creating annotations -------------------------------------------------------------------------------


def make_annotation(obj: bpy.types.Object, role: str, category: str = "",
                    scene: bpy.types.Scene | None = None) -> None:
    """Mark ``obj`` as an annotation with a fresh unique instance id (and its category's id)."""
    scene = scene or bpy.context.scene
    a = obj.neurallabel
    a.role = role
    a.instance_id = next_instance_id(scene, exclude=obj)
    a.instance_owner = obj.name
    if category:
        a.category = category  # its update sets category_id
        a.category_id = category_id_for(scene, category, exclude=obj)


def selection_bounds(objects: list[bpy.types.Object]) -> tuple[Vector, Vector] | None:
    """World-space axis-aligned bounds (min, max) of the objects' bounding boxes, None if there are none."""
    points = [obj.matrix_world @ Vector(c) for obj in objects if obj.type in {"MESH", "CURVE", "SURFACE",
                                                                                 "META", "FONT", "EMPTY"}
              for c in obj.bound_box]
    if not points:
        return None
    lo = Vector((min(p.x for p in points), min(p.y for p in points), min(p.z for p in points)))
    hi = Vector((max(p.x for p in points), max(p.y for p in points), max(p.z for p in points)))
    return lo, hi


def unit_cube_mesh(name: str) -> bpy.types.Mesh:
    """A cube of side 1 centred at its origin, so the object's scale is the box size."""
    import bmesh

    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bm.to_mesh(mesh)
    bm.free()
    return mesh


def register() -> None:
    bpy.app.handlers.depsgraph_update_post.append(_fix_duplicate_ids)
    bpy.app.handlers.load_post.append(_fix_duplicate_ids_on_load)


def unregister() -> None:
    for handlers, fn in ((bpy.app.handlers.depsgraph_update_post, _fix_duplicate_ids),
                         (bpy.app.handlers.load_post, _fix_duplicate_ids_on_load)):
        # Compare by name: re-enabling the extension imports a fresh module with new function objects.
        for h in [h for h in handlers if getattr(h, "__name__", "") == fn.__name__
                  and getattr(h, "__module__", "") == fn.__module__]:
            handlers.remove(h)
