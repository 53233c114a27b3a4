"""Checkpoints: round trip with identical renders, refusal of other versions and of damaged files, devices."""

from __future__ import annotations

import pytest
import torch

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from neurallabel.core.field.checkpoint import (VERSION, Checkpoint, check_dataset, check_finite,
                                               dataset_fingerprint, load_checkpoint, save_checkpoint)
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.field.model import Field, FieldConfig, load_field
from neurallabel.core.render.views import render_rays


def trained_looking_field() -> Field:
    torch.manual_seed(3)
    field = Field(FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], density_resolution=32,
                              plane_resolutions=(16, 32), occupancy_resolution=32))
    with torch.no_grad():
        field.density_grid.normal_(0.0, 4.0)
        for p in field.mlp.parameters():
            p.normal_(0.0, 0.5)
        field.background_rgb.fill_(0.25)
    field.resize_density(40)  # a grown grid must load back at its grown size
    field.update_occupancy()
    return field


def rays(n: int = 200):
    g = torch.Generator().manual_seed(0)
    origins = torch.rand(n, 3, generator=g) * 0.4 - 0.2
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return origins, directions


def test_round_trip_gives_identical_renders(tmp_path):
    field = trained_looking_field()
    path = tmp_path / "field.pt"
    save_checkpoint(path, field, dataset={"fingerprint": "abc"}, training={"step": 7})
    assert [p.name for p in tmp_path.iterdir()] == ["field.pt"]  # no temporary file left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint.training["step"] == 7 and checkpoint.dataset["fingerprint"] == "abc"
    loaded = load_field(path)
    assert loaded.config == field.config
    assert torch.equal(loaded.occupancy.binaries, field.occupancy.binaries)
    o, d = rays()
    a, b = render_rays(field, o, d), render_rays(loaded, o, d)
    for key in ("rgb", "opacity", "distance", "median_distance"):
        assert torch.equal(a[key], b[key]), key
    assert (a["opacity"] > 0.5).any()  # the comparison covers real surfaces


def test_other_version_damaged_and_missing_files_are_clear_errors(tmp_path):
    field = trained_looking_field()
    path = tmp_path / "field.pt"
    save_checkpoint(path, field)
    payload = torch.load(path, weights_only=True)
    payload["version"] = VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(NeuralLabelError, match="version 2 is not supported"):
        load_field(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(NeuralLabelError, match="not a NeuralLabel field checkpoint"):
        load_field(tmp_path / "junk.pt")
    with pytest.raises(NeuralLabelError, match="does not exist"):
        load_field(tmp_path / "missing.pt")
    payload["version"] = VERSION
    payload["config"]["colour_space"] = "srgb"
    torch.save(payload, tmp_path / "unknown_key.pt")
    with pytest.raises(NeuralLabelError, match="unknown keys: colour_space"):
        load_field(tmp_path / "unknown_key.pt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_field_loads_on_cpu_and_back(tmp_path):
    field = trained_looking_field().to("cuda")
    save_checkpoint(tmp_path / "cuda.pt", field)
    on_cpu = load_field(tmp_path / "cuda.pt", device="cpu")
    assert on_cpu.aabb.device.type == "cpu"
    save_checkpoint(tmp_path / "cpu.pt", on_cpu)
    back = load_field(tmp_path / "cpu.pt", device="cuda")
    assert torch.equal(back.density_grid.cpu(), field.density_grid.cpu())


def test_a_checkpoint_with_a_cached_nerfacc_estimator_loads(tmp_path):
    # Fields once cached nerfacc's OccGridEstimator on their occupancy grid when marching on CUDA: as a
    # sub-module its buffers went into the state dict and the strict load called the file damaged.
    from nerfacc import OccGridEstimator  # builds without CUDA

    field = trained_looking_field()
    grid = field.occupancy
    estimator = OccGridEstimator(roi_aabb=grid.aabbs[0], resolution=grid.resolution, levels=grid.levels)
    estimator.binaries.copy_(grid.binaries)
    grid._estimator = estimator  # where the CUDA path kept it
    assert any(key.startswith("occupancy._estimator.") for key in field.state_dict())
    save_checkpoint(tmp_path / "cuda-trained.pt", field)
    loaded = load_field(tmp_path / "cuda-trained.pt")
    assert not any("_estimator" in key for key in loaded.state_dict())
    assert torch.equal(loaded.occupancy.binaries, grid.binaries)


def test_checkpoints_are_readable_as_the_umask_allows(tmp_path):
    field = trained_looking_field()
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "shared.pt", field)
    finally:
        os.umask(old)
    assert (tmp_path / "shared.pt").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["shared.pt"]


def _frames(n: int, shift: float = 0.0):
    intrinsics = SimpleNamespace(width=16, height=12, fx=20.0, fy=20.0, cx=8.0, cy=6.0, distortion=())
    poses = [np.eye(4) for _ in range(n)]
    for i, pose in enumerate(poses):
        pose[0, 3] = 0.1 * i + shift
    return [SimpleNamespace(image_path=Path(f"images/{i:03d}.png"), cam_to_data=pose, intrinsics=intrinsics)
            for i, pose in enumerate(poses)]


def test_check_dataset_names_both_datasets():
    frames = _frames(3)
    checkpoint = Checkpoint(trained_looking_field(), dataset={"path": "/data/a/transforms.json",
                                                              "fingerprint": dataset_fingerprint(frames)})
    check_dataset(checkpoint, _frames(3), "/data/a/transforms.json")  # the same frames: fine
    with pytest.raises(NeuralLabelError, match=r"trained on other frames \(/data/a/transforms.json\).*/data/b") as info:
        check_dataset(checkpoint, _frames(3, shift=0.01), "/data/b", what="data")
    assert info.value.field == "data"


def test_check_finite_refuses_a_diverged_field():
    field = trained_looking_field()
    check_finite(field)
    with torch.no_grad():
        field.density_grid[0, 0, 3, 4, 5] = float("nan")
        field.density_grid[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(NeuralLabelError, match="damaged field: 2 of"):
        check_finite(field)


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_field_path_that_is_not_a_regular_file_says_so(tmp_path: Path, kind: str) -> None:
    import os

    odd = Path("/dev/zero") if kind == "device" else tmp_path / "odd"
    if kind == "directory":
        odd.mkdir()
    elif kind == "fifo":
        os.mkfifo(odd)
    with pytest.raises(NeuralLabelError, match=r"field checkpoint is not a regular file") as info:
        load_checkpoint(odd)
    assert info.value.field == "field"
