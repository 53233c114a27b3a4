"""Ray casting of annotated meshes: per ray, the distance to the first hit of one object's mesh.

Two backends, one interface (:class:`MeshCaster`):
- ``embree`` (CPU): Embree through ``embreex``, the engine trimesh uses for fast ray queries (about 0.1 s for
  640x480 rays against 80 k triangles). Embree works in float32 (relative to the mesh's corner, so hit
  distances are good to ~1e-7 of the distance).
- ``torch`` (any torch device; chosen automatically on CUDA): brute-force Moeller-Trumbore of every ray
  against every triangle in float64, in bounded (rays x triangles) blocks, with exact float64 ray/plane hit
  distances. Quadratic, so it is meant for a GPU (and for cross-checking the embree path on small meshes).

Meshes are given in world coordinates; :func:`world_mesh` places an object's mesh at its pose.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.transforms import apply_points


def world_mesh(mesh, pose: np.ndarray):
    """A copy of ``mesh`` (trimesh, object frame) with vertices mapped to the world by the 4x4 ``pose``."""
    import trimesh

    vertices = apply_points(pose, np.asarray(mesh.vertices, dtype=np.float64))
    return trimesh.Trimesh(vertices, np.asarray(mesh.faces), process=False)


class MeshCaster:
    """Casts rays against each of several meshes separately (one scene per mesh).

    ``cast(k, origins, directions)`` returns ``(hit, distance)``: whether each ray hits mesh ``k`` and the
    distance along the (unit) direction to the nearest hit (``inf`` where none).
    """

    def __init__(self, meshes: Sequence, backend: str = "embree", device: str = "cpu") -> None:
        if backend not in ("embree", "torch"):
            raise NeuralLabelError(f"ray-cast backend {backend!r} is not one of embree, torch")
        self.backend = backend
        self.device = device
        self._vertices = [np.asarray(m.vertices, dtype=np.float64) for m in meshes]
        self._faces = [np.asarray(m.faces, dtype=np.int64) for m in meshes]
        for v, f in zip(self._vertices, self._faces):
            if len(f) == 0:
                raise NeuralLabelError("cannot ray-cast an empty mesh (no triangles)")
        self._scenes: list = [None] * len(meshes)
        self._origin = [v.min(axis=0) for v in self._vertices]  # float32 precision: cast relative to this
        self._torch_tris: list = [None] * len(meshes)

    def __len__(self) -> int:
        return len(self._vertices)

    def vertices(self, k: int) -> np.ndarray:
        return self._vertices[k]

    def cast(self, k: int, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        origins = np.asarray(origins, dtype=np.float64)
        directions = np.asarray(directions, dtype=np.float64)
        if len(origins) == 0:
            return np.zeros(0, bool), np.zeros(0)
        if self.backend == "embree":
            return self._cast_embree(k, origins, directions)
        tri = self._cast_torch(k, origins, directions)
        hit = tri >= 0
        distance = np.full(len(origins), np.inf)
        if np.any(hit):
            distance[hit] = _plane_distance(self._vertices[k], self._faces[k][tri[hit]], origins[hit],
                                            directions[hit])
            hit &= np.isfinite(distance)  # a degenerate (zero-area) triangle has no plane
            distance[~hit] = np.inf
        return hit, distance

    # --- embree ------------------------------------------------------------------------------------------

    def _cast_embree(self, k: int, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._scenes[k] is None:
            from embreex import rtcore_scene
            from embreex.mesh_construction import TriangleMesh

            scene = rtcore_scene.EmbreeScene()
            TriangleMesh(scene=scene, vertices=(self._vertices[k] - self._origin[k]).astype(np.float32),
                         indices=self._faces[k].astype(np.int32))
            self._scenes[k] = scene
        rel = (origins - self._origin[k]).astype(np.float32)
        out = self._scenes[k].run(rel, directions.astype(np.float32), output=1)
        hit = out["geomID"] >= 0
        # Embree's float32 hit distance: relative error ~1e-7 (0.1 um at 1 m), with the scene's origin moved
        # to the mesh's corner so that coordinates stay small.
        distance = np.where(hit, out["tfar"].astype(np.float64), np.inf)
        return hit, distance

    # --- torch -------------------------------------------------------------------------------------------

    def _cast_torch(self, k: int, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """First-hit triangle per ray by Moeller-Trumbore in float64 on ``self.device``, in chunks."""
        import torch

        if self._torch_tris[k] is None:
            tris = self._vertices[k][self._faces[k]]  # (F, 3, 3)
            self._torch_tris[k] = torch.as_tensor(tris, dtype=torch.float64, device=self.device)
        tris = self._torch_tris[k]
        v0, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
        o_all = torch.as_tensor(origins, dtype=torch.float64, device=self.device)
        d_all = torch.as_tensor(directions, dtype=torch.float64, device=self.device)
        n_faces = len(tris)
        # Keep each (rays x faces) block around 2^24 pairs so memory stays bounded on any device.
        face_chunk = max(1, min(n_faces, 1 << 14))
        ray_chunk = max(1, (1 << 24) // face_chunk)
        best_t = torch.full((len(o_all),), float("inf"), dtype=torch.float64, device=self.device)
        best_f = torch.full((len(o_all),), -1, dtype=torch.int64, device=self.device)
        for r0 in range(0, len(o_all), ray_chunk):
            o = o_all[r0:r0 + ray_chunk, None]
            d = d_all[r0:r0 + ray_chunk, None]
            for f0 in range(0, n_faces, face_chunk):
                a, b1, b2 = v0[None, f0:f0 + face_chunk], e1[None, f0:f0 + face_chunk], e2[None, f0:f0 + face_chunk]
                p = torch.cross(d.expand(-1, b2.shape[1], -1), b2.expand(d.shape[0], -1, -1), dim=-1)
                det = (b1 * p).sum(-1)
                inv = 1.0 / torch.where(det.abs() < 1e-300, torch.full_like(det, 1e-300), det)
                s = o - a
                u = (s * p).sum(-1) * inv
                q = torch.cross(s, b1.expand(s.shape[0], -1, -1), dim=-1)
                v = (d * q).sum(-1) * inv
                t = (b2 * q).sum(-1) * inv
                ok = (det.abs() > 1e-300) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
                t = torch.where(ok, t, torch.full_like(t, float("inf")))
                t_min, f_min = t.min(dim=1)
                better = t_min < best_t[r0:r0 + ray_chunk]
                best_t[r0:r0 + ray_chunk] = torch.where(better, t_min, best_t[r0:r0 + ray_chunk])
                best_f[r0:r0 + ray_chunk] = torch.where(better, f_min + f0, best_f[r0:r0 + ray_chunk])
        return best_f.cpu().numpy()


def default_backend(device: str) -> str:
    """``torch`` on a CUDA device, ``embree`` otherwise."""
    return "torch" if str(device).startswith("cuda") else "embree"


def _plane_distance(vertices: np.ndarray, faces: np.ndarray, origins: np.ndarray,
                    directions: np.ndarray) -> np.ndarray:
    """Distance along each ray to the plane of its hit triangle, in float64."""
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    normal = np.cross(v1 - v0, v2 - v0)
    denom = np.einsum("ij,ij->i", normal, directions)
    num = np.einsum("ij,ij->i", normal, v0 - origins)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / denom
    return np.where(np.isfinite(t) & (t > 0), t, np.nan)

