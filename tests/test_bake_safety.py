"""A bake never destroys what the user owns: inputs inside the output folder are refused, every check runs
before the first write, a changed photo set refuses a resume, write errors are one message, pieces baking at
once assemble every frame, SIGTERM stops cleanly and a re-run completes to the same bytes, and the add-on
checks the scene before it starts the worker."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.cli import main
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.io import atomic
from neurallabel.core.labels.frame import LabelOptions
from neurallabel.core.pipeline import bake as bake_module
from neurallabel.core.pipeline.bake import bake
from neurallabel.core.scene.queries import TruthQuery
from neurallabel.core.spec import spec_from_scene, write_spec


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root``, hidden ones included, by relative path."""
    files = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def copy_scene(small_scene: Path, tmp_path: Path) -> Path:
    scene = tmp_path / "scene"
    shutil.copytree(small_scene, scene)
    return scene


def photo_names(scene: Path) -> list[str]:
    return [f["file_path"] for f in json.loads((scene / "transforms.json").read_text())["frames"]]


def fails(args: list[str], message: str, capsys, *, after_progress: bool = False) -> str:
    """``neurallabel ARGS`` exits 2 with one line on stderr holding ``message`` (``after_progress``: the last
    line, after the lines of the progress made before the error)."""
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err and (after_progress or len(lines) == 1), err
    assert lines[-1].startswith("neurallabel bake: error: ") and message in lines[-1], err
    return err


# --- 1. inputs inside the output folder ------------------------------------------------------------------


def test_a_mesh_or_spec_where_the_bake_writes_is_refused_and_untouched(small_scene, tmp_path, capsys):
    spec = spec_from_scene(small_scene)
    # The issue: the mesh sat at DIR/bop/models/obj_000001.ply; `bake --out DIR` wrote it 1000x larger (mm).
    out = tmp_path / "dir"
    mesh = out / "bop" / "models" / "obj_000001.ply"
    mesh.parent.mkdir(parents=True)
    shutil.copyfile(spec.objects[0].mesh_path, mesh)
    original = mesh.read_bytes()
    spec.objects[0].mesh_path, spec.objects[0].mesh = mesh, None
    spec_path = write_spec(spec, tmp_path / "spec.json", absolute_inputs=True)
    err = fails(["bake", str(spec_path), "--out", str(out)], "holds the mesh", capsys)
    assert err.startswith(f"neurallabel bake: error: --out: output folder {out}: ")
    assert mesh.read_bytes() == original and tree(out) == {"bop/models/obj_000001.ply": original}

    # The issue: a spec stored as DIR/coco/annotations.json was overwritten by the COCO output.
    out = tmp_path / "dir2"
    stored = write_spec(spec_from_scene(small_scene), out / "coco" / "annotations.json", absolute_inputs=True)
    original = stored.read_bytes()
    fails(["bake", str(stored), "--out", str(out)], "holds the spec", capsys)
    assert tree(out) == {"coco/annotations.json": original}

    # Photos and the dataset file are inputs too: baking into the dataset's own folder is refused.
    scene = copy_scene(small_scene, tmp_path)
    before = tree(scene)
    with pytest.raises(NeuralLabelError, match="holds the photo") as info:
        bake(spec_from_scene(scene), scene, frames="0:1")
    assert info.value.field == "out" and tree(scene) == before

    # Blender's layout still bakes: DIR/spec.json and DIR/meshes/ with the bake beside them.
    out = tmp_path / "blender"
    blender = spec_from_scene(small_scene)
    for obj in blender.objects:
        target = out / "meshes" / obj.mesh_path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(obj.mesh_path, target)
        obj.mesh_path, obj.mesh = target, None
    spec_path = write_spec(blender, out / "spec.json")
    assert main(["bake", str(spec_path), "--out", str(out), "--frames", "0:2"]) == 0
    assert main(["bake", str(spec_path), "--out", str(out), "--frames", "2:3"]) == 0  # and resumes
    assert (out / "bop" / "train" / "000000" / "rgb" / "000002.png").is_file()


# --- 2. every check before the first write ---------------------------------------------------------------


def test_a_missing_device_is_refused_before_anything_is_written(small_scene, tmp_path, capsys):
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    with pytest.raises(NeuralLabelError, match="cuda:99") as info:
        bake(spec, out, device="cuda:99")  # no such device on any test machine (the library path)
    assert info.value.field == "device" and not out.exists()
    spec_path = write_spec(spec, tmp_path / "spec.json", absolute_inputs=True)
    fails(["bake", str(spec_path), "--out", str(out), "--device", "cuda:99"], "--device 'cuda:99'", capsys)
    assert not out.exists()


def test_a_truncated_photo_is_refused_before_anything_is_copied(small_scene, tmp_path):
    scene = copy_scene(small_scene, tmp_path)
    photo = scene / photo_names(scene)[5]
    data = photo.read_bytes()
    photo.write_bytes(data[: len(data) // 2])  # the header (and size) still read; the pixels do not decode
    out = tmp_path / "out"
    with pytest.raises(NeuralLabelError, match=r"frame 5: photo .* does not decode"):
        bake(spec_from_scene(scene), out)
    assert not out.exists()
    summary = bake(spec_from_scene(scene), out, frames="0:5")  # the other frames still bake
    assert summary["frames"] == 5


def test_frames_that_select_nothing_are_refused(small_scene, tmp_path, capsys):
    spec = spec_from_scene(small_scene)
    spec.frames = [0, 1, 2, 3, 4, 5]
    out = tmp_path / "out"
    with pytest.raises(NeuralLabelError, match=r"frames 8:12 selects no frame.*0, 1, 2, 3, 4, 5") as info:
        bake(spec, out, frames="8:12")
    assert info.value.field == "frames" and not out.exists()
    with pytest.raises(NeuralLabelError, match=r"shard 3/4 selects no frame") as info:
        bake(spec, out, frames="0:3", shard="3/4")
    assert info.value.field == "shard" and not out.exists()
    spec_path = write_spec(spec, tmp_path / "spec.json", absolute_inputs=True)
    fails(["bake", str(spec_path), "--out", str(out), "--frames", "6:12"], "--frames 6:12 selects no frame", capsys)
    fails(["bake", str(spec_path), "--out", str(out), "--shard", "7/8"], "--shard 7/8 selects no frame", capsys)
    assert not out.exists()


def test_label_options_must_be_finite(small_scene, tmp_path, capsys):
    for name in ("occlusion_abs_mm", "occlusion_rel", "occlusion_min_confidence"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(NeuralLabelError, match=f"{name} must be a finite number"):
                LabelOptions(**{name: value})
    spec_path = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json", absolute_inputs=True)
    out = tmp_path / "out"
    fails(["bake", str(spec_path), "--out", str(out), "--occlusion-mm", "nan"],
          "--occlusion-mm/--occlusion-rel/--occlusion-min-confidence/--no-colour-edges: occlusion_abs_mm must be a "
          "finite number",
          capsys)
    assert not out.exists()


def sphere_checkpoint(path: Path, *, dataset: dict | None = None, nan: bool = False) -> Path:
    import torch

    from neurallabel.core.field.checkpoint import save_checkpoint
    from test_bake import sphere_field

    field = sphere_field()
    if nan:
        with torch.no_grad():
            field.density_grid[0, 0, 3, 4, 5] = float("nan")
    save_checkpoint(path, field, dataset=dataset)
    return path


def test_a_field_of_another_dataset_or_with_nan_is_refused_naming_both(small_scene, tmp_path, capsys):
    from neurallabel.core.train.loop import TrainOptions, train_field

    data = small_scene / "transforms.json"
    out = tmp_path / "out"
    other = sphere_checkpoint(tmp_path / "other.pt", dataset={"path": "/elsewhere/transforms.json",
                                                             "fingerprint": "0123456789abcdef", "frames": 7})
    with pytest.raises(NeuralLabelError, match=rf"{other}: this checkpoint was trained on other frames "
                                               rf"\(/elsewhere/transforms.json\) than {data}'s"):
        bake(spec_from_scene(small_scene, field_path=other), out, frames="0:1")
    assert not out.exists()
    damaged = sphere_checkpoint(tmp_path / "damaged.pt", nan=True)
    spec_path = write_spec(spec_from_scene(small_scene, field_path=damaged), tmp_path / "spec.json",
                           absolute_inputs=True)
    fails(["bake", str(spec_path), "--out", str(out)], f"{damaged}: damaged field: 1 of", capsys)
    assert not out.exists()

    # A field that `train` made of this dataset (at half size) is accepted: the check counts frames as train does.
    from neurallabel.core.pipeline.bake import check_request

    trained = tmp_path / "trained.pt"
    train_field(data, trained, TrainOptions(steps=1, device="cpu", downscale=2.0))
    plan = check_request(spec_from_scene(small_scene, field_path=trained), out, frames="0:1")
    assert plan.depth_source.name == "FieldDepth" and not out.exists()
    # ... and refused once the dataset's frames are other than it was trained on (a train photo is gone).
    scene = copy_scene(small_scene, tmp_path)
    (scene / photo_names(scene)[1]).unlink()
    with pytest.raises(NeuralLabelError, match=r"trained on other frames .*\(1 of its photos are missing now"):
        check_request(spec_from_scene(scene, field_path=trained), out, frames="0:1")


# --- 3. frame identity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_resume_after_the_photos_changed_is_refused(small_scene, tmp_path, change):
    from PIL import Image

    scene = copy_scene(small_scene, tmp_path)
    out = tmp_path / "out"
    bake(spec_from_scene(scene), out, frames="0:6")
    before = tree(out)
    photo = scene / photo_names(scene)[3]
    if change == "removed":  # frame 3 loses its photo: indices no longer mean what they meant
        photo.unlink()
    else:  # frame 3 gets another photo of the same size in pixels (another file)
        with Image.open(photo) as image:
            pixels = np.asarray(image.convert("RGB"))
        Image.fromarray(255 - pixels).save(photo)
    with pytest.raises(NeuralLabelError, match="already holds a bake with different photos") as info:
        bake(spec_from_scene(scene), out, frames="6:12")
    assert info.value.field == "out" and tree(out) == before


# --- 4. write errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code, suffix, message", [
    (errno.ENOSPC, ".png", "has no space left"),  # a frame's file (bake_frames)
    (errno.EROFS, ".ply", "is on a read-only file system"),  # a model (prepare's static files)
    (errno.EACCES, ".json", "is not writable"),  # the fragments and aggregates
])
def test_write_errors_are_one_error_naming_the_output_folder(small_scene, tmp_path, capsys, monkeypatch,
                                                              code, suffix, message):
    spec_path = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json", absolute_inputs=True)
    out = tmp_path / "out"
    real_fill = atomic._fill

    def fill(tmp, fd, data):
        name = tmp.name.removesuffix(".tmp")
        if out in tmp.parents and ".nltmp-" in name and name.split(".nltmp-")[0].endswith(suffix) \
                and not name.startswith(".bake.json"):
            os.close(fd)
            raise OSError(code, os.strerror(code))
        return real_fill(tmp, fd, data)

    monkeypatch.setattr(atomic, "_fill", fill)
    fails(["bake", str(spec_path), "--out", str(out), "--frames", "0:2"], f"--out: output folder {out}: {message}",
          capsys, after_progress=True)
    assert not [p for p in tree(out) if p.endswith(".tmp")]  # no temp file left behind


# --- 5. pieces baking at once ------------------------------------------------------------------------------


def test_pieces_baking_at_once_assemble_every_frame(small_scene, tmp_path, monkeypatch):
    """Piece A reads the fragments, then stalls before it writes (up to 3 s) while piece B bakes and assembles:
    without a lock A's stale aggregate lands last; with it B waits for A and then reads every fragment."""
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    real_read = bake_module.read_fragments
    a_has_read, b_done = threading.Event(), threading.Event()

    def read_fragments(frames_dir):
        fragments = real_read(frames_dir)
        if threading.current_thread().name == "A":
            a_has_read.set()
            b_done.wait(timeout=3.0)  # the delay between reading the fragments and writing the aggregates
        return fragments

    monkeypatch.setattr(bake_module, "read_fragments", read_fragments)
    errors = []

    def piece(frames: str, done: threading.Event | None = None) -> None:
        try:
            bake(spec, out, frames=frames, depth_source=TruthQuery(small_scene))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            if done is not None:
                done.set()

    a = threading.Thread(target=piece, args=("0:6",), name="A")
    a.start()
    assert a_has_read.wait(timeout=60)
    b = threading.Thread(target=piece, args=("6:12", b_done), name="B")
    b.start()
    a.join(timeout=120)
    b.join(timeout=120)
    assert not errors, errors
    scene_gt = json.loads((out / "bop" / "train" / "000000" / "scene_gt.json").read_text())
    assert sorted(int(k) for k in scene_gt) == list(range(12))
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert [im["id"] for im in coco["images"]] == list(range(12))
    bake(spec, tmp_path / "whole", depth_source=TruthQuery(small_scene))
    assert tree(out) == tree(tmp_path / "whole")


# --- 6. SIGTERM ------------------------------------------------------------------------------------------


def test_sigterm_stops_the_bake_and_a_rerun_completes_to_the_same_bytes(small_scene, tmp_path, slow_frames):
    from test_worker import slow_truth_spec

    spec = slow_truth_spec(small_scene, tmp_path)
    command = [sys.executable, "-m", "neurallabel.core.cli", "bake", str(spec), "--frames", "0:6", "--device", "cpu"]
    reference = tmp_path / "reference"
    assert main(command[3:] + ["--out", str(reference)]) == 0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() put the default handler back

    out = tmp_path / "out"
    proc = subprocess.Popen(command + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fragments = out / ".neurallabel" / "frames"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if fragments.is_dir() and any(fragments.iterdir()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "neurallabel bake: cancelled" in err, (proc.returncode, err)
    assert 1 <= len(list(fragments.iterdir())) < 6  # it stopped mid-bake
    # A temp file left by a killed writer (its process is gone) is removed by the re-run.
    stale = out / "raw" / "depth" / f".000005.npy.nltmp-{bake_module_host()}-{proc.pid}-x.tmp"
    stale.write_bytes(b"half a file")

    rerun = subprocess.run(command + ["--out", str(out)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert tree(out) == tree(reference)


def bake_module_host() -> str:
    from neurallabel.core.io.atomic import host_tag

    return host_tag()


# --- 7. the add-on's pre-flight --------------------------------------------------------------------------


def test_preflight_checks_the_scene_and_writes_nothing(small_scene, tmp_path):
    from neurallabel.core.app.jobs import BakeRequest, check_bake

    spec = spec_from_scene(small_scene)
    spec_path = write_spec(spec, tmp_path / "spec.json", absolute_inputs=True)
    out = tmp_path / "out"
    check_bake(BakeRequest(spec_path, out, frames="0:4"))
    assert not out.exists()
    lost = json.loads(spec_path.read_text())
    for obj in lost["objects"]:  # all of them: one alone is a warning (it gets no label)
        obj["pose"][0][3] = 1000.0
    (tmp_path / "lost.json").write_text(json.dumps(lost))
    with pytest.raises(NeuralLabelError, match="outside every camera"):
        check_bake(BakeRequest(tmp_path / "lost.json", out))
    (out / "mine").mkdir(parents=True)
    with pytest.raises(NeuralLabelError, match="is not empty") as info:
        check_bake(BakeRequest(spec_path, out))
    assert info.value.field == "out" and tree(out) == {}


NO_WORKER = '''
import neurallabel.addon.worker_jobs as worker_jobs
started = []

class NoWorker:  # stands in for the worker: records that one was started
    def __init__(self, job, **kwargs):
        started.append(job)
    def start(self):
        raise RuntimeError("the worker was started")

worker_jobs.WorkerJob = NoWorker
'''

BAKE_AND_EMIT = '''
try:
    bpy.ops.neurallabel.bake(out_dir=ARGS["out"], frames="0:2")
    message = None
except RuntimeError as exc:
    message = str(exc)
emit({"message": message, "started": len(started)})
'''

PREFLIGHT_SCRIPT = NO_WORKER + '''
for entry in ARGS["objects"]:  # all of them far outside every camera (one alone is a warning)
    bpy.data.objects[entry["name"]].matrix_world.translation.x += 1000.0
''' + BAKE_AND_EMIT


@pytest.mark.bpy
def test_the_bake_operator_refuses_a_bad_scene_before_the_worker_starts(small_scene, tmp_path):
    from bpy_helpers import DEV_PRELUDE, run_bpy
    from test_bake_operator import ANNOTATE, truth_objects

    objects = truth_objects(small_scene)
    result = run_bpy(DEV_PRELUDE + ANNOTATE + PREFLIGHT_SCRIPT,
                     {"data": str(small_scene / "transforms.json"), "objects": objects,
                      "out": str(tmp_path / "labels")}, tmp_path / "bpy")
    assert result["started"] == 0 and "outside every camera" in (result["message"] or ""), result


EXPORT_GUARD_SCRIPT = NO_WORKER + BAKE_AND_EMIT


@pytest.mark.bpy
def test_the_bake_operator_never_exports_into_someone_elses_folder(small_scene, tmp_path):
    """The export writes spec.json and meshes/ before the bake claims the folder: a folder of someone else's
    (here: their own spec.json next to their notes) is refused before the export touches it."""
    from bpy_helpers import DEV_PRELUDE, run_bpy
    from test_bake_operator import ANNOTATE, truth_objects

    out = tmp_path / "theirs"
    out.mkdir()
    (out / "spec.json").write_text("their spec")
    (out / "notes.txt").write_text("their notes")
    result = run_bpy(DEV_PRELUDE + ANNOTATE + EXPORT_GUARD_SCRIPT,
                     {"data": str(small_scene / "transforms.json"), "objects": truth_objects(small_scene),
                      "out": str(out)}, tmp_path / "bpy")
    assert result["started"] == 0 and "is not empty (notes.txt" in (result["message"] or ""), result
    assert (out / "spec.json").read_text() == "their spec" and sorted(p.name for p in out.iterdir()) == [
        "notes.txt", "spec.json"]
