"""The worker process and its client: the JSON-lines protocol, clear errors (missing torch, bad jobs, a missing
Python), and cancelling a bake (SIGTERM) leaves only whole frames, identical to those of an uncancelled bake."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurallabel.addon.worker_client import WORKER_SCRIPT, WorkerJob, run_job_sync
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.data.truth import load_scene_truth


def write_truth_spec(scene_dir: Path, path: Path, field: Path | None = None) -> Path:
    """A label spec of the generated scene's meshes at their true poses (no field: mesh-only labels)."""
    truth = load_scene_truth(scene_dir)
    spec = {"neurallabel_spec": 1, "data": str(truth.transforms_path), "field": field and str(field), "objects": [
        {"name": o.name, "category": o.category, "category_id": o.category_id, "instance_id": o.instance_id,
         "kind": "mesh", "mesh": str(o.mesh_path), "pose": o.object_to_world.tolist(), "transparent": False}
        for o in truth.objects]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def slow_truth_spec(scene_dir: Path, tmp_path: Path) -> Path:
    """The truth spec plus a field over all the objects (a voxelised-truth field): every frame renders its
    depth (about a second each on a busy CPU), so a cancel reliably lands in the middle of a bake."""
    import numpy as np

    from test_icp import write_voxel_field

    placed = [o.load_mesh().copy().apply_transform(o.object_to_world) for o in load_scene_truth(scene_dir).objects]
    roi = np.array([np.min([m.bounds[0] for m in placed], axis=0) - 0.04,
                    np.max([m.bounds[1] for m in placed], axis=0) + 0.04])
    roi[0, 2] = -0.02
    write_voxel_field(tmp_path / "field.pt", placed, roi, resolution=48, steps_per_roi=384)
    return write_truth_spec(scene_dir, tmp_path / "slow" / "spec.json", tmp_path / "field.pt")


def run_worker(job: dict, tmp_path: Path, env=None) -> tuple[int, list[dict], str]:
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(WORKER_SCRIPT), str(job_path)], capture_output=True, text=True,
                          timeout=120, env=env)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines() if line.strip()], proc.stderr


def test_bad_jobs_give_one_error_event(tmp_path):
    code, events, _ = run_worker({"kind": "paint"}, tmp_path)
    assert code == 2 and events == [{"event": "error", "message": events[0]["message"]}]
    assert "unknown job kind 'paint'" in events[0]["message"]
    code, events, _ = run_worker({"kind": "bake", "spec": str(tmp_path / "nope.json"), "out": str(tmp_path)},
                                 tmp_path)
    assert code == 2 and "nope.json" in events[-1]["message"] and "does not exist" in events[-1]["message"]


def test_bake_job_protocol(small_scene, tmp_path):
    spec = write_truth_spec(small_scene, tmp_path / "spec.json")
    code, events, stderr = run_worker({"kind": "bake", "spec": str(spec), "out": str(tmp_path / "out"),
                                       "formats": ["raw"], "frames": "0:3"}, tmp_path)
    assert code == 0, stderr
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 3
    assert set(progress[-1]) == {"event", "done", "total", "stage", "eta_s"}
    assert events[-1]["event"] == "result" and events[-1]["summary"]["frames"] == 3
    assert sorted(p.name for p in (tmp_path / "out" / "raw" / "instance").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]


def test_missing_torch_is_named_with_the_fix(tmp_path):
    # A worker Python without torch: a `torch` that cannot be imported, first on the path.
    fake = tmp_path / "no_torch"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    field = tmp_path / "field.ckpt"
    field.write_bytes(b"x")
    job = {"kind": "surface_points", "data": str(tmp_path), "field": str(field), "box": None,
           "out": str(tmp_path / "cloud.npy"), "sys_path": [str(fake)]}
    with pytest.raises(NeuralLabelError) as error:
        run_job_sync(job)
    message = str(error.value)
    assert "cannot import 'torch'" in message and "Install dependencies" in message


def test_missing_python_is_reported(tmp_path):
    with pytest.raises(NeuralLabelError, match="does not exist"):
        WorkerJob({"kind": "bake"}, python=str(tmp_path / "bin" / "python")).start()


def test_python_without_numpy_is_reported(tmp_path):
    bare = Path("/usr/bin/python3")
    if not bare.is_file() or subprocess.run([str(bare), "-c", "import numpy"], capture_output=True).returncode == 0:
        pytest.skip("no system Python without numpy here")
    with pytest.raises(NeuralLabelError, match="cannot import 'numpy'"):
        run_job_sync({"kind": "bake", "spec": "x", "out": str(tmp_path)}, python=str(bare))


FRAME_FILE = re.compile(r"^(\d{6})")


def frame_files(out: Path) -> dict[int, set[str]]:
    """Per frame index, the files of that frame (everything whose name starts with the 6-digit frame id)."""
    files: dict[int, set[str]] = {}
    for path in out.rglob("*"):
        if path.is_file() and "models" not in path.parts:
            match = FRAME_FILE.match(path.name)
            if match:
                files.setdefault(int(match.group(1)), set()).add(str(path.relative_to(out)))
    return files


def test_cancel_leaves_only_whole_frames(small_scene, tmp_path):
    spec = slow_truth_spec(small_scene, tmp_path)
    job = {"kind": "bake", "spec": str(spec), "formats": ["raw"], "frames": "0:6"}
    reference = tmp_path / "reference"
    run_job_sync({**job, "out": str(reference)})
    expected = frame_files(reference)
    assert len(expected) == 6

    out = tmp_path / "cancelled"
    worker = WorkerJob({**job, "out": str(out)}).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # cancel as soon as the first frame is done (what Esc does)
        worker.poll()
        if worker.last_progress and worker.last_progress["stage"] == "bake" and worker.last_progress["done"] >= 1:
            break
        time.sleep(0.005)
    worker.cancel()
    assert worker.cancelled and worker.returncode == 130, worker.failure_message()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.suffixes]
    got = frame_files(out)
    assert 1 <= len(got) < 6  # it stopped early ...
    for index, files in got.items():  # ... and every frame that is there is whole
        assert files == expected[index], index

    for index in got:  # and byte for byte the frames of an uncancelled bake
        for rel in expected[index]:
            assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel
