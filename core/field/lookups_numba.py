"""The field's two grid lookups, compiled for the CPU (numba), with their backward passes.

``F.grid_sample``'s CPU backward runs over the batch dimension only, so the density grid (one batch) gets
one thread, and it pays for bounds checks and atomics per corner. Training spends most of a step there.
These kernels compute exactly what :class:`..model.Field` asks of ``grid_sample`` (bilinear / trilinear,
``align_corners=True``, border padding) and the gradient with respect to the grid values only: nothing
in NeuralLabel differentiates through sample positions. The backward scatters are deterministic: each
thread owns whole grid slices (one plane channel) or runs alone (the density grid).

:func:`trilinear` and :func:`triplane_features` are ``torch.autograd`` functions over CPU tensors;
``tests/test_field.py`` compares them with ``grid_sample`` value by value and gradient by gradient.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

_JIT = dict(nogil=True, cache=True)


@numba.njit(inline="always", **_JIT)
def _axis(u, size):
    """Lower corner index and weight of the upper corner for coordinate ``u`` in [-1, 1] (border clamp)."""
    x = (u + 1.0) * 0.5 * (size - 1)
    if x < 0.0:
        x = 0.0
    elif x > size - 1:
        x = float(size - 1)
    i = min(int(x), size - 2)
    return i, x - i


@numba.njit(parallel=True, **_JIT)
def _trilinear_forward(grid, coords, out):
    r0, r1, r2 = grid.shape
    for n in numba.prange(coords.shape[0]):
        i, a = _axis(coords[n, 0], r0)
        j, b = _axis(coords[n, 1], r1)
        k, c = _axis(coords[n, 2], r2)
        c00 = grid[i, j, k] * (1 - c) + grid[i, j, k + 1] * c
        c01 = grid[i, j + 1, k] * (1 - c) + grid[i, j + 1, k + 1] * c
        c10 = grid[i + 1, j, k] * (1 - c) + grid[i + 1, j, k + 1] * c
        c11 = grid[i + 1, j + 1, k] * (1 - c) + grid[i + 1, j + 1, k + 1] * c
        out[n] = (c00 * (1 - b) + c01 * b) * (1 - a) + (c10 * (1 - b) + c11 * b) * a


@numba.njit(**_JIT)
def _trilinear_backward(coords, grad_out, grad):
    r0, r1, r2 = grad.shape
    for n in range(coords.shape[0]):
        g = grad_out[n]
        if g == 0.0:
            continue
        i, a = _axis(coords[n, 0], r0)
        j, b = _axis(coords[n, 1], r1)
        k, c = _axis(coords[n, 2], r2)
        for di in range(2):
            wa = a if di else 1.0 - a
            for dj in range(2):
                wb = b if dj else 1.0 - b
                wab = g * wa * wb
                grad[i + di, j + dj, k] += wab * (1.0 - c)
                grad[i + di, j + dj, k + 1] += wab * c


class _Trilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grid: Tensor, coords: Tensor) -> Tensor:
        grid_np = grid.detach().numpy()
        coords_np = np.ascontiguousarray(coords.detach().numpy(), dtype=np.float32)
        out = np.empty(coords_np.shape[0], dtype=np.float32)
        _trilinear_forward(grid_np, coords_np, out)
        ctx.save_for_backward(coords)
        ctx.grid_shape = grid.shape
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (coords,) = ctx.saved_tensors
        grad = np.zeros(ctx.grid_shape, dtype=np.float32)
        _trilinear_backward(np.ascontiguousarray(coords.numpy(), dtype=np.float32),
                            np.ascontiguousarray(grad_out.numpy(), dtype=np.float32), grad)
        return torch.from_numpy(grad), None


def trilinear(grid: Tensor, coords: Tensor) -> Tensor:
    """(N,) values of the (R0, R1, R2) float32 CPU ``grid`` at ``coords`` (N, 3) in [-1, 1], where
    coordinate 0 runs along the grid's first axis: ``grid_sample(grid[None, None], coords[..., [2, 1, 0]])``.
    Differentiable with respect to ``grid`` (not ``coords``)."""
    return _Trilinear.apply(grid.contiguous(), coords)


@numba.njit(inline="always", **_JIT)
def _plane_corner(coords, n, p, h, w):
    """Plane p's lower corner (x, y) and upper-corner weights (a, b) for point n (pairs of model.PLANE_AXES)."""
    if p == 0:
        u, v = coords[n, 0], coords[n, 1]
    elif p == 1:
        u, v = coords[n, 0], coords[n, 2]
    else:
        u, v = coords[n, 1], coords[n, 2]
    x, a = _axis(u, w)
    y, b = _axis(v, h)
    return x, a, y, b


