"""Checkpoints: round trip with identical renders, refusal of other versions and of damaged files, devices."""

from __future__ import annotations

import pytest
import torch

from neurallabel.core.field.checkpoint import VERSION, load_checkpoint, save_checkpoint
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.field.model import Field, FieldConfig, load_field
from neurallabel.core.render.volume import render_rays


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
