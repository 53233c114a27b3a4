"""Renderer: outputs on a field set to a known solid, the CPU marcher against brute-force marching, and the
CPU/CUDA agreement where a GPU exists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurallabel.core.geometry.cameras import Intrinsics
from neurallabel.core.field.model import Field, FieldConfig
from neurallabel.core.render.march import march_cpu, march_nerfacc, ray_box
from neurallabel.core.render.march_numba import march_numba
from neurallabel.core.render.samples import RaySamples
from neurallabel.core.render.views import render_frame, render_rays, render_surface
from neurallabel.core.render.volrend import packed_cumsum


def solid_below(plane_z: float, density: float = 2000.0, levels: int = 1, occupancy: bool = True) -> Field:
    """A field in [-1, 1]^3 that is empty above z = plane_z and dense below it."""
    torch.manual_seed(0)
    config = FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], levels=levels, density_resolution=64,
                         plane_resolutions=(16,), occupancy_resolution=32)
    field = Field(config)
    with torch.no_grad():
        r = config.density_resolution
        # density grid axis 0 is x, 1 is y, 2 is z (see Field.density_from_normalized)
        z = torch.linspace(-1, 1, r)
        z_world = field.roi_centre[2] + z * field.roi_half[2]
        raw_dense = math.log(math.expm1(density / field.density_scale)) - field.density_shift
        raw = torch.where(z_world < plane_z, raw_dense, -30.0)
        field.density_grid[:] = raw.view(1, 1, 1, 1, r).expand_as(field.density_grid)
    if occupancy:
        field.update_occupancy(samples_per_cell=16)
    return field


def test_depth_of_a_plane_is_exact_for_straight_and_slanted_rays():
    field = solid_below(0.1)
    origins = torch.tensor([[0.0, 0.0, 0.9], [0.2, -0.3, 0.8], [0.0, 0.0, 0.9]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.3, 0.2, -1.0], [0.0, 0.0, 1.0]])
    directions = directions / directions.norm(dim=-1, keepdim=True)
    out = render_rays(field, origins, directions, return_samples=True)
    assert out["rgb"].shape == (3, 3)
    assert torch.all((out["opacity"] >= 0) & (out["opacity"] <= 1))
    expected = (origins[:2, 2] - 0.1) / -directions[:2, 2]
    # the surface is where the trilinear density crosses over: within a density voxel of the plane
    voxel = 2.0 / 63
    assert torch.allclose(out["median_distance"][:2], expected, atol=voxel)
    assert torch.allclose(out["distance"][:2], expected, atol=voxel)
    assert torch.all(out["opacity"][:2] > 0.99)
    # the upward ray sees nothing
    assert out["opacity"][2] < 1e-3 and math.isinf(out["distance"][2])
    # packed samples: sorted by ray, weights sum to the opacity
    ri = out["ray_indices"]
    assert torch.all(ri[1:] >= ri[:-1])
    sums = torch.zeros(3).index_add(0, ri, out["weights"])
    assert torch.allclose(sums, out["opacity"], atol=1e-5)
    assert torch.all(out["t_ends"] > out["t_starts"])


@torch.no_grad()
def _brute_force_samples(field: Field, origins, directions, near=0.0):
    """Every lattice midpoint inside the box, kept by nerfacc's rules, evaluated one step at a time."""
    step = field.render_step_size
    grid = field.occupancy
    t_enter, t_exit = ray_box(origins, directions, grid.aabbs[-1])
    t_enter = t_enter.clamp_min(near)
    out = []
    cone = field.config.cone_angle
    for i in range(len(origins)):
        trans = 1.0
        k, t = 0, near  # walk the lattice: steps of `step`, or of t * cone once that is longer
        switch = max(field.config.background_from, step / cone) if cone else float("inf")
        while True:
            dt = max(step, t * cone) if t >= switch - 1e-9 else step
            mid = t + dt / 2
            if mid >= float(t_exit[i]) or trans < field.config.early_stop_eps:
                break
            p = origins[i] + mid * directions[i]
            if mid >= float(t_enter[i]) and bool(grid.occupied(p[None])[0]):
                sigma = float(field.density(p[None])[0])
                alpha = 1 - math.exp(-sigma * dt)
                if alpha >= min(field.config.alpha_thre, float(grid.occs.mean())):
                    out.append((i, k, t))
                trans *= 1 - alpha
            k, t = k + 1, t + dt
    return out