@numba.njit(parallel=True, **_JIT)
def _planes_forward(planes, coords, values, out):
    """out[n, c]: the product over the three channel-last ``planes`` (3, H, W, C) of their bilinear values, kept
    in values[n, p, c] for the backward pass unless ``values`` is empty (rendering). Channel-last: a point's C
    features sit side by side in memory (3x faster than (3, C, H, W)); the field stores them so."""
    n_planes, h, w, channels = planes.shape
    keep = values.shape[0] > 0
    for n in numba.prange(coords.shape[0]):
        for c in range(channels):
            out[n, c] = 1.0
        for p in range(n_planes):
            x, a, y, b = _plane_corner(coords, n, p, h, w)
            for c in range(channels):
                value = ((planes[p, y, x, c] * (1 - a) + planes[p, y, x + 1, c] * a) * (1 - b)
                         + (planes[p, y + 1, x, c] * (1 - a) + planes[p, y + 1, x + 1, c] * a) * b)
                if keep:
                    values[n, p, c] = value
                out[n, c] *= value


@numba.njit(parallel=True, **_JIT)
def _planes_backward(coords, values, grad_out, grad):
    """Gradient of the channel-last planes (3, H, W, C). One task per plane and half of the channels: each owns
    its slice of the gradient (no two threads write alike, so the sums are deterministic) and writes a point's
    channels side by side."""
    n_planes, h, w, channels = grad.shape
    groups = 2 if channels % 2 == 0 else 1
    width = channels // groups
    for task in numba.prange(n_planes * groups):
        p = task // groups
        c0 = (task % groups) * width
        q, r = (1, 2) if p == 0 else ((0, 2) if p == 1 else (0, 1))
        for n in range(coords.shape[0]):
            x, a, y, b = _plane_corner(coords, n, p, h, w)
            w00 = (1 - a) * (1 - b)
            w01 = a * (1 - b)
            w10 = (1 - a) * b
            w11 = a * b
            for c in range(c0, c0 + width):
                g = grad_out[n, c] * values[n, q, c] * values[n, r, c]
                grad[p, y, x, c] += g * w00
                grad[p, y, x + 1, c] += g * w01
                grad[p, y + 1, x, c] += g * w10
                grad[p, y + 1, x + 1, c] += g * w11


class _TriPlanes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, planes: Tensor, coords: Tensor) -> Tensor:
        coords_np = np.ascontiguousarray(coords.detach().numpy(), dtype=np.float32)
        n = coords_np.shape[0]
        channels = planes.shape[-1]
        values = np.empty((n, 3, channels), dtype=np.float32)
        out = np.empty((n, channels), dtype=np.float32)
        _planes_forward(planes.detach().numpy(), coords_np, values, out)
        ctx.save_for_backward(torch.from_numpy(coords_np), torch.from_numpy(values))
        ctx.planes_shape = planes.shape
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        coords, values = ctx.saved_tensors
        grad = np.zeros(ctx.planes_shape, dtype=np.float32)
        _planes_backward(coords.numpy(), values.numpy(), np.ascontiguousarray(grad_out.numpy(), dtype=np.float32),
                         grad)
        return torch.from_numpy(grad), None


def triplane_features(planes: Tensor, coords: Tensor) -> Tensor:
    """(N, C) product over the three channel-last planes (3, H, W, C), float32 on the CPU, at ``coords`` (N, 3)
    in [-1, 1] (plane p looks up the coordinate pair ``model.PLANE_AXES[p]`` as (x, y)): K-Planes' Hadamard
    feature. Differentiable with respect to ``planes`` (not ``coords``)."""
    return _TriPlanes.apply(planes.contiguous(), coords)


def triplane_lookup(planes_hwc: np.ndarray, coords: Tensor) -> Tensor:
    """:func:`triplane_features`' values from channel-last planes, a (3, H, W, C) float32 array, with no
    gradient."""
    coords_np = np.ascontiguousarray(coords.detach().numpy(), dtype=np.float32)
    out = np.empty((coords_np.shape[0], planes_hwc.shape[-1]), dtype=np.float32)
    _planes_forward(planes_hwc, coords_np, np.empty((0, 3, planes_hwc.shape[-1]), dtype=np.float32), out)
    return torch.from_numpy(out)


# --- contraction and view encoding (no gradient: positions and directions are data) ----------------------


@numba.njit(inline="always", **_JIT)
def _contract_one(x, y, z, centre, half, contracted, out, n):
    """Grid coordinates of one point into out[n, :3]; returns its L-inf norm in roi half-widths (>= 1)."""
    u0 = (x - centre[0]) / half[0]
    u1 = (y - centre[1]) / half[1]
    u2 = (z - centre[2]) / half[2]
    if not contracted:
        out[n, 0], out[n, 1], out[n, 2] = u0, u1, u2
        return 1.0
    norm = max(abs(u0), abs(u1), abs(u2), 1e-9)
    scale = 0.5 if norm <= 1.0 else (2.0 - 1.0 / norm) / norm * 0.5
    out[n, 0], out[n, 1], out[n, 2] = u0 * scale, u1 * scale, u2 * scale
    return max(norm, 1.0)


