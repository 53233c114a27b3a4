"""What the label math asks of the scene's density beyond its surface: which samples along a pixel's ray belong
to an annotated object (a band around its surface), and the plane an object stands on (its support).

- :class:`SurfaceBand`: points within a distance of some meshes' surfaces (a k-d tree over dense samples of the
  surfaces: the samples along a frame's rays are many, an exact point-to-triangle query per sample is slow).
- :func:`support_plane`: the dominant plane among surface points near a box's bottom (RANSAC), the table or
  floor that the boxed object stands on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numba
import numpy as np


class SurfaceBand:
    """Which points lie within ``band`` of the surface of any of ``meshes`` (trimesh, one frame of reference).

    The surfaces are sampled every ``spacing`` (default band / 3), so a distance is known to about spacing / 2."""

    def __init__(self, meshes: Sequence, band: float, spacing: Optional[float] = None, seed: int = 0) -> None:
        import trimesh
        from scipy.spatial import cKDTree

        self.band = float(band)
        spacing = float(spacing) if spacing else self.band / 3.0
        clouds = []
        for mesh in meshes:
            vertices = np.asarray(mesh.vertices, dtype=np.float64)
            clouds.append(vertices)
            area = float(mesh.area)
            if area > 0 and spacing > 0:
                count = int(min(2e6, np.ceil(2.0 * area / spacing ** 2)))
                points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
                clouds.append(np.asarray(points, dtype=np.float64))
        cloud = np.concatenate(clouds) if clouds else np.zeros((0, 3))
        self.empty = len(cloud) == 0
        self._tree = None if self.empty else cKDTree(cloud)
        self.lo = cloud.min(axis=0) - self.band if not self.empty else None
        self.hi = cloud.max(axis=0) + self.band if not self.empty else None
        self._voxel = 0.0
        self._voxel_distance: Optional[np.ndarray] = None
        self._interior: Optional[np.ndarray] = None
        self._centre_distance: Optional[np.ndarray] = None  # exact, filled as frames ask (NaN: not yet)
        if not self.empty:
            self._voxel_distance, self._voxel = self._voxel_distances(cloud, spacing)
            self._interior = self._enclosed(self._voxel_distance == 0)

    #: the grid's voxel, in surface sample spacings (finer: more points decided by the grid, a bigger grid)
    VOXEL_SPACINGS = 2.0
    #: the grid's most voxels (coarser voxels beyond that)
    MAX_VOXELS = 2 ** 22

    def _voxel_distances(self, cloud: np.ndarray, spacing: float) -> tuple[np.ndarray, float]:
        """A voxel grid over [lo, hi] of the distance from each voxel's centre to the nearest voxel centre that
        holds a cloud point (a distance transform), and its voxel size.

        A cloud point lies within half a voxel diagonal h of its voxel's centre, so a voxel centre c is
        between D(c) - h and D(c) + h from the cloud; a point p at distance r from c, between D(c) - h - r and
        D(c) + h + r (the distance is 1-Lipschitz). Most points -- on the surfaces, or far from them -- are
        then decided without the k-d tree."""
        from scipy.ndimage import distance_transform_edt

        extent = self.hi - self.lo
        voxel = max(self.VOXEL_SPACINGS * spacing, float(np.cbrt(np.prod(extent) / self.MAX_VOXELS)), 1e-12)
        shape = np.maximum(np.ceil(extent / voxel).astype(np.int64), 1)
        empty = np.ones(tuple(shape), bool)
        cells = np.minimum(((cloud - self.lo) / voxel).astype(np.int64), shape - 1)
        empty[cells[:, 0], cells[:, 1], cells[:, 2]] = False
        return (distance_transform_edt(empty) * voxel).astype(np.float32), voxel

    @staticmethod
    def _enclosed(surface: np.ndarray) -> np.ndarray:
        """Voxels enclosed by the surface voxels, grown by one voxel first (the random surface samples leave a
        voxel empty here and there, through which the fill would leak), not counting the grown shell: the
        meshes' insides, from a voxel or two under the surface. A mesh with a real hole in its surface
        encloses nothing (the fill leaks out), so its inside is never claimed."""
        from scipy.ndimage import binary_dilation, binary_fill_holes

        shell = binary_dilation(np.pad(surface, 2), structure=np.ones((3, 3, 3), bool))  # border: outside
        return (binary_fill_holes(shell) & ~shell)[2:-2, 2:-2, 2:-2]

    def _centre_distances(self, cells: np.ndarray) -> np.ndarray:
        """(N,) the exact distance from the centres of voxels ``cells`` (N, 3) to the surface samples; inf past
        the band plus a voxel diagonal (farther than any point in the voxel could be within the band)."""
        grid = self._voxel_distance
        if self._centre_distance is None:
            self._centre_distance = np.full(grid.size, np.nan, dtype=np.float32)
        flat = np.ravel_multi_index(tuple(cells.T), grid.shape)
        known = self._centre_distance[flat]
        missing = np.unique(flat[np.isnan(known)])
        if len(missing):
            centres = self.lo + (np.stack(np.unravel_index(missing, grid.shape), axis=1) + 0.5) * self._voxel
            bound = self.band + np.sqrt(3.0) * self._voxel
            distance, _ = self._tree.query(centres, distance_upper_bound=bound, workers=-1)
            self._centre_distance[missing] = distance
            known = self._centre_distance[flat]
        return known.astype(np.float64)

    def inside(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: points in a voxel enclosed by a (closed) mesh's surface voxels, at least about half a
        voxel deep. With :meth:`within` this tells which density is the object's: a field whose surface sits
        a little behind the true one puts the object's weight inside the mesh, past the band."""
        out = np.zeros(len(points), bool)
        if self.empty or len(points) == 0:
            return out
        near_box = np.all((points >= self.lo) & (points < self.hi), axis=1)
        idx = np.flatnonzero(near_box)
        grid = self._interior
        cells = np.minimum(((points[idx] - self.lo) / self._voxel).astype(np.int64), np.array(grid.shape) - 1)
        out[idx] = grid[cells[:, 0], cells[:, 1], cells[:, 2]]
        return out

    def within(self, points: np.ndarray, band: Optional[np.ndarray] = None) -> np.ndarray:
        """(N,) bool: each point's distance to the nearest surface is at most ``band`` (scalar or (N,) array,
        at most the band given at construction; default that band). The same answers as asking the k-d tree
        for every point."""
        if self.empty or len(points) == 0:
            return np.zeros(len(points), bool)
        points = np.ascontiguousarray(points, dtype=np.float64)
        limits = np.ascontiguousarray(np.broadcast_to(self.band if band is None else band, (len(points),)),
                                      dtype=np.float64)
        state = _grid_decide(points, limits, self.lo, self.hi, self._voxel, self._voxel_distance)
        out = state == _WITHIN
        idx = np.flatnonzero(state == _UNDECIDED)
        if len(idx) == 0:
            return out
        limit = limits[idx]
        cells = np.minimum(((points[idx] - self.lo) / self._voxel).astype(np.int64),
                           np.array(self._voxel_distance.shape) - 1)
        offset = np.linalg.norm(points[idx] - (self.lo + (cells + 0.5) * self._voxel), axis=1)
        # The undecided shell is as thick as the grid's bound is loose. The exact distance at the voxel's centre
        # bounds the point's to within its offset from the centre alone (1-Lipschitz), which decides most of
        # the shell; voxels are shared by the samples of neighbouring rays and of later frames, so each
        # centre's distance is found once.
        exact = self._centre_distances(cells)
        margin = offset * 1.01 + 1e-4 * self._voxel  # float32 rounding of the stored distances
        inside = exact + margin <= limit
        out[idx[inside]] = True
        ask = ~inside & (exact - margin <= limit)
        idx, limit = idx[ask], limit[ask]
        if len(idx) == 0:
            return out
        # the search stops at the widest band asked now, not the widest built for (a few times wider at
        # a frame's depths, and the search's cost grows with it); every core
        bound = min(self.band, float(np.max(limit))) * (1 + 1e-9)
        distance, _ = self._tree.query(points[idx], distance_upper_bound=bound, workers=-1)
        out[idx] = distance <= limit
        return out


