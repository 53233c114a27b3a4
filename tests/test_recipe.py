"""The one training recipe: bounds from what real captures carry (cameras, SfM points, aabb_scale as a hint),
refusals for captures without a common subject and for SfM points in another frame, and regularisers
measured in normalised contracted distance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from neurallabel.core.data.colmap import SparsePoints
from neurallabel.core.data.dataset import Dataset, Frame
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.field.model import Field, FieldConfig
from neurallabel.core.geometry.cameras import Intrinsics, project_points
from neurallabel.core.render.samples import RaySamples, in_contracted_distance
from neurallabel.core.train import bounds

INTRINSICS = Intrinsics(width=200, height=150, fx=180.0, fy=180.0, cx=100.0, cy=75.0)


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    back = eye - target
    back = back / np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, np.cross(back, right), back, eye
    return pose


def orbit(n: int = 12, radius: float = 2.0, target=(0.3, -0.2, 0.1)) -> list[Frame]:
    target = np.asarray(target, dtype=float)
    frames = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = target + radius * np.array([math.cos(a) * 0.8, math.sin(a) * 0.8, 0.6])
        frames.append(Frame(i, Path(f"/x/{i}.png"), look_at(eye, target), INTRINSICS, file_path=f"{i}.png"))
    return frames


def test_the_look_at_point_of_an_orbit_and_the_bounds_around_it():
    frames = orbit()
    centre = bounds.look_at_centre(frames)
    assert centre == pytest.approx([0.3, -0.2, 0.1], abs=1e-6)
    config = bounds.field_config_for(Dataset(Path("/x"), frames))
    roi = np.array(config.roi_aabb)
    assert roi.mean(axis=0) == pytest.approx([0.3, -0.2, 0.1], abs=1e-6)
    assert (roi[1] - roi[0]) == pytest.approx([2.0] * 3)  # half the camera distance each side
    assert config.levels == bounds.MIN_LEVELS and config.cone_angle > 0


@pytest.mark.parametrize("aabb_scale,levels", [(None, 5), (1, 5), (4, 5), (16, 5), (128, 8), (4096, 8)])
def test_aabb_scale_is_a_hint_for_how_far_the_background_reaches(aabb_scale, levels):
    dataset = Dataset(Path("/x"), orbit(), aabb_scale=aabb_scale)
    assert bounds.field_config_for(dataset).levels == levels


def test_a_generator_bounds_key_changes_nothing():
    frames = orbit()
    plain = bounds.field_config_for(Dataset(Path("/x"), frames))
    keyed = bounds.field_config_for(Dataset(Path("/x"), frames, extra={"scene_aabb": [[-9, -9, -9], [9, 9, 9]]}))
    assert plain == keyed


def test_cameras_without_a_common_subject_are_refused_in_one_line():
    # a walk along a corridor: every camera looks ahead along +x, side by side
    frames = [Frame(i, Path(f"/x/{i}.png"), look_at(np.array([0.0, i * 1.0, 0.0]), np.array([5.0, i * 1.0, 0.3 * (i % 2)])),
                    INTRINSICS) for i in range(6)]
    with pytest.raises(NeuralLabelError, match="do not look at a common region") as error:
        bounds.field_config_for(Dataset(Path("/x"), frames))
    assert error.value.field == "data" and "\n" not in str(error.value)
    # cameras looking outwards from a circle
    outward = [Frame(i, Path(f"/x/{i}.png"), look_at(np.array([math.cos(a), math.sin(a), 0.0]),
                                                     np.array([3 * math.cos(a), 3 * math.sin(a), 0.0])), INTRINSICS)
               for i, a in enumerate(np.linspace(0, 2 * math.pi, 8, endpoint=False))]
    with pytest.raises(NeuralLabelError, match="common region"):
        bounds.look_at_centre(outward)


def sparse_for(frames: list[Frame], points: np.ndarray, shift=np.zeros(3)) -> SparsePoints:
    obs_point, obs_frame, obs_pixel = [], [], []
    for f in frames:
        pixels, z = project_points(f.intrinsics, f.cam_to_data, points)
        seen = np.nonzero((z > 0) & (pixels[:, 0] > 0) & (pixels[:, 0] < 200) & (pixels[:, 1] > 0) & (pixels[:, 1] < 150))[0]
        obs_point += list(seen)
        obs_frame += [f.index] * len(seen)
        obs_pixel += list(pixels[seen])
    return SparsePoints(points + shift, np.zeros((len(points), 3), np.uint8), np.full(len(points), 0.5),
                        np.array(obs_point), np.array(obs_frame), np.array(obs_pixel))


def test_sfm_points_set_the_subject_box_and_points_in_another_frame_are_named(monkeypatch):
    frames = orbit()
    rng = np.random.default_rng(0)
    subject = np.array([0.3, -0.2, 0.1]) + rng.uniform(-0.6, 0.6, size=(400, 3))
    dataset = Dataset(Path("/x/transforms.json"), frames)
    monkeypatch.setattr(bounds, "load_sparse_points", lambda d: sparse_for(frames, subject))
    roi = np.array(bounds.field_config_for(dataset).roi_aabb)
    # the points' 5-95 % extent (1.08), 15 % larger; not the cameras' default (2.0)
    assert 1.15 < (roi[1] - roi[0])[0] < 1.35
    monkeypatch.setattr(bounds, "load_sparse_points", lambda d: sparse_for(frames, subject, shift=np.array([0.0, 0.0, 0.5])))
    with pytest.raises(NeuralLabelError, match="SfM points disagree with the camera poses") as error:
        bounds.field_config_for(dataset)
    assert "transforms.json" in str(error.value) and "worst frame" in str(error.value)


def test_contracted_distance_is_linear_inside_the_region_and_bounded_outside():
    field = Field(FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], levels=5, density_resolution=8,
                              plane_resolutions=(4,), occupancy_resolution=8))
    origins = torch.tensor([[0.0, 0.0, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0]])
    t = torch.tensor([0.2, 0.4, 0.6, 5.0, 50.0])
    samples = RaySamples(torch.zeros(5, dtype=torch.long), t, t + 0.1, 1)
    s = in_contracted_distance(samples, origins, directions, field.normalize, near=0.0)
    # inside the region: world / (2 x half width), as the grid sees it
    assert s.mids[:3].tolist() == pytest.approx([0.125, 0.225, 0.325], abs=1e-6)
    assert s.deltas[:3].tolist() == pytest.approx([0.05] * 3, abs=1e-6)
    # far out: the whole infinite background fits in half a unit, and its intervals shrink
    assert float(s.mids[-1]) < 1.0 and float(s.deltas[-1]) < 1e-3
    # two rays: each restarts from its own start point
    two = RaySamples(torch.tensor([0, 0, 1]), torch.tensor([0.2, 0.4, 0.2]), torch.tensor([0.3, 0.5, 0.3]), 2)
    s2 = in_contracted_distance(two, torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), field.normalize, 0.0)
    assert s2.mids.tolist() == pytest.approx([0.125, 0.225, 0.125], abs=1e-6)


def test_background_density_is_per_contracted_length():
    config = FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], levels=5, density_resolution=16,
                         plane_resolutions=(4,), occupancy_resolution=8)
    plain = Field(config)
    scaled = Field(FieldConfig(**{**config.__dict__, "contracted_density": True}))
    scaled.load_state_dict(plain.state_dict())
    points = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.99, 0.0], [3.0, 0.0, 0.0], [0.0, -10.0, 4.0]])
    ratio = (scaled.density(points) / plain.density(points)).tolist()
    # inside the region: the same; outside: 1 / norm^2 (norm in region half-widths)
    assert ratio == pytest.approx([1.0, 1.0, 1 / 9, 1 / 100], rel=1e-5)
    assert torch.equal(plain.normalize(points), scaled.normalize(points))
    # a trained field's config records it; an older checkpoint's config (without the key) keeps plain density
    assert FieldConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "contracted_density"}
                                 ).contracted_density is False
