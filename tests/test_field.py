"""Field: encoding, contraction, coarse-to-fine resize, exact occupancy; metrics PSNR/SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurallabel.core.field.model import Field, FieldConfig, sh_basis_deg2
from neurallabel.core.eval.image import psnr, ssim


def small_field(levels: int = 1) -> Field:
    torch.manual_seed(0)
    config = FieldConfig(roi_aabb=[[-1, -2, 0], [1, 2, 1]], levels=levels, density_resolution=24,
                         plane_resolutions=(8, 16), occupancy_resolution=16)
    field = Field(config)
    with torch.no_grad():
        field.density_grid.normal_(0.0, 3.0)
    return field


def test_outputs_have_the_right_shapes_and_ranges():
    field = small_field()
    points = torch.rand(100, 3) * torch.tensor([2.0, 4.0, 1.0]) - torch.tensor([1.0, 2.0, 0.0])
    directions = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    rgb, sigma = field(points, directions)
    assert rgb.shape == (100, 3) and sigma.shape == (100,)
    assert torch.all((rgb >= 0) & (rgb <= 1)) and torch.all(sigma >= 0)
    assert torch.allclose(field.aabb, torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 1.0]]))


def test_sh_basis_is_orthonormal_on_the_sphere():
    d = torch.nn.functional.normalize(torch.randn(200000, 3, dtype=torch.float64), dim=-1)
    basis = sh_basis_deg2(d)
    gram = basis.T @ basis * (4 * math.pi / len(d))
    assert torch.allclose(gram, torch.eye(9, dtype=torch.float64), atol=0.03)


def test_contraction_keeps_the_roi_and_maps_the_outside_into_the_grid():
    field = small_field(levels=3)
    assert torch.allclose(field.aabb[1] - field.aabb[0], 4 * torch.tensor([2.0, 4.0, 1.0]))
    inside = torch.tensor([[0.5, 1.0, 0.75]])
    assert torch.allclose(field.normalize(inside), torch.tensor([[0.25, 0.25, 0.25]]))
    far = field.aabb[1][None] * 0.999
    assert torch.all(field.normalize(far).abs() < 1.0)
    points = torch.randn(2000, 3, generator=torch.Generator().manual_seed(2)) * 6
    assert torch.allclose(field.uncontract(field.normalize(points)), points, rtol=1e-4, atol=1e-4)


def test_resize_keeps_the_density_where_it_was():
    field = small_field()
    points = torch.rand(500, 3) * torch.tensor([2.0, 4.0, 1.0]) - torch.tensor([1.0, 2.0, 0.0])
    smooth = torch.linspace(-3, 3, 24)
    with torch.no_grad():
        field.density_grid[:] = smooth.view(1, 1, 24, 1, 1) + smooth.view(1, 1, 1, 1, 24)  # linear: exact
    before = field.density(points)
    field.resize_density(40)
    assert field.density_grid.shape == (1, 1, 40, 40, 40)
    assert torch.allclose(field.density(points), before, rtol=1e-4, atol=1e-4)


def test_cell_max_density_bounds_the_density_everywhere_in_the_cell():
    field = small_field()
    grid = field.occupancy
    cell_max = field.cell_max_density().reshape(-1)
    indices = torch.arange(grid.resolution ** 3)
    for _ in range(8):
        points = grid.cell_points(0, indices, jitter=True)
        assert torch.all(field.density(points) <= cell_max * (1 + 1e-5) + 1e-6)
    # and it is attained (a vertex sits in or on the edge of every cell): not a loose bound
    corners = grid.cell_points(0, indices, jitter=False)
    assert torch.all(cell_max >= field.density(corners) - 1e-6)


def test_psnr_and_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.random((40, 50, 3))
    assert psnr(a, a) == float("inf")
    assert psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)) == pytest.approx(20.0)
    assert ssim(a, a) == pytest.approx(1.0)
    # SSIM written out with scipy's Gaussian filter (truncate 3.5 -> 11 taps, sigma 1.5), valid region
    from scipy.ndimage import gaussian_filter

    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    values = []
    for c in range(3):
        x, y = a[..., c], b[..., c]
        f = lambda z: gaussian_filter(z, 1.5, truncate=3.5, mode="constant")[5:-5, 5:-5]  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        values.append(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))))
    assert ssim(b, a) == pytest.approx(float(np.mean(values)), abs=1e-6)
    assert ssim(b, a) < 0.99


def test_compiled_lookups_equal_grid_sample_in_value_and_gradient():
    """The CPU kernels stand in for ``grid_sample`` (align_corners, border) in training: same values, same
    gradients with respect to the grids, at points inside, on the faces and corners, and outside."""
    import torch.nn.functional as F

    from neurallabel.core.field.lookups_numba import triplane_features, triplane_lookup, trilinear
    from neurallabel.core.field.model import PLANE_AXES

    generator = torch.Generator().manual_seed(3)
    coords = torch.rand(5000, 3, generator=generator) * 2.6 - 1.3
    coords[:6] = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [1.0, -1.0, 0.3], [2.0, 0.0, 0.0],
                               [-1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    grid = torch.randn(1, 1, 9, 7, 11, generator=generator, requires_grad=True)
    weights = torch.randn(5000, generator=generator)
    reference = F.grid_sample(grid, coords.view(1, 1, 1, -1, 3)[..., [2, 1, 0]], mode="bilinear",
                              padding_mode="border", align_corners=True).view(-1)
    compiled = trilinear(grid[0, 0], coords)
    assert torch.allclose(compiled, reference, atol=1e-5)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), grid)
    (grad_compiled,) = torch.autograd.grad((compiled * weights).sum(), grid)
    assert torch.allclose(grad_compiled, grad_reference, atol=1e-4)

    planes = torch.rand(3, 4, 6, 13, generator=generator, requires_grad=True)
    plane_coords = torch.stack([coords[:, list(axes)] for axes in PLANE_AXES]).unsqueeze(1)
    sampled = F.grid_sample(planes, plane_coords, mode="bilinear", padding_mode="border", align_corners=True)
    reference = (sampled[0] * sampled[1] * sampled[2]).squeeze(1).t()
    compiled = triplane_features(planes.permute(0, 2, 3, 1), coords)  # the kernels take them channel-last
    assert torch.allclose(compiled, reference, atol=1e-5)
    weights = torch.randn(5000, 4, generator=generator)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), planes)
    (grad_compiled,) = torch.autograd.grad((compiled * weights).sum(), planes)
    assert torch.allclose(grad_compiled, grad_reference, atol=1e-4)
    # rendering's channel-last lookup: the same bits as the training kernel
    assert torch.equal(triplane_lookup(planes.detach().permute(0, 2, 3, 1).contiguous().numpy(), coords),
                       compiled.detach())


def test_compiled_lookup_gradients_have_the_same_bits_on_any_number_of_threads():
    """Each thread of a backward scatter owns whole slices of the gradient, so every cell sums its points in the
    same order: a training step is reproducible from one machine to another (1 thread against 2)."""
    import numba

    from neurallabel.core.field.lookups_numba import triplane_features, trilinear

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here: nothing to compare")
    generator = torch.Generator().manual_seed(5)
    coords = torch.rand(20000, 3, generator=generator) * 2.2 - 1.1
    grid = torch.randn(33, 17, 9, generator=generator, requires_grad=True)
    planes = torch.rand(3, 37, 29, 8, generator=generator, requires_grad=True)
    weights = torch.randn(20000, 8, generator=generator)
    grads = []
    threads = numba.get_num_threads()
    try:
        for count in (1, 2):
            numba.set_num_threads(count)
            loss = (trilinear(grid, coords) * weights[:, 0]).sum() + (triplane_features(planes, coords) * weights).sum()
            grads.append(torch.autograd.grad(loss, (grid, planes)))
    finally:
        numba.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[-1]))
    assert all(bool(g.abs().sum() > 0) for g in grads[0])


def test_a_rendering_field_reads_its_channel_last_planes_in_place():
    field = small_field(levels=3)
    assert field.planes[1].shape == (3, 16, 16, field.config.plane_features) and field.planes[1].is_contiguous()
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(4)) * 2 - 1
    directions = torch.nn.functional.normalize(points + 0.1, dim=-1)
    trained = field.rgb(points, directions)
    with torch.no_grad():  # the lookup without autograd and the in-place MLP: the training path's bits
        assert torch.equal(field.rgb(points, directions), trained.detach())
        field.planes[0].add_(0.05)  # a training step changes the planes: the next render sees it
        assert not torch.equal(field.rgb(points, directions), trained.detach())


def test_a_checkpoint_with_planes_stored_channel_first_still_loads(tmp_path):
    """Fields saved before the planes were stored channel-last hold them as (3, C, H, W): same colours."""
    torch.manual_seed(1)
    field = Field(FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], levels=3, density_resolution=16,
                              plane_resolutions=(16, 32), occupancy_resolution=16))
    state = field.state_dict()
    old = {k: (v.permute(0, 3, 1, 2).contiguous() if k.startswith("planes.") else v) for k, v in state.items()}
    loaded = Field(field.config)
    loaded.load_state_dict(old)
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(6)) * 2 - 1
    directions = torch.nn.functional.normalize(points + 0.2, dim=-1)
    with torch.no_grad():
        assert torch.equal(loaded.rgb(points, directions), field.rgb(points, directions))


def test_the_field_uses_the_compiled_lookups_on_the_cpu_and_grid_sample_where_positions_need_a_gradient():
    field = Field(FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], levels=2, density_resolution=16,
                              plane_resolutions=(8, 16)))
    with torch.no_grad():
        field.density_grid.normal_()
    points = torch.rand(300, 3) * 3 - 1.5
    directions = torch.nn.functional.normalize(torch.randn(300, 3), dim=-1)
    rgb, sigma = field(points, directions)
    moving = points.clone().requires_grad_(True)  # a position gradient: grid_sample's path
    rgb_reference, sigma_reference = field(moving, directions)
    assert torch.allclose(sigma, sigma_reference, rtol=1e-4, atol=1e-5)
    assert torch.allclose(rgb, rgb_reference, atol=1e-5)
    assert moving.requires_grad and torch.autograd.grad(sigma_reference.sum(), moving)[0].abs().sum() > 0


@pytest.mark.parametrize("levels", [1, 3])
def test_compiled_contraction_view_encoding_and_contracted_distances_equal_the_torch_ones(levels):
    from neurallabel.core.field.lookups_numba import contract_points, sh_deg2
    from neurallabel.core.render.march_numba import march_numba
    from neurallabel.core.render.samples import in_contracted_distance
    from neurallabel.core.train.batch import contracted_samples

    field = Field(FieldConfig(roi_aabb=[[-1, -0.5, -1], [1, 1, 0.5]], levels=levels, density_resolution=32,
                              plane_resolutions=(16,)))
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(4000, 3, generator=generator) * 2
    compiled, compiled_norm = contract_points(points, field.roi_centre, field.roi_half, levels > 1)
    reference, reference_norm = field.contract(points.clone().requires_grad_(True))  # the torch path
    assert torch.allclose(compiled, reference, atol=1e-6) and torch.allclose(compiled_norm, reference_norm)
    directions = torch.nn.functional.normalize(torch.randn(4000, 3, generator=generator), dim=-1)
    assert torch.allclose(sh_deg2(directions), sh_basis_deg2(directions), atol=1e-6)

    origins = torch.randn(300, 3, generator=generator) * 0.3
    rays = directions[:300]
    samples = march_numba(field, origins, rays, near=0.05)
    assert len(samples) > 1000
    torch_version = in_contracted_distance(samples, origins, rays, field.normalize, 0.05)
    compiled_version = contracted_samples(field, samples, origins, rays, 0.05)
    # the torch version sums chords over the whole batch in float32; the compiled one per ray in float64
    assert torch.allclose(compiled_version.t_starts, torch_version.t_starts, atol=2e-4)
    assert torch.allclose(compiled_version.t_ends, torch_version.t_ends, atol=2e-4)
    assert torch.equal(compiled_version.ray_indices, samples.ray_indices)


def test_an_absolute_occupancy_threshold_drops_a_faint_haze_that_the_mean_rule_keeps():
    from neurallabel.core.field.occupancy import OccupancyGrid

    grid = OccupancyGrid(torch.tensor([0.0, 0, 0, 1, 1, 1]), resolution=4)
    values = torch.zeros(1, 4, 4, 4)
    values[0, 2:] = 8e-3  # a haze over half the box (32 cells) ...
    values[0, 1, 2, 3] = 0.2  # ... and one surface cell: the mean is 0.0071
    grid.update_from_cell_values(values, decay=0.0)  # nerfacc: threshold = min(mean, 0.01), the haze passes
    assert int(grid.binaries.sum()) == 33
    grid.update_from_cell_values(values, decay=0.0, absolute=True)
    assert grid.binaries.nonzero().tolist() == [[0, 1, 2, 3]]
    faint = torch.full((1, 4, 4, 4), 1e-4)
    faint[0, 0, 0, 0] = 2e-4
    grid.update_from_cell_values(faint, decay=0.0, absolute=True)  # nothing passes 0.01: a young field
    assert grid.binaries.nonzero().tolist() == [[0, 0, 0, 0]]  # keeps the relative rule


def test_skip_distances_nested_or_per_level(monkeypatch):
    """Nested (the torch marcher's lookup): a coarser level counts the finer box as occupied and no level
    jumps past its own edge. Per level (the compiled marcher, which stops at the box edges itself): each
    level's own cells alone."""
    from neurallabel.core.field.occupancy import OccupancyGrid

    monkeypatch.setattr(OccupancyGrid, "SKIP_COARSENING", 1)
    grid = OccupancyGrid(torch.tensor([-1.0, -1, -1, 1, 1, 1]), resolution=16, levels=2)
    grid.binaries.zero_()
    grid.binaries[0, 7, 7, 7] = True  # one occupied cell in the middle of the finest box
    nested, per_level = grid.skip_cells(), grid.skip_cells(nested=False)
    assert nested.shape == per_level.shape == (2, 16, 16, 16)
    # level 1, the cell just outside the finer box (which spans its cells 4..11)
    assert int(nested[1, 3, 8, 8]) == 1 and int(per_level[1, 3, 8, 8]) == 32  # nothing on level 1 itself
    # level 0, a corner cell: nested stops at the edge; per level it counts the cells to the occupied one
    assert int(nested[0, 0, 0, 0]) == 1 and int(per_level[0, 0, 0, 0]) == 7
    assert grid.skip_cells() is nested and grid.skip_cells(nested=False) is per_level  # both cached
    grid.binaries[0, 0, 0, 0] = True
    assert int(grid.skip_cells(nested=False)[0, 0, 0, 0]) == 0  # a change to the grid is seen
