"""The CUDA path, prepared on the CPU: the marcher's fallback when nerfacc's kernels are missing, the
deterministic per-ray sums, the 3-byte ray bank and its memory-mapped spill, 32-bit view counts, the CUDA
defaults and the dry run of scripts/gpu_check.sh; and, where CUDA exists, CPU/CUDA agreement, a CUDA
train -> save -> load -> render and byte-identical CUDA renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neurallabel.core.data.dataset import Frame
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.field.model import Field, FieldConfig, load_field
from neurallabel.core.geometry.cameras import Intrinsics, camera_rays
from neurallabel.core.labels.raycast import MeshCaster, default_backend
from neurallabel.core.render import march as march_module
from neurallabel.core.render.march import choose_backend, march_cpu, march_nerfacc, nerfacc_kernels
from neurallabel.core.render.samples import RaySamples
from neurallabel.core.render.views import render_frame
from neurallabel.core.render.volrend import composite, segment_sum
from neurallabel.core.synth.poses import look_at
from neurallabel.core.train import batch as batch_module
from neurallabel.core.train import loop as loop_module
from neurallabel.core.train.batch import load_ray_bank, render_train
from neurallabel.core.train.bounds import views_per_vertex
from neurallabel.core.train.loop import TrainOptions, train_field

REPO = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def write_orbit_scene(folder: Path, views: int = 12, width: int = 64, height: int = 48, supersample: int = 2) -> Path:
    """A bpy-free scene (scripts/gpu_check.sh uses it too): a ball coloured by its normal on a chequered disc
    (white beyond it), seen by ``views`` cameras on an orbit, ray-cast analytically into PNGs and a
    transforms.json. Each pixel averages ``supersample``² rays, as a camera integrates over its pixel: an
    aliased chequer would differ from view to view, which no field can learn."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    focal = 0.9 * width
    k = supersample
    fine = Intrinsics(width * k, height * k, focal * k, focal * k, width * k / 2, height * k / 2)
    frames = []
    for n in range(views):
        angle = 2 * np.pi * n / views
        pose = look_at(np.array([2.6 * np.cos(angle), 2.6 * np.sin(angle), 1.2]), np.zeros(3))
        o, d, _ = camera_rays(fine, pose)
        b = np.einsum("ij,ij->i", o, d)
        disc = b * b - (np.einsum("ij,ij->i", o, o) - 0.25)
        t_ball = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        t_floor = np.where(d[:, 2] < -1e-9, (-0.5 - o[:, 2]) / np.where(d[:, 2] < -1e-9, d[:, 2], -1), np.inf)
        p = o + np.where(np.isfinite(t_floor), t_floor, 0.0)[:, None] * d
        t_floor[np.hypot(p[:, 0], p[:, 1]) > 2.0] = np.inf  # a disc, not a plane to the horizon
        rgb = np.ones((len(o), 3))
        floor = (t_floor < t_ball) & np.isfinite(t_floor)
        checker = ((np.floor(p[:, 0] * 4) + np.floor(p[:, 1] * 4)) % 2)[:, None]
        rgb[floor] = (0.25 + 0.5 * checker * np.array([1.0, 0.8, 0.6]))[floor]
        ball = np.isfinite(t_ball) & (t_ball <= t_floor)
        normal = (o + t_ball[:, None] * d) / 0.5
        rgb[ball] = (0.5 + 0.5 * normal)[ball]
        rgb = rgb.reshape(height, k, width, k, 3).mean(axis=(1, 3))
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(folder / "images" / f"{n:06d}.png")
        frames.append({"file_path": f"images/{n:06d}.png", "transform_matrix": pose.tolist(),
                       "split": "test" if n % 6 == 5 else "train"})
    meta = {"camera_model": "PINHOLE", "w": width, "h": height, "fl_x": focal, "fl_y": focal, "cx": width / 2,
            "cy": height / 2, "frames": frames}  # no bounds key: real captures carry none
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def orbit_scene(tmp_path_factory) -> Path:
    return write_orbit_scene(tmp_path_factory.mktemp("orbit"))


def small_field(levels: int = 1) -> Field:
    torch.manual_seed(0)
    return Field(FieldConfig(roi_aabb=[[-1, -1, -1], [1, 1, 1]], levels=levels, density_resolution=32,
                             plane_resolutions=(16,), occupancy_resolution=32))


def blob_field(levels: int = 1, device: str = "cpu") -> Field:
    """A dense ball of radius 0.5 at the origin (trilinear density grid), occupancy refreshed."""
    field = small_field(levels)
    with torch.no_grad():
        r = field.config.density_resolution
        axis = torch.linspace(-1, 1, r)
        x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
        inside = (x * x + y * y + z * z).sqrt() < 0.5
        field.density_grid[:] = torch.where(inside, 2.0, -30.0).view(1, 1, r, r, r)
    field = field.to(device)
    field.update_occupancy(samples_per_cell=8)
    return field


def rays(n: int, device: str = "cpu", seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    origins = torch.randn(n, 3, generator=g)
    origins = 2.5 * origins / origins.norm(dim=-1, keepdim=True)
    target = torch.rand(n, 3, generator=g) * 0.8 - 0.4
    directions = target - origins
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return origins.to(device), directions.to(device)


# --- marcher backend ----------------------------------------------------------------------------------------


def test_nerfacc_visibility_gets_int64_offsets_as_nerfacc_packs_them(monkeypatch):
    """nerfacc's scan kernels refuse int32 ray offsets ("expected scalar type Long", the first GPU run's
    failure). Its kernels need CUDA (its ``pack_info`` too), so its traversal and visibility are stood in for
    here: the offsets :func:`march_nerfacc` hands over must be what ``pack_info`` makes, (start, count) per ray
    in int64."""
    from types import SimpleNamespace

    import nerfacc.grid
    import nerfacc.volrend

    field = blob_field(1)
    assert field.config.cone_angle == 0  # one traversal
    per_ray = [torch.tensor([0.5, 0.6, 0.7, 0.8]), torch.tensor([]), torch.tensor([1.0, 1.1, 1.2])]
    ray_indices = torch.cat([torch.full((max(len(t) - 1, 0),), i) for i, t in enumerate(per_ray)]).long()

    def traverse_grids(origins, directions, binaries, aabbs, **kwargs):
        left = torch.cat([torch.arange(len(t)) < len(t) - 1 for t in per_ray])
        right = torch.cat([torch.arange(len(t)) > 0 for t in per_ray])
        intervals = SimpleNamespace(vals=torch.cat(per_ray), is_left=left, is_right=right)
        return intervals, SimpleNamespace(ray_indices=ray_indices.int()), None

    seen = {}

    def visibility(*, t_starts, t_ends, sigmas, packed_info, **kwargs):
        seen["packed_info"] = packed_info
        return torch.ones_like(t_starts, dtype=torch.bool)

    monkeypatch.setattr(nerfacc.grid, "traverse_grids", traverse_grids)
    monkeypatch.setattr(nerfacc.volrend, "render_visibility_from_density", visibility)
    origins, directions = rays(3)
    samples = march_nerfacc(field, origins, directions)
    counts = torch.tensor([3, 0, 2])
    expected = torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)
    assert seen["packed_info"].dtype == expected.dtype == torch.int64
    assert torch.equal(seen["packed_info"], expected)
    assert samples.ray_indices.tolist() == ray_indices.tolist()
    assert torch.allclose(samples.t_starts, torch.tensor([0.5, 0.6, 0.7, 1.0, 1.1]))



def test_cuda_without_nerfacc_kernels_marches_in_torch_and_says_so(monkeypatch):
    monkeypatch.setattr(march_module, "nerfacc_kernels", lambda: "nvcc not found")
    backend, notice = choose_backend("cuda")
    assert backend == "torch" and "nvcc not found" in notice and "pure-torch" in notice
    assert choose_backend("cpu") == ("numba", None)
    with pytest.raises(NeuralLabelError) as caught:
        choose_backend("cuda", "nerfacc")
    assert caught.value.field == "backend"
    monkeypatch.setattr(march_module, "nerfacc_kernels", lambda: None)
    assert choose_backend("cuda") == ("nerfacc", None)
    with pytest.raises(NeuralLabelError):
        choose_backend("cpu", "fast")


def test_the_kernel_probe_runs_once_per_process():
    first = nerfacc_kernels()
    assert nerfacc_kernels() is first and nerfacc_kernels.cache_info().hits >= 1
    if not torch.cuda.is_available():
        assert first == "no CUDA device"


