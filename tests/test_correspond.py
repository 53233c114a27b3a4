"""Correspondences from a depth distribution, on analytic scenes (no training): two thin slabs along the
rays, the first half-transparent (the issue's unit target), and the sampler's own laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurallabel.core.correspond.distribution import DensityDepth, DepthDistribution, FieldDepth, sample_depths
from neurallabel.core.correspond.reproject import pixel_rays, project_to_view
from neurallabel.core.correspond.roundtrip import REASONS, PairOptions, correspond_pair
from neurallabel.core.geometry.cameras import Intrinsics
from neurallabel.core.geometry.view import View

SLAB_Z = (-1.0, -1.05)  # world z of the two slabs; camera A at the origin looks down -z
THICK = 0.001
SIGMA_FRONT = math.log(2.0) / THICK  # optical depth ln 2 along A's axis: half the light passes
SIGMA_BACK = 20.0 / THICK  # opaque


def slabs(points: torch.Tensor) -> torch.Tensor:
    z = points[:, 2]
    front = (z - SLAB_Z[0]).abs() <= THICK / 2
    back = (z - SLAB_Z[1]).abs() <= THICK / 2
    return front * SIGMA_FRONT + back * SIGMA_BACK


def rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def view(index: int, pose: np.ndarray, intrinsics: Intrinsics) -> View:
    return View(index, f"v{index}", intrinsics, pose, pose)


@pytest.fixture(scope="module")
def two_views():
    K = Intrinsics(400, 300, 500.0, 500.0, 200.0, 150.0)
    pose_a = np.eye(4)
    centre = np.array([0.0, 0.0, -1.025])
    pose_b = np.eye(4)
    pose_b[:3, :3] = rot_y(45.0)
    pose_b[:3, 3] = centre + rot_y(45.0) @ np.array([0.0, 0.0, 1.025])
    return view(0, pose_a, K), view(1, pose_b, K)


SOURCE = DensityDepth(slabs, near=0.8, far=1.3, step=0.0001)


def query_pixels(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(150, 250, n), rng.integers(100, 200, n)], axis=1) + 0.5


def on_slab(view_a: View, pixels: np.ndarray, slab: int) -> np.ndarray:
    """Where A's rays through ``pixels`` meet slab ``slab`` (world points)."""
    o, d, _ = pixel_rays(view_a, pixels)
    t = (SLAB_Z[slab] - o[:, 2]) / d[:, 2]
    return o + t[:, None] * d


def test_mean_depth_lands_between_the_slabs_and_misses_by_more_than_5px(two_views):
    a, b = two_views
    pixels = query_pixels(200)
    pairs = correspond_pair(SOURCE, a, b, pixels, PairOptions(mode="mean"))
    assert np.all(pairs.depth_a > 1.0 + 0.01) and np.all(pairs.depth_a < 1.05 - 0.01)
    truths = [project_to_view(b, on_slab(a, pixels, s))[0] - 0.5 for s in (0, 1)]
    error = np.minimum(*[np.linalg.norm(pairs.uv_b - t, axis=1) for t in truths])
    assert error.min() > 5.0


def test_sampled_depths_land_on_a_slab_and_accepted_pairs_are_exact(two_views):
    a, b = two_views
    pixels = query_pixels(300)
    pairs = correspond_pair(SOURCE, a, b, pixels, PairOptions(mode="sample", round_trip_px=1.0), seed=3)
    z = pairs.depth_a.astype(np.float64)
    near_slab = np.minimum(np.abs(z - 1.0), np.abs(z - 1.05))
    assert np.all(near_slab <= THICK / 2 + SOURCE.step)  # the lattice interval straddling the slab edge
    front = np.abs(z - 1.0) < 0.01
    assert 0.35 < front.mean() < 0.65  # half the weight on the half-transparent slab
    truth = np.where(front[:, None], *[project_to_view(b, on_slab(a, pixels, s))[0] - 0.5 for s in (0, 1)])
    accepted = pairs.accepted
    assert accepted.sum() > 50 and (~accepted).sum() > 50  # wrong-layer draws in B come back elsewhere
    assert np.all(pairs.reason[~accepted] == REASONS["round_trip"])
    error = np.linalg.norm(pairs.uv_b[accepted] - truth[accepted], axis=1)
    assert error.max() < 0.5
    assert np.all(pairs.transparent)  # every ray of A splits its weight between the slabs


def test_same_seed_same_pairs_and_chunks_bound_memory(two_views):
    a, b = two_views
    pixels = query_pixels(64)
    one = correspond_pair(SOURCE, a, b, pixels, seed=7, chunk=16)
    two = correspond_pair(SOURCE, a, b, pixels, seed=7, chunk=16)
    other = correspond_pair(SOURCE, a, b, pixels, seed=8, chunk=16)
    assert np.array_equal(one.depth_a, two.depth_a) and np.array_equal(one.accepted, two.accepted)
    assert not np.array_equal(one.depth_a, other.depth_a)


def packed(weights_per_ray: list[list[float]], step: float = 1.0) -> DepthDistribution:
    rays, starts, pdf, opacity = [], [], [], []
    for r, w in enumerate(weights_per_ray):
        total = sum(w)
        rays += [r] * len(w)
        starts += [10.0 + step * k for k in range(len(w))]
        pdf += [x / total if total else 0.0 for x in w]
        opacity.append(total)
    t = torch.tensor(starts)
    return DepthDistribution(torch.tensor(rays), t, t + step, torch.tensor(pdf), torch.tensor(opacity),
                             len(weights_per_ray))


def test_inverse_cdf_is_continuous_inside_intervals_and_follows_the_weights():
    dist = packed([[0.0, 0.25, 0.0, 0.75]])
    t, mass = sample_depths(dist, "sample", 20000, torch.Generator().manual_seed(0))
    t = t[0].numpy()
    assert np.all(((t >= 11) & (t <= 12)) | ((t >= 13) & (t <= 14)))
    assert abs(((t >= 13)).mean() - 0.75) < 0.02
    inside = t[t >= 13] - 13  # uniform inside the interval, not snapped to its midpoint
    assert abs(inside.mean() - 0.5) < 0.02 and inside.std() > 0.25
    assert set(np.round(mass[0].numpy(), 4)) == {0.25, 0.75}


def test_single_depth_modes_and_no_surface():
    dist = packed([[0.5, 0.0, 0.0, 0.4], [0.1, 0.1, 0.0, 0.0]])
    mean, _ = sample_depths(dist, "mean")
    median, _ = sample_depths(dist, "median")
    mode, _ = sample_depths(dist, "mode", n=3)
    assert mean[0, 0].item() == pytest.approx(10.5 * 5 / 9 + 13.5 * 4 / 9, rel=1e-5)
    assert median[0, 0].item() == pytest.approx(10.0 + 0.45 / 0.5 * 1.0, rel=1e-5)  # inside the first interval
    assert mode[0].tolist() == [10.5] * 3
    for t in (mean, median, mode):  # opacity 0.2 < 0.5: no surface
        assert torch.isnan(t[1]).all()
    with pytest.raises(Exception, match="mode"):
        sample_depths(dist, "deepest")


def test_points_behind_or_outside_are_out_of_view(two_views):
    a, b = two_views
    _, z, ok = project_to_view(a, np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [5.0, 0.0, -1.0]]))
    assert ok.tolist() == [True, False, False] and z[1] < 0


def test_lens_distortion_round_trips_both_ways():
    K = Intrinsics(400, 300, 300.0, 300.0, 200.0, 150.0, "OPENCV", (-0.2, 0.05, 0.001, -0.001))
    v = view(0, np.eye(4), K)
    pixels = np.stack(np.meshgrid(np.linspace(5, 395, 9), np.linspace(5, 295, 7)), -1).reshape(-1, 2)
    o, d, _ = pixel_rays(v, pixels)
    back, _, ok = project_to_view(v, o + 2.0 * d)
    assert ok.all() and np.abs(back - pixels).max() < 1e-6


def floor_and_fog(near: float) -> "Field":
    """A real field in [-1, 1]^3: solid below z = 0.1 and a dense fog layer at 0.75 < z < 0.8 (in front of
    cameras at z = 0.9, closer than their training near plane ``near``)."""
    from neurallabel.core.field.model import Field, FieldConfig

    config = FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], density_resolution=96, plane_resolutions=(16,),
                         occupancy_resolution=48, near=near)
    field = Field(config)
    with torch.no_grad():
        r = config.density_resolution
        z = torch.linspace(-1, 1, r)
        dense = math.log(math.expm1(2000.0 / field.density_scale)) - field.density_shift
        raw = torch.where((z < 0.1) | ((z > 0.75) & (z < 0.8)), dense, -30.0)
        field.density_grid[:] = raw.view(1, 1, 1, 1, r).expand_as(field.density_grid)
    field.update_occupancy()
    return field


def looking_down(index: int, tilt_deg: float) -> View:
    K = Intrinsics(160, 120, 150.0, 150.0, 80.0, 60.0)
    pose = np.eye(4)  # OpenGL camera at z = 0.9 looking down -z, tilted about y, aimed at (0, 0, 0.1)
    pose[:3, :3] = rot_y(tilt_deg)
    pose[:3, 3] = np.array([0.0, 0.0, 0.1]) + rot_y(tilt_deg) @ np.array([0.0, 0.0, 0.8])
    return view(index, pose, K)


def test_field_distribution_respects_the_training_near_plane():
    a = looking_down(0, 0.0)
    o, d, _ = pixel_rays(a, np.array([[80.5, 60.5], [40.5, 30.5]]))
    args = torch.from_numpy(o).float(), torch.from_numpy(d).float()
    t, _ = sample_depths(FieldDepth(floor_and_fog(0.3))(*args), "sample", 200, torch.Generator().manual_seed(0))
    assert torch.all(t > 0.3)  # the fog at 0.1..0.15 in front of the camera is never drawn
    median, _ = sample_depths(FieldDepth(floor_and_fog(0.3))(*args), "median")
    assert abs(median[0, 0].item() - 0.8) < 0.03
    fogged, _ = sample_depths(FieldDepth(floor_and_fog(0.0))(*args), "median")
    assert fogged[0, 0].item() < 0.2  # without the near plane the fog is the surface


def test_field_correspondences_on_a_floor_match_the_plane():
    a, b = looking_down(0, 0.0), looking_down(1, 30.0)
    source = FieldDepth(floor_and_fog(0.3))
    pixels = query_pixels(300, seed=1) * 0.4  # the middle of the image
    pixels = np.floor(pixels) + 0.5
    pairs = correspond_pair(source, a, b, pixels, PairOptions(mode="sample", round_trip_px=1.0), seed=0)
    ok = pairs.accepted
    assert ok.mean() > 0.9
    surface_z = float(np.median(pairs.xyz[ok, 2]))
    assert abs(surface_z - 0.1) < 2.0 / 95  # within a density voxel of the plane
    o, d, _ = pixel_rays(a, pixels[ok])
    on_plane = o + ((surface_z - o[:, 2]) / d[:, 2])[:, None] * d
    truth = project_to_view(b, on_plane)[0] - 0.5
    assert np.median(np.linalg.norm(pairs.uv_b[ok] - truth, axis=1)) < 0.5
    mean = correspond_pair(source, a, b, pixels, PairOptions(mode="mean"))
    assert mean.accepted.mean() > 0.9 and set(np.unique(mean.reason)) <= {REASONS["accepted"], REASONS["occluded"]}


def test_pck_is_strict_and_aepe_skips_missing():
    from neurallabel.core.correspond.metrics import aepe, pck, pck_alpha

    errors = np.array([0.5, 3.0, 2.999, np.nan])
    assert pck(errors, 3) == 0.5  # 3.0 is not < 3; NaN (no prediction) is a miss
    assert aepe(errors) == pytest.approx((0.5 + 3.0 + 2.999) / 3)
    assert pck_alpha(errors, 0.01, 300, 200) == pck(errors, 3.0)
    assert np.isnan(pck(np.array([]), 3))


def test_pairs_skip_small_baselines_and_wide_angles_and_queries_stay_in_masks():
    from neurallabel.core.correspond.pairs import query_pixels as queries, select_pairs

    target = np.array([0.0, 0.0, 0.1])
    views = [looking_down(0, 0.0), looking_down(1, 0.5), looking_down(2, 30.0), looking_down(3, 80.0)]
    choice = select_pairs(views, target)
    assert (0, 1) not in choice.pairs and choice.skipped["small_baseline"] >= 1  # 0.5 degrees apart
    assert (0, 2) in choice.pairs and (0, 3) not in choice.pairs and choice.skipped["angle"] >= 1
    assert select_pairs(views, target, seed=1).pairs == choice.pairs
    mask = np.zeros((120, 160), bool)
    mask[10:20, 30:35] = True
    pixels = queries(160, 120, 20, mask=mask, seed=0)
    assert len(pixels) == 20 and mask[pixels[:, 1].astype(int), pixels[:, 0].astype(int)].all()
    assert len(queries(160, 120, 1000, mask=mask)) == 50  # every masked pixel when fewer than asked


def test_open_scene_points_outside_the_box_are_dropped(two_views):
    a, b = two_views
    box = (-1.0, -1.0, -1.03, 1.0, 1.0, 0.0)  # holds the front slab only
    pairs = correspond_pair(SOURCE, a, b, query_pixels(100), PairOptions(box=box), seed=2)
    behind = pairs.depth_a > 1.03
    assert 0 < behind.sum() < 100
    assert np.all((pairs.reason == REASONS["outside_box"]) == behind)


def test_colour_gate_reads_the_nearest_pixels_and_rejects_missing_ones():
    from neurallabel.core.correspond.photometric import colour_difference

    a = np.zeros((3, 4, 3), np.float32)
    b = np.zeros((3, 4, 3), np.float32)
    a[1, 2] = (0.5, 0.2, 0.1)  # row 1, col 2
    b[2, 0] = (0.5, 0.3, 0.1)
    # OpenCV convention: pixel (col, row) is centred on (col, row), so (1.6, 1.4) reads col 2, row 1
    uv_a = np.array([[1.6, 1.4], [2.0, 1.0], [0.0, 0.0], [np.nan, 0.0], [3.6, 0.0]])
    uv_b = np.array([[0.4, 2.3], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    got = colour_difference(a, b, uv_a, uv_b)
    np.testing.assert_allclose(got[:3], [0.1, 0.5, 0.0], atol=1e-6)
    assert np.isinf(got[3]) and np.isinf(got[4]), "NaN or outside the image (col 3.6 rounds to 4): never kept"


def test_a_sharp_surface_is_placed_on_average_where_it_is_and_nothing_before_the_first_sample():
    """Rays whose lattices sit at evenly spread offsets meet a hard wall at distance 1: a sample's density is
    taken at its middle, so the wall's weight belongs between the previous middle and the sample's own. The
    heaviest interval's middle (``mode``) lies within half a step of the wall, the draws (``sample``, spread over
    that interval) within a step, and both on it on average; no weight is placed in front of where a ray's
    marching began."""
    from neurallabel.core.correspond.distribution import from_samples
    from neurallabel.core.render.samples import RaySamples

    step, n_rays, per_ray = 0.01, 200, 150
    offsets = (torch.arange(n_rays, dtype=torch.float64) + 0.5) / n_rays * step
    starts = (0.3 + offsets[:, None] + torch.arange(per_ray, dtype=torch.float64)[None, :] * step).reshape(-1)
    samples = RaySamples(torch.arange(n_rays).repeat_interleave(per_ray), starts.float(), (starts + step).float(),
                         n_rays)
    dist = from_samples(samples.with_values(sigmas=torch.where(samples.mids >= 1.0, 1e4, 0.0)))
    mode, _ = sample_depths(dist, "mode")
    assert float((mode - 1.0).abs().max()) <= step / 2 + 1e-5
    assert abs(float((mode - 1.0).mean())) < 0.02 * step
    drawn, _ = sample_depths(dist, "sample", n=64, generator=torch.Generator().manual_seed(0))
    assert float((drawn - 1.0).abs().max()) <= step + 1e-5
    assert abs(float((drawn - 1.0).mean())) < 0.02 * step
    first = dist.t_starts.view(n_rays, per_ray)[:, 0]
    assert torch.equal(first, samples.t_starts.view(n_rays, per_ray)[:, 0])
