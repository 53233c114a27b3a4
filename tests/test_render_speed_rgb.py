"""Inference renders colour only the samples that weigh (issues 11 and 17): the same depth outputs, RGB within
the skipped weight of the full sum, and training, with gradients, still colours every sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.geometry.cameras import camera_rays
from neurallabel.core.field.model import load_field
from neurallabel.core.render.march import march
from neurallabel.core.render.views import render_frame, render_rays
from neurallabel.core.render.volrend import COLOUR_MAX_SKIPPED, COLOUR_MIN_WEIGHT, composite, weights_from_density
from neurallabel.core.train.loop import TrainOptions, train_field

from test_render import solid_below


@pytest.fixture(scope="module")
def trained(small_scene, tmp_path_factory):
    """A field trained 30 steps on the small scene and its test frames. Still foggy: most of its samples are
    faint, but together they weigh more than the bound on most rays, which the guard then colours in full."""
    out = tmp_path_factory.mktemp("fastrgb") / "field.pt"
    train_field(small_scene, out, TrainOptions(steps=30, device="cpu"))
    dataset = load_dataset(small_scene)
    return load_field(out), dataset.split("test") or dataset.frames


class CountingRgb:
    """Stands in for ``field.rgb``: the same colours, and how many points were asked for."""

    def __init__(self, field):
        self.rgb, self.points = field.rgb, 0

    def __call__(self, points, directions):
        self.points += len(points)
        return self.rgb(points, directions)


def camera_rays_of(frame, every: int):
    """Every ``every``-th ray of the frame's camera (a few thousand: the young field marches ~150 samples each)."""
    origins, directions, _ = camera_rays(frame.intrinsics, frame.cam_to_data)
    return torch.from_numpy(origins[::every]).float(), torch.from_numpy(directions[::every]).float()


def faint_weight_per_ray(out, n_rays):
    """What the skipping rule drops: per ray, the weight of samples under the threshold, or 0 where the guard
    colours the whole ray."""
    weights = out["weights"]
    faint = torch.zeros(n_rays).index_add_(0, out["ray_indices"], torch.where(weights < COLOUR_MIN_WEIGHT,
                                                                             weights, 0.0))
    return torch.where(faint > COLOUR_MAX_SKIPPED, 0.0, faint)


def test_fast_rgb_stays_within_the_skipped_weight_of_the_exact_render_on_a_trained_field(trained, monkeypatch):
    field, frames = trained
    origins, directions = camera_rays_of(frames[0], 4)
    counter = CountingRgb(field)
    monkeypatch.setattr(field, "rgb", counter)
    fast = render_rays(field, origins, directions, return_samples=True)
    coloured = counter.points
    exact = render_rays(field, origins, directions, return_samples=True, exact_rgb=True)
    assert counter.points - coloured == len(exact["weights"])  # the exact render colours every sample
    assert coloured < len(fast["weights"])  # the fast one skips faint samples where they weigh little
    for key in ("opacity", "distance", "median_distance", "ray_indices", "t_starts", "t_ends", "weights"):
        assert torch.equal(fast[key], exact[key]), key
    error = (fast["rgb"] - exact["rgb"]).abs().amax(dim=-1)
    bound = faint_weight_per_ray(exact, len(origins))
    assert bool((error <= bound + 1e-6).all())  # colours lie in [0, 1]: a skipped sample moves a pixel <= its weight
    assert float(error.max()) <= COLOUR_MAX_SKIPPED + 1e-6
    psnr = 10 * np.log10(1.0 / float(((fast["rgb"] - exact["rgb"]).double() ** 2).mean()))
    assert psnr > 50.0


def test_render_frame_outputs_other_than_rgb_are_the_same_bits(trained):
    field, frames = trained
    frame = frames[-1]
    pixels = np.stack(np.meshgrid(np.arange(0.5, frame.intrinsics.width, 3),
                                  np.arange(0.5, frame.intrinsics.height, 3)), axis=-1).reshape(-1, 2)
    fast = render_frame(field, frame.intrinsics, frame.cam_to_data, pixels=pixels)
    exact = render_frame(field, frame.intrinsics, frame.cam_to_data, pixels=pixels, exact_rgb=True)
    for key in ("opacity", "distance", "z_depth", "median_z_depth"):
        assert np.array_equal(fast[key], exact[key], equal_nan=True), key
    assert np.abs(fast["rgb"] - exact["rgb"]).max() <= COLOUR_MAX_SKIPPED + 1e-6


