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


#: the (first, second) coordinate of each tri-plane: plane p is indexed [H = second, W = first]
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


@numba.njit(parallel=True, **_JIT)
def _planes_forward(planes, coords, values, out):
    """values[n, p, c]: plane p's bilinear value; out[n, c]: their product over the three planes."""
    n_planes, channels, h, w = planes.shape
    for n in numba.prange(coords.shape[0]):
        for c in range(channels):
            out[n, c] = 1.0
        for p in range(n_planes):
            if p == 0:
                u, v = coords[n, 0], coords[n, 1]
            elif p == 1:
                u, v = coords[n, 0], coords[n, 2]
            else:
                u, v = coords[n, 1], coords[n, 2]
            x, a = _axis(u, w)
            y, b = _axis(v, h)
            for c in range(channels):
                value = ((planes[p, c, y, x] * (1 - a) + planes[p, c, y, x + 1] * a) * (1 - b)
                         + (planes[p, c, y + 1, x] * (1 - a) + planes[p, c, y + 1, x + 1] * a) * b)
                values[n, p, c] = value
                out[n, c] *= value


@numba.njit(parallel=True, **_JIT)
def _planes_backward(coords, values, grad_out, grad):
    n_planes, channels, h, w = grad.shape
    # one task per (plane, channel): each owns its slice of the gradient, so no two threads write alike
    for task in numba.prange(n_planes * channels):
        p = task // channels
        c = task % channels
        q, r = (1, 2) if p == 0 else ((0, 2) if p == 1 else (0, 1))
        for n in range(coords.shape[0]):
            g = grad_out[n, c] * values[n, q, c] * values[n, r, c]
            if g == 0.0:
                continue
            if p == 0:
                u, v = coords[n, 0], coords[n, 1]
            elif p == 1:
                u, v = coords[n, 0], coords[n, 2]
            else:
                u, v = coords[n, 1], coords[n, 2]
            x, a = _axis(u, w)
            y, b = _axis(v, h)
            grad[p, c, y, x] += g * (1 - a) * (1 - b)
            grad[p, c, y, x + 1] += g * a * (1 - b)
            grad[p, c, y + 1, x] += g * (1 - a) * b
            grad[p, c, y + 1, x + 1] += g * a * b


class _TriPlanes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, planes: Tensor, coords: Tensor) -> Tensor:
        planes_np = planes.detach().numpy()
        coords_np = np.ascontiguousarray(coords.detach().numpy(), dtype=np.float32)
        n = coords_np.shape[0]
        channels = planes_np.shape[1]
        values = np.empty((n, 3, channels), dtype=np.float32)
        out = np.empty((n, channels), dtype=np.float32)
        _planes_forward(planes_np, coords_np, values, out)
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
    """(N, C) product over the three planes of (3, C, H, W) float32 CPU ``planes`` at ``coords`` (N, 3) in
    [-1, 1] (plane p looks up the coordinate pair ``PLANE_AXES[p]`` as (x, y)): K-Planes' Hadamard feature.
    Differentiable with respect to ``planes`` (not ``coords``)."""
    return _TriPlanes.apply(planes.contiguous(), coords)
