"""``bake --ray``: frames as Ray tasks on a local cluster equal one unsharded bake byte for byte, also when a
task's worker dies and the task is retried; GPU shares give each task one GPU; an unreachable cluster is
refused before any work."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from neurallabel.core.cli import main  # noqa: E402
from neurallabel.core.pipeline.bake import bake, prepare  # noqa: E402
from neurallabel.core.pipeline.phases import RayOptions, Stages, bake_in_stages  # noqa: E402
from neurallabel.core.pipeline.ray_bake import RayRunner  # noqa: E402
from neurallabel.core.scene.queries import TruthQuery  # noqa: E402
from neurallabel.core.spec import spec_from_scene, write_spec  # noqa: E402


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class DyingOnceTruth(TruthQuery):
    """True depth, but the first depth map read anywhere kills its worker process (a node lost mid-chunk)."""

    def __init__(self, scene_dir: Path, marker: Path) -> None:
        super().__init__(scene_dir)
        self.marker = marker

    def _load(self, view):
        try:
            self.marker.open("x").close()
        except FileExistsError:
            return super()._load(view)
        os._exit(1)


def test_unreachable_cluster_is_refused_before_work(small_scene: Path, tmp_path: Path, capsys) -> None:
    assert not ray.is_initialized()
    spec_path = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json")
    out = tmp_path / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--ray: no Ray cluster answers at 127.0.0.1:1" in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.fixture(scope="module")
def cluster():
    # Workers inherit the driver's environment (PYTHONPATH), and unpickle this module's classes by value.
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(small_scene: Path, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("whole") / "out"
    bake(spec_from_scene(small_scene), out, depth_source=TruthQuery(small_scene))
    return tree(out)


def test_ray_bake_equals_one_run(cluster, small_scene: Path, reference, tmp_path: Path) -> None:
    calls = []
    summary = bake_in_stages(spec_from_scene(small_scene), tmp_path / "out", Stages(ray=RayOptions(chunk_frames=5)),
                             depth_source=TruthQuery(small_scene), progress=lambda *a: calls.append(a))
    assert (summary["frames"], summary["skipped"], summary["frames_in_dataset"]) == (12, 0, 12)
    assert tree(tmp_path / "out") == reference
    done = [c[0] for c in calls if c[1:] == (12, "bake")]
    assert done[0] == 0 and done[-1] == 12
    assert sorted(b - a for a, b in zip(done, done[1:])) == [2, 5, 5]  # one report per chunk as it finishes


def test_task_whose_worker_dies_is_retried(cluster, small_scene: Path, reference, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    summary = bake_in_stages(spec_from_scene(small_scene), tmp_path / "out", Stages(ray=RayOptions(chunk_frames=4)),
                             depth_source=DyingOnceTruth(small_scene, marker))
    assert marker.is_file()  # a worker really died
    assert summary["frames"] + summary["skipped"] == 12
    assert tree(tmp_path / "out") == reference


def test_each_task_gets_one_gpu(cluster, small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    settings = {"device": "cpu", "formats": ("raw",)}
    job = prepare(spec, tmp_path / "out", **settings)
    runner = RayRunner.connect(RayOptions(chunk_frames=2, gpus_per_task=0.5))
    assert not runner.started  # joined the caller's session, which it leaves running
    done = runner.bake_frames(job, spec, settings)
    assert done.baked == 12
    assert len(runner.chunk_gpu_ids) == 6
    assert all(len(ids) == 1 and ids[0] in ("0", "1") for ids in runner.chunk_gpu_ids), runner.chunk_gpu_ids


def test_cli_ray_flag(cluster, small_scene: Path, tmp_path: Path, capsys) -> None:
    spec_path = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json")
    out = tmp_path / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--device", "cpu", "--formats", "coco", "--ray",
                 "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "result" and lines[-1]["frames"] == 12
    assert any(line["event"] == "progress" and line.get("stage") == "bake" for line in lines)
    assert len(json.loads((out / "coco" / "annotations.json").read_text())["images"]) == 12