def test_a_ray_whose_faint_samples_weigh_more_than_the_bound_is_coloured_at_every_sample():
    # faint density all along the rays: every sample weighs little, together they make the colour
    fog = solid_below(0.99, density=0.25)
    origins = torch.tensor([[0.0, 0.0, 0.95], [0.3, 0.1, 0.95]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    out = render_rays(fog, origins, directions, return_samples=True)
    assert bool((out["weights"] < COLOUR_MIN_WEIGHT).all()) and float(out["opacity"].min()) > COLOUR_MAX_SKIPPED
    exact = render_rays(fog, origins, directions, exact_rgb=True)
    assert torch.equal(out["rgb"], exact["rgb"])


def test_a_solid_surface_behind_a_faint_layer_skips_the_layer_and_keeps_the_surface(monkeypatch):
    field = solid_below(-0.5)
    # a thin faint layer around z = 0.3 (the grid's last axis is z): each step's opacity ~1.5e-3, above the
    # marcher's alpha threshold and under the colour threshold
    sigma = 1.5e-3 / field.render_step_size
    with torch.no_grad():
        z = torch.linspace(-1, 1, field.config.density_resolution)
        field.density_grid[..., (z - 0.3).abs() < 0.02] = math.log(math.expm1(sigma / field.density_scale)) \
            - field.density_shift
    field.update_occupancy(samples_per_cell=16)
    origins = torch.tensor([[0.0, 0.0, 0.9], [0.2, -0.2, 0.9]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    counter = CountingRgb(field)
    monkeypatch.setattr(field, "rgb", counter)
    fast = render_rays(field, origins, directions, return_samples=True)
    exact = render_rays(field, origins, directions, exact_rgb=True)
    weights = fast["weights"]
    faint = weights < COLOUR_MIN_WEIGHT
    assert int(faint.sum()) >= 2 and float(weights[faint].sum()) / 2 < COLOUR_MAX_SKIPPED  # the layer
    assert counter.points - len(weights) == int((~faint).sum())  # fast coloured only the surface's samples
    assert bool((fast["opacity"] > 0.99).all())
    error = (fast["rgb"] - exact["rgb"]).abs().amax(dim=-1)
    assert bool((error <= faint_weight_per_ray(fast, 2) + 1e-6).all()) and float(error.max()) > 0


def reference_rgb(field, origins, directions, samples):
    """Training's colour sum as it was: every sample coloured, summed per ray with index_add (the CPU's segment
    sum gives the same bits)."""
    weights, _ = weights_from_density(samples, samples.sigmas)
    rgb = field.rgb(samples.points(origins, directions), directions[samples.ray_indices])
    colour = torch.zeros(len(origins), 3).index_add(0, samples.ray_indices, weights[:, None] * rgb)
    opacity = torch.zeros(len(origins)).index_add(0, samples.ray_indices, weights)
    return colour + (1.0 - opacity[:, None]) * field.background_rgb.clamp(0.0, 1.0)


def test_with_gradients_every_sample_is_coloured_and_the_gradients_are_the_full_sums(trained, monkeypatch):
    field, frames = trained
    origins, directions = camera_rays_of(frames[0], 29)
    samples = march(field, origins, directions, near=field.config.near)
    samples = samples.with_values(sigmas=field.density(samples.points(origins, directions)))
    assert bool((weights_from_density(samples, samples.sigmas)[0] < COLOUR_MIN_WEIGHT).any())

    def grads(render):
        field.zero_grad()
        sigmas = field.density(samples.points(origins, directions))
        rgb = render(samples.with_values(sigmas=sigmas))
        rgb.square().sum().backward()
        return rgb.detach(), {name: p.grad.clone() for name, p in field.named_parameters() if p.grad is not None}

    counter = CountingRgb(field)
    monkeypatch.setattr(field, "rgb", counter)
    # skip_faint asks for the inference path; with autograd recording it must not take it
    rgb, got = grads(lambda s: composite(field, origins, directions, s, skip_faint=True, median=False)[0]["rgb"])
    assert counter.points == len(samples)
    want_rgb, want = grads(lambda s: reference_rgb(field, origins, directions, s))
    assert torch.equal(rgb, want_rgb)
    assert set(got) == set(want) and {"density_grid", "mlp.0.weight", "planes.0"} <= set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_chunks_of_rays_and_of_coloured_points_give_the_same_bits(trained, monkeypatch):
    """CPU renders march a few thousand rays at a time and colour tens of thousands of points at a time (so their
    arrays stay in reused memory): every output is the one-chunk render's, bit for bit, but for the colours'
    last bits: MKL multiplies a batch of at most ~10 rows (a chunk's tail) with other kernels than a big one,
    and on AVX-512 machines they round differently."""
    import neurallabel.core.field.model as model

    field, frames = trained
    origins, directions = camera_rays_of(frames[0], 4)
    whole = render_rays(field, origins, directions, return_samples=True, chunk=len(origins))
    monkeypatch.setattr(model, "RGB_CHUNK", 997)
    chunked = render_rays(field, origins, directions, return_samples=True, chunk=389)
    assert len(whole["weights"]) > 997 * 10
    for key in whole:
        if key == "rgb":
            assert torch.allclose(whole[key], chunked[key], rtol=0.0, atol=1e-6)
        else:
            assert torch.equal(whole[key], chunked[key]), key