def test_training_reports_the_fallback_once(orbit_scene, tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "choose_backend", lambda device, backend: ("torch", "no kernels: slow path"))
    heard = []
    result = train_field(orbit_scene, tmp_path / "f.pt", TrainOptions(steps=2, device="cpu"),
                         notice=heard.append)
    assert heard == ["no kernels: slow path"]
    assert result.marcher == "torch" and result.to_dict()["marcher_notice"] == "no kernels: slow path"


def test_training_marches_with_the_marcher_asked_for(orbit_scene, tmp_path, monkeypatch):
    used = []
    real = batch_module.march

    def spy(*args, backend="auto", **kwargs):
        used.append(backend)
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(batch_module, "march", spy)
    result = train_field(orbit_scene, tmp_path / "f.pt", TrainOptions(steps=2, device="cpu", marcher="torch"))
    assert result.marcher == "torch" and used == ["torch", "torch"]
    with pytest.raises(NeuralLabelError) as caught:
        train_field(orbit_scene, tmp_path / "g.pt", TrainOptions(steps=2, device="cpu", marcher="fast"))
    assert caught.value.field == "marcher"


# --- mesh casting ---------------------------------------------------------------------------------------------


def test_meshes_are_cast_by_embree_on_every_device():
    import trimesh

    assert default_backend("cuda") == "embree" == default_backend("cpu")
    with pytest.raises(NeuralLabelError, match="embree"):
        MeshCaster([trimesh.creation.box()], backend="torch")


# --- per-ray sums and training renders ------------------------------------------------------------------------


def test_segment_sums_are_index_adds_bits_on_the_cpu():
    g = torch.Generator().manual_seed(0)
    ray_indices = torch.sort(torch.randint(0, 500, (20000,), generator=g)).values
    samples = RaySamples(ray_indices, torch.zeros(20000), torch.ones(20000), 600)
    values = torch.rand(20000, 3, generator=g)
    expected = torch.zeros(600, 3).index_add(0, ray_indices, values)
    assert torch.equal(segment_sum(values, samples), expected)
    assert torch.equal(segment_sum(values[:, 0], samples), expected[:, 0])
    empty = RaySamples.empty(4, "cpu")
    assert torch.equal(segment_sum(torch.zeros(0), empty), torch.zeros(4))


def test_training_renders_skip_the_median():
    field = blob_field()
    origins, directions = rays(64)
    out, _ = render_train(field, origins, directions)
    assert "median_distance" not in out and out["rgb"].shape == (64, 3)
    samples = march_cpu(field, origins, directions)
    full, _ = composite(field, origins, directions, samples)
    assert torch.isfinite(full["median_distance"]).any()


def test_cuda_gets_larger_batches():
    options = TrainOptions()
    assert options.batch_sizes(torch.device("cuda")) == (1 << 18, 1 << 16)
    assert options.batch_sizes(torch.device("cpu")) == (1 << 16, 8192)
    assert TrainOptions(samples_per_step=100, max_rays_per_step=7).batch_sizes(torch.device("cuda")) == (100, 7)


# --- ray bank ---------------------------------------------------------------------------------------------------


