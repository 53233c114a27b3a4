"""A bake in pieces: shards running at the same time with ``--no-assemble``, then ``--assemble-only``, equal one
run byte for byte; ``--assemble-only`` refuses while frames are missing; a killed shard's re-run finishes it;
``--ray`` without Ray names the install command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neurallabel.core.app.jobs import BakeRequest
from neurallabel.core.cli import main
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.spec import spec_from_scene, write_spec

CLI = [sys.executable, "-m", "neurallabel.core.cli", "bake"]


def tree(root: Path, skip=lambda rel: False) -> dict[str, bytes]:
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    return {rel: p.read_bytes() for rel, p in files.items() if not skip(rel)}


@pytest.fixture(scope="module")
def spec_path(small_scene: Path, tmp_path_factory) -> Path:
    """A mesh-only spec of the small scene (no field needed)."""
    return write_spec(spec_from_scene(small_scene), tmp_path_factory.mktemp("spec") / "spec.json")


@pytest.fixture(scope="module")
def reference(spec_path: Path, tmp_path_factory) -> dict[str, bytes]:
    """One unsharded run, every file."""
    out = tmp_path_factory.mktemp("whole") / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--device", "cpu"]) == 0
    files = tree(out)
    assert "coco/annotations.json" in files and "bop/train/000000/scene_gt.json" in files
    return files


def test_concurrent_shards_then_assemble_equal_one_run(spec_path: Path, reference, tmp_path: Path) -> None:
    out = tmp_path / "pieces"
    shards = [subprocess.Popen(CLI + [str(spec_path), "--out", str(out), "--device", "cpu", "--shard", f"{i}/3",
                                      "--no-assemble"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(3)]  # all three at once, into one new folder
    for shard in shards:
        stdout, stderr = shard.communicate(timeout=300)
        assert shard.returncode == 0, stderr
        assert "baked 4 frames" in stdout
    assert not (out / "coco" / "annotations.json").exists()  # no aggregate files before --assemble-only
    assert len(list((out / ".neurallabel" / "frames").glob("*.json"))) == 12
    done = subprocess.run(CLI + [str(spec_path), "--out", str(out), "--device", "cpu", "--assemble-only"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "baked 0 frames (12 already done)" in done.stdout
    assert tree(out) == reference  # every file, hidden state included


def test_assemble_only_refuses_missing_frames(spec_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--device", "cpu", "--assemble-only"]) == 2
    assert "holds no bake to assemble" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert main(["bake", str(spec_path), "--out", str(out), "--device", "cpu", "--shard", "0/3",
                 "--no-assemble"]) == 0
    capsys.readouterr()
    before = tree(out)
    assert main(["bake", str(spec_path), "--out", str(out), "--device", "cpu", "--assemble-only"]) == 2
    err = capsys.readouterr().err
    assert "--assemble-only: 8 of the 12 selected frames are not baked yet (first: frame 1)" in err, err
    assert err.count("\n") == 1
    assert tree(out) == before  # no aggregate file of an incomplete dataset
    # Only the frames a run selects must be finished: shard 0/3's own frames are.
    assert main(["bake", str(spec_path), "--out", str(out), "--device", "cpu", "--shard", "0/3",
                 "--assemble-only"]) == 0


def test_killed_shard_rerun_finishes_it(spec_path: Path, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    fragments = out / ".neurallabel" / "frames"
    args = CLI + [str(spec_path), "--out", str(out), "--device", "cpu", "--no-assemble"]
    shard = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (fragments.is_dir() and any(fragments.glob("*.json"))) and time.monotonic() < deadline:
            assert shard.poll() is None, "the shard ended before it was killed"
            time.sleep(0.005)
    finally:
        os.kill(shard.pid, signal.SIGKILL)
        shard.wait()
    finished = len(list(fragments.glob("*.json")))
    assert 0 < finished < 12  # killed mid-way
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"baked {12 - finished} frames ({finished} already done)" in rerun.stdout
    assert main(["bake", str(spec_path), "--out", str(out), "--device", "cpu", "--assemble-only"]) == 0
    # The kill may leave a temp file of the frame it was writing: hidden, never read, not part of the dataset.
    assert tree(out, skip=lambda rel: ".nltmp-" in rel) == reference


def test_stage_switches_are_checked() -> None:
    with pytest.raises(NeuralLabelError) as error:
        BakeRequest("spec.json", "out", no_assemble=True, assemble_only=True)
    assert error.value.field == "assemble_only"
    with pytest.raises(NeuralLabelError) as error:
        BakeRequest("spec.json", "out", assemble_only=True, ray="local")
    assert error.value.field == "ray"


def test_ray_without_ray_names_the_install(spec_path: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    monkeypatch.delitem(sys.modules, "neurallabel.core.pipeline.ray_bake", raising=False)
    out = tmp_path / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--ray"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "neurallabel[ray]"' in err and "--ray" in err, err
    assert not out.exists()
