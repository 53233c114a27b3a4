"""Blender meshes -> arrays and PLY files: what the spec export and the snap send to core.

A mesh annotation's geometry is its evaluated mesh (modifiers applied) in its own frame, the object's scale
applied to the vertices (the pose stays rigid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from ..core.errors import NeuralLabelError
from ..core.io.atomic import write_bytes

SAME_GEOMETRY_ATOL = 1e-7  # vertices (scene units) closer than this are one geometry (float32 round trips)


@dataclass
class MeshGeometry:
    vertices: np.ndarray  # (V,3) float64, the object's own frame with its scale applied
    faces: np.ndarray  # (F,3) int


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


def same_geometry(a: MeshGeometry, b: MeshGeometry) -> bool:
    return (a.vertices.shape == b.vertices.shape and a.faces.shape == b.faces.shape
            and np.array_equal(a.faces, b.faces)
            and np.allclose(a.vertices, b.vertices, rtol=0, atol=SAME_GEOMETRY_ATOL))


def ply_bytes(geometry: MeshGeometry) -> bytes:
    """A binary little-endian PLY (float32 vertices, triangle faces)."""
    vertices = geometry.vertices.astype("<f4")
    faces = np.empty(len(geometry.faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    faces["n"] = 3
    faces["v"] = geometry.faces
    header = ("ply\nformat binary_little_endian 1.0\ncomment NeuralLabel annotation mesh (own frame)\n"
              f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    return header.encode("ascii") + vertices.tobytes() + faces.tobytes()


def write_ply(path: Path, geometry: MeshGeometry) -> Path:
    """Write ``geometry`` as a PLY file, atomically."""
    return write_bytes(path, ply_bytes(geometry))