def synthetic_frames(count: int, intrinsics: list[Intrinsics]) -> list[Frame]:
    frames = []
    for n in range(count):
        pose = np.eye(4)
        angle = 0.3 * n
        pose[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        pose[:3, 3] = [n * 0.1, 0.2, 3.0]
        frames.append(Frame(n, Path(f"/nowhere/{n}.png"), pose, intrinsics[n % len(intrinsics)]))
    return frames


def synthetic_image(frame: Frame) -> np.ndarray:
    i = frame.intrinsics
    rng = np.random.default_rng(frame.index)
    return rng.integers(0, 256, (i.height, i.width, 3)).astype(np.float32) / 255.0


def test_ray_bank_keeps_three_bytes_per_pixel_and_spills_past_its_budget(tmp_path):
    cams = [Intrinsics(8, 6, 7.0, 7.0, 4.0, 3.0), Intrinsics(8, 6, 9.0, 9.0, 4.2, 3.1)]
    frames = synthetic_frames(5, cams)
    in_ram = load_ray_bank(frames, load=synthetic_image)
    mapped = load_ray_bank(frames, load=synthetic_image, ram_budget=10, spill_dir=tmp_path)
    assert not in_ram.mapped and mapped.mapped
    assert len(in_ram) == 5 * 48 and in_ram.directions_cam.shape == (2, 48, 3)
    tables = in_ram.nbytes - 3 * len(in_ram)
    assert tables == 2 * 48 * 3 * 4 + 5 * 8 + 5 * 9 * 4 + 5 * 3 * 4
    assert np.array_equal(np.asarray(mapped.rgb), in_ram.rgb)
    assert list(tmp_path.iterdir()) == []  # the spill file is anonymous: nothing to clean up
    index = torch.tensor([0, 47, 48, 100, 239])
    for bank in (in_ram, mapped):
        o, d, rgb = bank.rays(index)
        for row, i in enumerate(index.tolist()):
            frame, pixel = frames[i // 48], i % 48
            o_ref, d_ref, _ = camera_rays(frame.intrinsics, frame.cam_to_data)
            assert np.allclose(o[row].numpy(), o_ref[pixel], atol=1e-6)
            assert np.allclose(d[row].numpy(), d_ref[pixel], atol=1e-6)
            expected = synthetic_image(frame).reshape(-1, 3)[pixel]
            assert np.allclose(rgb[row].numpy(), expected, atol=1e-6)


def test_views_per_vertex_counts_past_32767_cameras():
    field = small_field()
    pose = np.eye(4)
    pose[2, 3] = 4.0
    intrinsics = Intrinsics(100, 100, 100.0, 100.0, 50.0, 50.0)
    frames = [Frame(0, Path("/nowhere.png"), pose, intrinsics)] * 32770
    count = views_per_vertex(field, frames, near=0.1, resolution=2)
    assert torch.all(count == 32770)


# --- the prepared GPU check ---------------------------------------------------------------------------------------


def test_gpu_check_dry_run_writes_one_json_per_part(tmp_path):
    env = dict(os.environ, GPU_CHECK_DRY="1", PYTHON=sys.executable)
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    parts = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")}
    assert {"env", "kernels", "tests", "field", "bake"} <= set(parts), sorted(parts)
    assert parts["kernels"]["marcher"] == "numba"  # the dry run is on the CPU
    assert parts["field"]["ok"] and parts["field"]["steps"] > 0
    assert parts["bake"]["ok"], parts["bake"]


# --- on CUDA ---------------------------------------------------------------------------------------------------


@CUDA
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_cuda_and_cpu_march_the_same_sample_sets(levels):
    field = blob_field(levels, "cuda")
    origins, directions = rays(256, "cuda")
    near = 0.37
    step = field.render_step_size
    gpu = march_nerfacc(field, origins, directions, near=near)
    cpu = march_cpu(field, origins, directions, near=near)

    def lattice(s: RaySamples) -> set:
        return set(zip(s.ray_indices.tolist(), torch.round((s.t_starts - near) / step).long().tolist()))

    a, b = lattice(gpu), lattice(cpu)
    assert len(a) > 100
    # float32 lattice points on a cell boundary may fall either side: a handful, never a systematic shift
    assert len(a ^ b) <= max(2, len(a) // 1000), (len(a), len(b), sorted(a ^ b)[:10])


@CUDA
def test_cuda_train_save_load_render(orbit_scene, tmp_path):
    out = tmp_path / "f.pt"
    result = train_field(orbit_scene, out, TrainOptions(steps=30, device="cuda"))
    assert result.device == "cuda" and np.isfinite(result.final_loss)
    field = load_field(out, device="cuda")
    frame_pose = np.eye(4)
    frame_pose[2, 3] = 3.0
    image = render_frame(field, Intrinsics(32, 24, 30.0, 30.0, 16.0, 12.0), frame_pose)
    assert image["rgb"].shape == (24, 32, 3) and np.isfinite(image["rgb"]).all()


@CUDA
def test_two_cuda_renders_are_byte_identical():
    field = blob_field(2, "cuda")
    pose = np.eye(4)
    pose[2, 3] = 2.5
    intrinsics = Intrinsics(160, 120, 150.0, 150.0, 80.0, 60.0)
    first = render_frame(field, intrinsics, pose)
    second = render_frame(field, intrinsics, pose)
    assert np.nanmax(first["opacity"]) > 0.5
    for key in first:
        assert first[key].tobytes() == second[key].tobytes(), key