#: :func:`_grid_decide`'s answers per point
_BEYOND, _WITHIN, _UNDECIDED = 0, 1, 2


@numba.njit(nogil=True, cache=True)
def _grid_decide(points, limits, lo, hi, voxel, grid):
    """Per point, what :class:`SurfaceBand`'s voxel grid alone tells of its distance to the surfaces against its
    limit: surely within, surely beyond, or undecided (:meth:`SurfaceBand._voxel_distances` gives the bound).
    One compiled pass instead of a dozen array passes over every sample of a frame; serial, as the label math
    runs beside the bake's render, whose compiled loops use every core (and not every threading layer of
    numba lets two threads run parallel loops at once)."""
    n = points.shape[0]
    nx, ny, nz = grid.shape
    half_diagonal = 0.5 * math.sqrt(3.0) * voxel * 1.01  # 1 %: float32 rounding of the grid
    state = np.zeros(n, dtype=np.uint8)
    for i in range(n):
        x, y, z = points[i, 0], points[i, 1], points[i, 2]
        if not (lo[0] <= x <= hi[0] and lo[1] <= y <= hi[1] and lo[2] <= z <= hi[2]):
            continue  # farther than the band from every surface
        cx = min(int((x - lo[0]) / voxel), nx - 1)
        cy = min(int((y - lo[1]) / voxel), ny - 1)
        cz = min(int((z - lo[2]) / voxel), nz - 1)
        dx = x - (lo[0] + (cx + 0.5) * voxel)
        dy = y - (lo[1] + (cy + 0.5) * voxel)
        dz = z - (lo[2] + (cz + 0.5) * voxel)
        reach = math.sqrt(dx * dx + dy * dy + dz * dz) + half_diagonal
        distance = grid[cx, cy, cz]
        if distance + reach <= limits[i]:
            state[i] = _WITHIN
        elif distance - reach <= limits[i]:
            state[i] = _UNDECIDED
    return state