@numba.njit(parallel=True, **_JIT)
def _contract_all(points, centre, half, contracted, coords, norms):
    for n in numba.prange(points.shape[0]):
        norms[n] = _contract_one(points[n, 0], points[n, 1], points[n, 2], centre, half, contracted, coords, n)


def contract_points(points: Tensor, centre: Tensor, half: Tensor, contracted: bool) -> tuple[Tensor, Tensor]:
    """:meth:`..model.Field.contract` for float32 CPU points that need no gradient: grid coordinates (N, 3)
    and the L-inf norm in roi half-widths (N,), at least 1."""
    p = np.ascontiguousarray(points.detach().numpy(), dtype=np.float32)
    coords = np.empty_like(p)
    norms = np.empty(p.shape[0], dtype=np.float32)
    _contract_all(p, centre.detach().cpu().double().numpy(), half.detach().cpu().double().numpy(),
                  bool(contracted), coords, norms)
    return torch.from_numpy(coords), torch.from_numpy(norms)


@numba.njit(parallel=True, **_JIT)
def _sh_deg2(d, out):
    for n in numba.prange(d.shape[0]):
        x, y, z = d[n, 0], d[n, 1], d[n, 2]
        out[n, 0] = 0.28209479
        out[n, 1] = -0.48860251 * y
        out[n, 2] = 0.48860251 * z
        out[n, 3] = -0.48860251 * x
        out[n, 4] = 1.09254843 * x * y
        out[n, 5] = -1.09254843 * y * z
        out[n, 6] = 0.31539157 * (2 * z * z - x * x - y * y)
        out[n, 7] = -1.09254843 * x * z
        out[n, 8] = 0.54627421 * (x * x - y * y)


def sh_deg2(directions: Tensor) -> Tensor:
    """:func:`..model.sh_basis_deg2` for float32 CPU directions that need no gradient."""
    d = np.ascontiguousarray(directions.detach().numpy(), dtype=np.float32)
    out = np.empty((d.shape[0], 9), dtype=np.float32)
    _sh_deg2(d, out)
    return torch.from_numpy(out)


@numba.njit(**_JIT)
def _contracted_intervals(o, d, ray, t_starts, t_ends, near, centre, half, contracted, s_starts, s_ends):
    point = np.empty((3, 3), dtype=np.float64)
    previous_ray = -1
    px = py = pz = 0.0
    s = 0.0
    for n in range(ray.shape[0]):
        r = ray[n]
        if r != previous_ray:  # a new ray: its distance runs from its point at ``near``
            _contract_one(o[r, 0] + near * d[r, 0], o[r, 1] + near * d[r, 1], o[r, 2] + near * d[r, 2],
                          centre, half, contracted, point, 0)
            px, py, pz = point[0, 0], point[0, 1], point[0, 2]
            s = 0.0
            previous_ray = r
        t0, t1 = t_starts[n], t_ends[n]
        tm = 0.5 * (t0 + t1)
        _contract_one(o[r, 0] + t0 * d[r, 0], o[r, 1] + t0 * d[r, 1], o[r, 2] + t0 * d[r, 2], centre, half,
                      contracted, point, 0)
        _contract_one(o[r, 0] + t1 * d[r, 0], o[r, 1] + t1 * d[r, 1], o[r, 2] + t1 * d[r, 2], centre, half,
                      contracted, point, 1)
        _contract_one(o[r, 0] + tm * d[r, 0], o[r, 1] + tm * d[r, 1], o[r, 2] + tm * d[r, 2], centre, half,
                      contracted, point, 2)
        s += math.sqrt((point[2, 0] - px) ** 2 + (point[2, 1] - py) ** 2 + (point[2, 2] - pz) ** 2)
        px, py, pz = point[2, 0], point[2, 1], point[2, 2]
        half_length = 0.5 * math.sqrt((point[1, 0] - point[0, 0]) ** 2 + (point[1, 1] - point[0, 1]) ** 2
                                      + (point[1, 2] - point[0, 2]) ** 2)
        s_starts[n] = s - half_length
        s_ends[n] = s + half_length


def contracted_intervals(origins: Tensor, directions: Tensor, ray_indices: Tensor, t_starts: Tensor,
                         t_ends: Tensor, near: float, centre: Tensor, half: Tensor, contracted: bool
                         ) -> tuple[Tensor, Tensor]:
    """:func:`..render.samples.in_contracted_distance`'s intervals for CPU samples, one pass in machine code
    (running sums per ray in float64)."""
    as64 = lambda x: np.ascontiguousarray(x.detach().cpu().double().numpy())  # noqa: E731
    n = ray_indices.shape[0]
    s_starts = np.empty(n, dtype=np.float32)
    s_ends = np.empty(n, dtype=np.float32)
    _contracted_intervals(as64(origins), as64(directions), np.ascontiguousarray(ray_indices.numpy()),
                          as64(t_starts), as64(t_ends), float(near), as64(centre), as64(half), bool(contracted),
                          s_starts, s_ends)
    return torch.from_numpy(s_starts), torch.from_numpy(s_ends)
