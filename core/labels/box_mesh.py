"""Box pipeline: an object's mesh extracted from the field's density inside its annotated box.

The density is sampled on a regular grid of voxel centres in the box's own frame and the iso-surface is taken
with marching cubes (PyMCubes). Then it is cleaned: the support the object stands on (the table or floor in the
box's bottom: the dominant plane there, :func:`~.occlusion.support_plane`) is cut away with a slab of
``support`` above it, and only the big connected pieces are kept (floaters and bits of the neighbours that
poke into the box go away). The iso-level comes from the field itself, not from a magic
number. The caller measures it where the field renders its surfaces: the lower quartile of the density at the
points of the field's own depth (the median of each ray's weights) that fall inside the box, seen from the
dataset's cameras (:func:`core.pipeline.bake.surface_density_level`). Without such points, it is the density
at which transmittance drops to 1/2 across one step of the field's renderer, ``sigma = ln 2 / step`` (data
units): a sharp, well-trained field puts its rendered surface there; a half-trained one smears it, hence the
measured level first.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.transforms import apply_points
from ..progress import ProgressFn, report
from .occlusion import bottom_zone, box_up_axis, lateral_span, support_plane

DEFAULT_RESOLUTION = 128  # voxels along the box's longest side
#: pieces with at least this share of the largest piece's faces are kept (a handle cut off by the support slab,
#: the two halves of a torus cut by it); smaller ones are floaters
KEEP_PIECE_SHARE = 0.2
#: how much looser a support plane is fitted to the views' surface points than to the mesh's vertices
VIEW_SUPPORT_TOLERANCE = 3.0


def density_threshold(voxel_data: float) -> float:
    """Density (per data unit) at which transmittance across one voxel of length ``voxel_data`` is 1/2."""
    return math.log(2.0) / voxel_data


def extract_box_mesh(density: Callable[[np.ndarray], np.ndarray], box_pose: np.ndarray, size: np.ndarray,
                     world_from_data: np.ndarray, *, resolution: int = DEFAULT_RESOLUTION,
                     step: Optional[float] = None, threshold: Optional[float] = None, chunk: int = 1 << 18,
                     progress: Optional[ProgressFn] = None, name: str = "box", support: Optional[float] = None,
                     world_up: np.ndarray = np.array([0.0, 0.0, 1.0]),
                     carve: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                     support_points: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    """The largest connected surface of the field inside a box, as a trimesh in the box's frame (world units).

    ``density(points_data (N, 3)) -> (N,)`` is the field's density in the data frame; ``box_pose`` is
    box-to-world (box centred at its origin), ``size`` its edge lengths (world units); ``step`` the field's
    render step in data units; ``threshold`` the iso-level (density per data unit), by default
    ``ln 2 / step``; ``support`` the slab above the support plane that is cut away (world units; default two
    voxels: the blur of the field's table surface), ``world_up`` the world's up (the support lies under the
    box's side nearest to it); ``carve(points_world (N, 3)) -> (N,) bool``: the points the views see through
    (:mod:`.carve`), emptied before the iso-surface is taken; ``support_points(up (3,)) -> (N, 3)``: box-frame
    points of the surface around the object where its support is looked for first (:func:`clean_box_mesh`).
    Returns None when the field holds no surface in the box.
    """
    size = np.asarray(size, dtype=np.float64)
    voxel = float(size.max()) / resolution
    counts = np.maximum(np.ceil(size / voxel).astype(int), 2)
    axes = [(np.arange(n) + 0.5) * voxel - n * voxel / 2 for n in counts]  # voxel centres, box frame
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    points_world = apply_points(box_pose, grid)
    points_data = apply_points(np.linalg.inv(world_from_data), points_world)
    scale = float(np.cbrt(np.linalg.det(world_from_data[:3, :3])))  # world units per data unit

    volume = sample_density(density, points_data, chunk, progress, f"mesh of {name}")
    if carve is not None:
        volume[carve(points_world)] = 0.0
    volume = volume.reshape(*counts)
    if threshold is None:
        threshold = density_threshold(step if step else voxel / scale)
    mesh = iso_surface(volume, threshold, voxel, np.array([a[0] for a in axes]))
    if mesh is None:
        return None
    up = box_up_axis(np.asarray(box_pose)[:3, :3], world_up)
    mesh = clean_box_mesh(mesh, size, up, 2.0 * voxel if support is None else float(support), tolerance=voxel,
                          support_points=None if support_points is None else support_points(up))
    if mesh is None:
        return None
    mesh.fix_normals()
    return mesh


def sample_density(density: Callable[[np.ndarray], np.ndarray], points: np.ndarray, chunk: int,
                   progress: Optional[ProgressFn], stage: str) -> np.ndarray:
    """``density`` at ``points`` in chunks (progress reported as ``stage``); NaN as 0 and infinity as a huge
    finite value, so that marching cubes sees a surface there."""
    values = np.empty(len(points))
    total = len(points)
    for start in range(0, total, chunk):
        values[start:start + chunk] = density(points[start:start + chunk])
        report(progress, min(start + chunk, total), total, stage)
    if not np.all(np.isfinite(values)):
        values = np.nan_to_num(values, nan=0.0, posinf=np.finfo(np.float64).max / 4)
    return values


def iso_surface(volume: np.ndarray, threshold: float, voxel: float, first_centre: np.ndarray):
    """The ``threshold`` iso-surface (marching cubes) of a grid of densities at voxel centres ``voxel`` apart,
    the first at ``first_centre``, as a trimesh in that frame; None when there is none. A border of empty
    voxels closes the surface where it meets the grid's walls."""
    import mcubes
    import trimesh

    if volume.max() < threshold:
        return None
    vertices, faces = mcubes.marching_cubes(np.pad(volume, 1, constant_values=0.0), threshold)
    if len(faces) == 0:
        return None
    # padded index i is the voxel centre i - 1
    vertices = (vertices - 1.0) * voxel + np.asarray(first_centre, dtype=np.float64)
    return trimesh.Trimesh(vertices, faces.astype(np.int64), process=True)


def clean_box_mesh(mesh, size: np.ndarray, up: np.ndarray, support: float, *, tolerance: float,
                   support_points: Optional[np.ndarray] = None):
    """``mesh`` (box frame) without its support -- faces touching the slab of ``support`` above the dominant
    plane near the box's bottom (within ``tolerance``), or below it -- and without its small pieces; None
    when nothing is left. The plane is looked for in ``support_points`` (box frame: the surface the views see
    around the object, :func:`.carve.unlabelled_surface`) first, then in the mesh's own vertices."""
    vertices = np.asarray(mesh.vertices)
    plane = None
    if support_points is not None and len(support_points):
        # the views' surface is the field's rendered depth, noisier than its iso-surface
        plane = support_plane(support_points, up, VIEW_SUPPORT_TOLERANCE * max(tolerance, support / 2),
                              span=lateral_span(size, up))
    if plane is None:
        # not the caps that close the surface on the box's walls: the support's underside would be one
        inner = np.all(np.abs(vertices) < np.asarray(size) / 2 - tolerance, axis=1)
        zone = bottom_zone(vertices, size, up) & inner
        plane = support_plane(vertices[zone], up, max(tolerance, support / 2), span=lateral_span(size, up))
    if plane is not None:
        low = plane.height(vertices) <= support
        keep = ~low[np.asarray(mesh.faces)].any(axis=1)
        if not keep.any():
            return None
        mesh = mesh.submesh([np.flatnonzero(keep)], append=True)
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:
        largest = max(len(m.faces) for m in pieces)
        import trimesh

        mesh = trimesh.util.concatenate([m for m in pieces if len(m.faces) >= KEEP_PIECE_SHARE * largest])
    return mesh


def chamfer_distance(mesh_a, mesh_b, samples: int = 20000, seed: int = 0) -> float:
    """Symmetric Chamfer distance (mean of both directions' mean nearest-surface-sample distance)."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    a = _sample_surface(mesh_a, samples, rng)
    b = _sample_surface(mesh_b, samples, rng)
    d_ab, _ = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    return float(0.5 * (d_ab.mean() + d_ba.mean()))


def _sample_surface(mesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform area-weighted samples on a triangle mesh (seeded, so results repeat)."""
    tris = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]
    areas = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    if areas.sum() <= 0:
        raise NeuralLabelError("cannot sample a mesh with zero surface area")
    face = rng.choice(len(tris), size=count, p=areas / areas.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tris[face]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