@dataclass(frozen=True)
class Plane:
    normal: np.ndarray  # (3,) unit, pointing up (away from what the plane supports' underside)
    offset: float  # points x on the plane: normal . x = offset

    def height(self, points: np.ndarray) -> np.ndarray:
        return points @ self.normal - self.offset


def support_plane(points: np.ndarray, up: np.ndarray, tolerance: float, *, span: Optional[np.ndarray] = None,
                  max_tilt_deg: float = 30.0, min_share: float = 0.15, min_points: int = 30, iterations: int = 200,
                  seed: int = 0) -> Optional[Plane]:
    """The plane that holds the most of ``points`` (N, 3) within ``tolerance``, tilted at most ``max_tilt_deg``
    from ``up`` (RANSAC, seeded so that every run agrees, refined by least squares on its inliers). None when
    the best plane holds fewer than ``min_share`` of the points or ``min_points``, or when its points spread
    (5th to 95th percentile) less than ``span`` (3,) along each axis (a table reaches across the box; the
    flat bottom of a floating object does not): nothing supports the box there."""
    points = np.asarray(points, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    n = len(points)
    if n < max(3, min_points):
        return None
    rng = np.random.default_rng(seed)
    cos_max = np.cos(np.radians(max_tilt_deg))
    picks = rng.integers(0, n, size=(iterations, 3))
    a, b, c = points[picks[:, 0]], points[picks[:, 1]], points[picks[:, 2]]
    normals = np.cross(b - a, c - a)
    length = np.linalg.norm(normals, axis=1)
    ok = length > 1e-12
    normals[ok] /= length[ok, None]
    normals *= np.sign(normals @ up)[:, None]
    ok &= normals @ up >= cos_max
    best, best_count = None, 0
    # Score the candidate planes in blocks: (candidates x points) distances.
    for start in range(0, iterations, 50):
        idx = np.flatnonzero(ok[start:start + 50]) + start
        if len(idx) == 0:
            continue
        offsets = np.einsum("ij,ij->i", normals[idx], a[idx])
        counts = (np.abs(points @ normals[idx].T - offsets) <= tolerance).sum(axis=0)
        k = int(np.argmax(counts))
        if counts[k] > best_count:
            best, best_count = (normals[idx[k]], offsets[k]), int(counts[k])
    if best is None or best_count < max(min_points, min_share * n):
        return None
    inliers = points[np.abs(points @ best[0] - best[1]) <= tolerance]
    if span is not None:
        spread = np.percentile(inliers, 95, axis=0) - np.percentile(inliers, 5, axis=0)
        if np.any(spread < np.asarray(span)):
            return None
    centre = inliers.mean(axis=0)
    _, _, vt = np.linalg.svd(inliers - centre, full_matrices=False)
    normal = vt[-1] * np.sign(vt[-1] @ up)
    if normal @ up < cos_max:
        normal = best[0]
    return Plane(normal, float(normal @ centre))


def box_up_axis(box_rotation: np.ndarray, world_up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """The box's own axis (in the box frame, signed) nearest to the world's up: the side a support lies under."""
    up_local = box_rotation.T @ world_up
    k = int(np.argmax(np.abs(up_local)))
    axis = np.zeros(3)
    axis[k] = np.sign(up_local[k]) or 1.0
    return axis


def lateral_span(size: np.ndarray, up: np.ndarray, share: float = 0.5) -> np.ndarray:
    """(3,) the spread a support plane's points must reach: ``share`` of the box's size sideways, 0 along up."""
    span = share * np.asarray(size, dtype=np.float64)
    span[int(np.argmax(np.abs(up)))] = 0.0
    return span


def bottom_zone(local: np.ndarray, size: np.ndarray, up: np.ndarray, *, margin: float = 0.25,
                below: float = 0.25, above: float = 0.35) -> np.ndarray:
    """(N,) bool: box-frame points in the zone where a support plane is looked for: the box widened sideways
    by ``margin`` of its size, from ``below`` of its height under its bottom to ``above`` of it over."""
    k = int(np.argmax(np.abs(up)))
    half = np.asarray(size, dtype=np.float64) / 2
    h = local[:, k] * up[k]  # height along up, 0 = box centre
    side = [j for j in range(3) if j != k]
    lateral = np.all(np.abs(local[:, side]) <= half[side] * (1 + margin), axis=1)
    return lateral & (h >= -half[k] - below * 2 * half[k]) & (h <= -half[k] + above * 2 * half[k])