@pytest.mark.parametrize("marcher", [march_cpu, march_numba])
@pytest.mark.parametrize("levels,cone,background_from,contracted", [
    (1, 0.0, 0.0, False), (2, 0.0, 0.0, False), (3, 0.02, 0.0, False), (3, 0.05, 0.9, True), (5, 1 / 64, 0.5, True)])
def test_cpu_marcher_matches_stepping_every_lattice_point(marcher, levels, cone, background_from, contracted):
    field = solid_below(-0.2, density=300.0, levels=levels)
    field.config.cone_angle = cone
    field.config.background_from = background_from
    field.config.contracted_density = contracted
    g = torch.Generator().manual_seed(1)
    origins = torch.rand(16, 3, generator=g) * 1.6 - 0.8
    origins[:, 2] = 0.9
    directions = torch.randn(16, 3, generator=g)
    directions[:, 2] = -directions[:, 2].abs() - 0.3
    directions = directions / directions.norm(dim=-1, keepdim=True)
    samples = marcher(field, origins, directions)
    expected = _brute_force_samples(field, origins, directions)
    assert len(expected) > 0 and len(samples) == len(expected)
    order = sorted(range(len(expected)), key=lambda j: expected[j][:2])
    assert samples.ray_indices.tolist() == [expected[j][0] for j in order]
    assert samples.t_starts.tolist() == pytest.approx([expected[j][2] for j in order], rel=1e-4, abs=1e-5)
    if cone:  # past step / cone the samples grow with the distance
        deltas = samples.deltas
        far = samples.t_starts > max(2 * field.render_step_size / cone, background_from + 0.1)
        assert bool(far.any()) and bool(torch.all(deltas[far] > 1.5 * field.render_step_size))


def test_render_frame_z_depth_and_nan_where_nothing_is_hit():
    field = solid_below(0.0)
    intrinsics = Intrinsics(16, 12, 14.0, 14.0, 8.0, 6.0)
    cam_to_world = np.eye(4)
    cam_to_world[2, 3] = 0.8  # looking down -z from z = 0.8: z-depth of the plane is 0.8 everywhere
    out = render_frame(field, intrinsics, cam_to_world)
    assert out["rgb"].shape == (12, 16, 3) and out["z_depth"].shape == (12, 16)
    assert np.allclose(out["z_depth"], 0.8, atol=2.0 / 63)
    assert np.allclose(out["median_z_depth"], 0.8, atol=2.0 / 63)
    assert np.allclose(out["peak_z_depth"], 0.8, atol=2.0 / 63)
    up = cam_to_world.copy()
    up[:3, :3] = np.diag([1.0, -1.0, -1.0])  # looking up: nothing
    out = render_frame(field, intrinsics, up, pixels=np.array([[8.0, 6.0], [1.5, 2.5]]), depth_only=True)
    assert "rgb" not in out and np.isnan(out["z_depth"]).all()


def test_the_peak_stays_on_a_surface_that_lets_light_through_where_the_median_sinks_behind_it():
    """A thin layer stopping 40 % of the light above a faint volume that stops the rest over a long stretch: the
    most likely place to stop is the layer, while half the ray's weight lies only in the volume behind it."""
    field = solid_below(0.0, occupancy=False)
    with torch.no_grad():
        r = field.config.density_resolution
        z = field.roi_centre[2] + torch.linspace(-1, 1, r) * field.roi_half[2]
        density = torch.where(z < 0.0, 3.0, 0.0) + torch.where((z > 0.2) & (z < 0.26), 8.5, 0.0)
        raw = torch.where(density > 0, torch.log(torch.expm1(density.clamp_min(1e-6) / field.density_scale)),
                          torch.tensor(-30.0)) - field.density_shift
        field.density_grid[:] = raw.view(1, 1, 1, 1, r).expand_as(field.density_grid)
    field.update_occupancy(samples_per_cell=16)
    origins = torch.tensor([[0.0, 0.0, 0.9], [0.1, -0.2, 0.9]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    rich = render_rays(field, origins, directions)  # composited in torch
    plain = render_surface(field, origins, directions)  # composited in the compiled loop
    assert torch.equal(rich["peak_distance"], plain["peak_distance"])
    layer = (0.9 - 0.26 - 2.0 / 63, 0.9 - 0.2 + 2.0 / 63)  # within a density voxel of the layer
    assert bool(((rich["peak_distance"] > layer[0]) & (rich["peak_distance"] < layer[1])).all())
    assert bool((rich["median_distance"] > 0.9).all())  # below z = 0: behind the layer
    assert bool((rich["opacity"] > 0.9).all())


def test_the_peak_finds_a_sharp_surface_within_half_a_step_and_on_average_on_it():
    """A hard surface at t = 1 met by rays whose sample lattices are offset evenly: the density is taken at each
    sample's middle, so the first sample past the surface is the most weighted and its start lies within half a
    step of the surface, on either side, and on it on average (its middle would lie half a step behind)."""
    from neurallabel.core.render.march_numba import composite_numba
    from neurallabel.core.render.volrend import peak_distance

    step, n_rays, per_ray = 0.01, 400, 200
    offsets = (torch.arange(n_rays, dtype=torch.float64) + 0.5) / n_rays * step
    starts = (offsets[:, None] + 0.5 + torch.arange(per_ray, dtype=torch.float64)[None, :] * step).reshape(-1)
    samples = RaySamples(torch.arange(n_rays).repeat_interleave(per_ray), starts.float(), (starts + step).float(),
                         n_rays)
    samples = samples.with_values(sigmas=torch.where(samples.mids >= 1.0, 1e4, 0.0))
    out, weights = composite_numba(samples)
    peak = peak_distance(samples.with_values(weights=weights))
    assert torch.equal(peak, out["peak_distance"])  # the torch and the compiled compositing agree
    error = peak.double() - 1.0
    assert float(error.abs().max()) <= step / 2 + 1e-6
    assert abs(float(error.mean())) < 0.02 * step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: only the CPU path is tested")
def test_cpu_and_cuda_paths_agree():
    field = solid_below(0.1, density=300.0)
    g = torch.Generator().manual_seed(2)
    origins = torch.rand(500, 3, generator=g) * 1.6 - 0.8
    origins[:, 2] = 0.9
    directions = torch.randn(500, 3, generator=g)
    directions[:, 2] = -directions[:, 2].abs() - 0.3
    directions = directions / directions.norm(dim=-1, keepdim=True)
    cpu = render_rays(field, origins, directions)
    gpu = render_rays(field.to("cuda"), origins.cuda(), directions.cuda())
    for key in ("opacity", "distance", "median_distance", "rgb"):
        assert torch.allclose(cpu[key], gpu[key].cpu(), atol=1e-3), key


def test_packed_cumsum_sums_within_each_ray_only():
    ray_indices = torch.tensor([0, 0, 0, 2, 2, 3])
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 7.0], requires_grad=True)
    pack_start = RaySamples(ray_indices, values.detach(), values.detach() + 1, n_rays=4).pack_start()
    assert pack_start.tolist() == [0, 3, 3, 5]  # ray 1 has no samples
    exclusive = packed_cumsum(values, ray_indices, pack_start)
    assert exclusive.tolist() == [0.0, 1.0, 3.0, 0.0, 10.0, 0.0]
    inclusive = packed_cumsum(values, ray_indices, pack_start, exclusive=False)
    assert inclusive.tolist() == [1.0, 3.0, 6.0, 10.0, 30.0, 7.0]
    exclusive.sum().backward()  # differentiable: each value counts once per later sample of its ray
    assert values.grad.tolist() == [2.0, 1.0, 0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("slot_budget", [16 * 3000, None])
def test_numba_marcher_gives_the_torch_marchers_samples_on_a_cloudy_field(slot_budget, monkeypatch):
    """Thin, uneven density (many samples per ray) in an open field: with 16 first-pass slots per ray (many rays
    marched again in the second pass), and with the slots a batch of this size gets."""
    from neurallabel.core.render import march_numba as compiled

    if slot_budget is not None:
        monkeypatch.setattr(compiled, "SLOT_BUDGET", slot_budget)
    slots = compiled.slots_per_ray(3000)

    field = solid_below(-0.5, density=50.0, levels=4)
    field.config.contracted_density, field.config.cone_angle, field.config.background_from = True, 1 / 64, 1.0
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        field.density_grid += torch.nn.functional.interpolate(
            torch.randn(1, 1, 8, 8, 8, generator=g) * 4, size=(64,) * 3, mode="trilinear")
    field.update_occupancy(samples_per_cell=4)
    origins = torch.randn(3000, 3, generator=g) * 0.5
    directions = torch.nn.functional.normalize(torch.randn(3000, 3, generator=g), dim=-1)
    for stratified in (False, True):
        torch.manual_seed(5)
        reference = march_cpu(field, origins, directions, near=0.1, stratified=stratified)
        torch.manual_seed(5)
        samples = march_numba(field, origins, directions, near=0.1, stratified=stratified)
        ref_counts = torch.bincount(reference.ray_indices, minlength=3000)
        counts = torch.bincount(samples.ray_indices, minlength=3000)
        assert int(counts.sum()) > 5 * 3000
        assert (int(counts.max()) > slots) == (slot_budget is not None)
        # the two compute the same floats in another order: a sample on an opacity threshold may flip
        same = counts == ref_counts
        assert float(same.float().mean()) > 0.995
        rows = same[samples.ray_indices]
        ref_rows = same[reference.ray_indices]
        assert torch.equal(samples.ray_indices[rows], reference.ray_indices[ref_rows])
        assert torch.allclose(samples.t_starts[rows], reference.t_starts[ref_rows], rtol=1e-5, atol=1e-6)
        assert torch.allclose(samples.t_ends[rows], reference.t_ends[ref_rows], rtol=1e-5, atol=1e-6)
        # float64 arithmetic against torch's float32: a few parts in 10^4 where the density is steep
        assert torch.allclose(samples.sigmas[rows], reference.sigmas[ref_rows], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("marcher", [march_cpu, march_numba])
def test_a_coarser_sampling_step_spaces_the_samples_but_keeps_the_density_units(marcher):
    """The trainer marches a coarse density grid with a longer step (Field.sample_step_scale); density
    units (alpha_init, the occupancy threshold) stay tied to render_step_size."""
    field = solid_below(0.1, density=20.0)
    origins, directions = torch.tensor([[0.0, 0.0, 0.9]]), torch.tensor([[0.0, 0.0, -1.0]])
    shift = field.density_shift
    fine = marcher(field, origins, directions)
    field.sample_step_scale = 2.0
    coarse = marcher(field, origins, directions)
    assert field.density_shift == shift
    assert torch.allclose(fine.deltas, torch.full_like(fine.deltas, field.render_step_size), rtol=1e-4)
    assert torch.allclose(coarse.deltas, torch.full_like(coarse.deltas, 2 * field.render_step_size), rtol=1e-4)
    assert abs(len(coarse) * 2 - len(fine)) <= 2


def test_march_cpu_returns_the_densities_of_its_samples():
    field = solid_below(0.1)
    origins = torch.tensor([[0.0, 0.0, 0.9], [0.0, 0.0, 0.9]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    samples = march_cpu(field, origins, directions)
    assert samples.n_rays == 2 and len(samples) > 0 and set(samples.ray_indices.tolist()) == {0}
    assert torch.allclose(samples.sigmas, field.density(samples.points(origins, directions)), rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: nerfacc's marcher needs one")
def test_nerfacc_marcher_gives_the_cpu_samples_and_keeps_no_estimator():
    field = solid_below(-0.2, density=300.0).to("cuda")
    keys = sorted(field.state_dict())
    g = torch.Generator().manual_seed(1)
    origins = torch.rand(64, 3, generator=g) * 1.6 - 0.8
    origins[:, 2] = 0.9
    directions = torch.randn(64, 3, generator=g)
    directions[:, 2] = -directions[:, 2].abs() - 0.3
    directions = (directions / directions.norm(dim=-1, keepdim=True)).cuda()
    origins = origins.cuda()
    gpu = march_nerfacc(field, origins, directions)
    cpu = march_cpu(field, origins, directions)
    step = field.render_step_size
    assert sorted(zip(gpu.ray_indices.tolist(), torch.round(gpu.t_starts / step).long().tolist())) == \
        sorted(zip(cpu.ray_indices.tolist(), torch.round(cpu.t_starts / step).long().tolist()))
    assert sorted(field.state_dict()) == keys  # nothing nerfacc-made joined the module tree
