"""The bake's fast paths answer as the slow ones did: depth-only compositing in compiled per-ray loops, depth-map
rays rendered without samples, band queries that stop at the band asked, compact JSON."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from neurallabel.core.geometry.cameras import Intrinsics
from neurallabel.core.geometry.view import View
from neurallabel.core.io.atomic import json_bytes, write_bytes
from neurallabel.core.labels.occlusion import SurfaceBand
from neurallabel.core.render.march import march
from neurallabel.core.render.march_numba import SURFACE_SLOTS, composite_numba
from neurallabel.core.render.views import render_peak, render_rays, render_surface
from neurallabel.core.render.volrend import composite
from neurallabel.core.scene.queries import FieldQuery

from test_render import solid_below


def cloudy_field():
    """Thin, uneven density in an open, contracted field, seen from rays everywhere inside it: many samples per
    ray (some rays past the scratch slots), some rays with none. Seeded (the occupancy update draws points):
    the same field every run."""
    torch.manual_seed(13)
    field = solid_below(-0.6, density=40.0, levels=4)
    config = field.config
    config.contracted_density, config.cone_angle, config.background_from = True, 1 / 64, 1.0
    noise = torch.rand((1, 1, 6, 6, 6), generator=torch.Generator().manual_seed(11)) * 6 - 3
    with torch.no_grad():
        field.density_grid += torch.nn.functional.interpolate(noise, size=field.density_grid.shape[2:],
                                                              mode="trilinear")
    field.update_occupancy(samples_per_cell=4)
    rays = torch.Generator().manual_seed(12)
    origins = (torch.rand((2500, 3), generator=rays) - 0.5) * 1.2
    return field, origins, torch.nn.functional.normalize(torch.randn((2500, 3), generator=rays), dim=-1)


def test_compiled_compositing_gives_torch_compositing_outputs():
    field, origins, directions = cloudy_field()
    samples = march(field, origins, directions, near=0.1, backend="numba")
    counts = torch.bincount(samples.ray_indices, minlength=len(origins))
    assert int(counts.max()) > 16 and int((counts == 0).sum()) > 0  # long rays and empty ones
    reference, weighted = composite(field, origins, directions, samples, depth_only=True)
    out, weights = composite_numba(samples)
    # the same float32 values and float64 running sums: equal to an ulp or two (the sums' order differs)
    assert torch.allclose(weights, weighted.weights, rtol=1e-5, atol=1e-7)
    for key in ("opacity", "distance", "median_distance", "peak_distance"):
        finite = torch.isfinite(reference[key])
        assert torch.equal(finite, torch.isfinite(out[key]))
        assert torch.allclose(out[key][finite], reference[key][finite], rtol=1e-5, atol=1e-6)
    assert bool(torch.isinf(out["median_distance"][counts == 0]).all())
    assert bool(torch.isinf(out["peak_distance"][counts == 0]).all())


def test_surface_without_samples_equals_the_depth_only_render():
    field, origins, directions = cloudy_field()
    rich = render_rays(field, origins, directions, near=0.1, depth_only=True, return_samples=True, chunk=1000)
    plain = render_surface(field, origins, directions, near=0.1)
    for key in ("opacity", "distance", "median_distance", "peak_distance"):
        assert torch.equal(plain[key], rich[key]), key  # one compiled compositing: the same bits
    # a ray longer than the scratch slots is marched again into its own buffer
    dense = solid_below(0.99, density=2.0, levels=1)  # faint density all along the ray, fine steps
    dense.config.steps_per_roi, dense.config.alpha_thre = 8 * SURFACE_SLOTS, 0.0
    o = torch.tensor([[0.0, 0.0, 0.95]])
    d = torch.tensor([[0.0, 0.0, -1.0]])
    long = render_rays(dense, o, d, depth_only=True, return_samples=True)
    assert len(long["weights"]) > SURFACE_SLOTS
    short = render_surface(dense, o, d)
    for key in ("opacity", "distance", "median_distance", "peak_distance"):
        assert torch.equal(short[key], long[key]), key


def test_the_peak_found_by_rays_that_stop_early_is_the_whole_rays_peak():
    """``render_peak`` stops a ray once no later sample can outweigh its peak and its opacity has reached the
    threshold: the same peak, bit for bit, and the same rays with a surface, for fewer samples."""
    from neurallabel.core.render import march_numba

    field, origins, directions = cloudy_field()
    full = render_surface(field, origins, directions, near=0.1)
    for threshold in (0.5, 0.2, 0.95, 1.0):
        peak = render_peak(field, origins, directions, min_opacity=threshold, near=0.1)
        surface = full["opacity"] >= threshold
        assert 0 < int(surface.sum()) < len(origins) or threshold == 1.0
        assert torch.equal(torch.isfinite(peak), surface & torch.isfinite(full["peak_distance"]))
        assert torch.equal(peak[surface], full["peak_distance"][surface])
    # the rays did stop early: their own opacity is short of the whole ray's where a surface was found
    stopped = march_numba.surface_numba(field, origins, directions, near=0.1, peak_stop=0.5)
    assert bool((stopped["opacity"] <= full["opacity"] + 1e-6).all())
    assert int((stopped["opacity"] < full["opacity"] - 1e-3).sum()) > len(origins) // 10
    with pytest.raises(ValueError):
        render_peak(field, origins, directions, min_opacity=0.0)


def test_field_query_renders_plain_rays_without_samples_and_answers_the_same():
    field = solid_below(0.1)
    query = FieldQuery(field)
    intr = Intrinsics(24, 18, 20.0, 20.0, 12.0, 9.0)
    pose = np.eye(4)
    pose[:3, 3] = [0.0, 0.0, 0.9]  # looking down -z at the solid below z = 0.1
    view = View(0, "v", intr, pose, pose)
    rows, cols = np.divmod(np.arange(18 * 24), 24)
    decide = (rows + cols) % 3 == 0
    mixed = query.at_pixels(view, rows, cols, samples_for=decide)
    full = query.at_pixels(view, rows, cols, confidence=True, samples_for=np.ones(len(rows), bool))
    assert np.array_equal(mixed.z_depth, full.z_depth, equal_nan=True)
    assert np.isfinite(mixed.z_depth).all()
    # only the decision rays' samples come back, still sorted by ray, and as the full render's
    keep = decide[full.samples.ray]
    assert np.array_equal(mixed.samples.ray, full.samples.ray[keep])
    assert np.all(np.diff(mixed.samples.ray) >= 0)
    assert np.allclose(mixed.samples.z, full.samples.z[keep]) and np.allclose(mixed.samples.alpha,
                                                                           full.samples.alpha[keep])


def test_band_query_stopping_at_the_band_asked_keeps_the_answer():
    import trimesh

    band = SurfaceBand([trimesh.creation.icosphere(subdivisions=3, radius=0.1)], band=0.05, spacing=0.002)
    rng = np.random.default_rng(1)
    points = rng.uniform(-0.2, 0.2, (20000, 3))
    limit = rng.uniform(0.0, 0.02, len(points))
    distance = np.abs(np.linalg.norm(points, axis=1) - 0.1)
    got = band.within(points, limit)
    # the sampled surface is known to about its spacing: decide only away from that margin
    clear = np.abs(distance - limit) > 0.003
    assert np.array_equal(got[clear], (distance <= limit)[clear])
    assert got.sum() > 500
    assert np.array_equal(band.within(points), band.within(points, np.full(len(points), 0.05)))


def test_band_grid_decides_most_points_and_answers_as_the_tree():
    """The voxel grid of centre distances answers exactly as a plain k-d tree query over the same surface
    samples -- points on the surfaces, just inside and just outside the band, far away, meshes far apart (an
    empty middle), per-point bands -- and sends only the undecided few to the tree."""
    import trimesh
    from scipy.spatial import cKDTree

    meshes = [trimesh.creation.icosphere(subdivisions=2, radius=0.05),
              trimesh.creation.box((0.1, 0.1, 0.1), trimesh.transformations.translation_matrix([0.6, 0.0, 0.1]))]
    band = SurfaceBand(meshes, band=0.02, spacing=0.004)
    cloud = band._tree.data
    rng = np.random.default_rng(4)
    points = np.concatenate([rng.uniform(-0.1, 0.7, (30000, 3)),
                             cloud[rng.integers(0, len(cloud), 5000)] + rng.normal(0, 0.012, (5000, 3)),
                             cloud[rng.integers(0, len(cloud), 5000)] + rng.normal(0, 0.002, (5000, 3))])
    distance, _ = cKDTree(cloud).query(points)
    asked = []
    query = band._tree.query

    def counting(x, **kwargs):
        asked.append(len(x))
        return query(x, **kwargs)

    band._tree = type("Counting", (), {"query": staticmethod(counting)})()
    assert np.array_equal(band.within(points), distance <= 0.02)
    assert sum(asked) < 0.25 * len(points)
    limit = rng.uniform(0.0, 0.02, len(points))
    assert np.array_equal(band.within(points, limit), distance <= limit)


def test_compact_json_reads_back_the_same_and_is_deterministic():
    value = {"b": [1, 2.5, None], "a": {"x": "é", "y": [0.1, 1e-9]}}
    compact = json_bytes(value, compact=True)
    assert json.loads(compact) == value == json.loads(json_bytes(value))
    assert compact == json_bytes(value, compact=True) and b" " not in compact and compact.endswith(b"\n")
    assert list(json.loads(compact)) == ["b", "a"]  # the caller's order is kept


def test_atomic_write_leaves_one_readable_file(tmp_path):
    """Frames are written through atomic writes: one file with the usual permissions, no temp file left."""
    target = tmp_path / "deep" / "frame.png"
    write_bytes(target, b"first")
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["frame.png"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(TypeError):
        write_bytes(tmp_path / "bad.bin", "not bytes")
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
