"""neurallabel.bake / preview_labels / snap_to_field through the installed extension (the built zip), in a
background bpy session: the bake equals ``neurallabel bake`` on the same spec byte for byte, the preview
shows the frame's visible instances, and a snap brings displaced meshes back onto the true depth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bpy_helpers import DEV_PRELUDE, INSTALL_PRELUDE, build_extension_zip, run_bpy
from neurallabel.core.geometry.icp import pose_error
from neurallabel.core.data.truth import load_scene_truth

pytestmark = pytest.mark.bpy

# Shared by this file and test_headless_bake.py: a scene with the generated scene's meshes at their true poses.
ANNOTATE = '''
from mathutils import Matrix
scene = bpy.context.scene
assert bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"]) == {"FINISHED"}
for o in ARGS["objects"]:
    bpy.ops.object.select_all(action="DESELECT")
    assert bpy.ops.neurallabel.add_mesh(filepath=o["mesh"], category=o["category"]) == {"FINISHED"}
    obj = bpy.context.active_object
    obj.name = o["name"]
    obj.matrix_world = Matrix(o["pose"])
    obj.neurallabel.category_id = o["category_id"]
    obj.neurallabel.instance_id = o["instance_id"]
# Tolerances set here (not the defaults): cli_bake passes the same to `neurallabel bake`.
scene.neurallabel.occlusion_tolerance = 0.01
scene.neurallabel.occlusion_tolerance_relative = 0.01
bpy.context.view_layer.update()
'''

BAKE_SCRIPT = INSTALL_PRELUDE + ANNOTATE + '''
import numpy as np
from mathutils import Matrix, Vector
scene.neurallabel.output_dir = ARGS["out"]
assert not bpy.ops.neurallabel.cancel_job.poll()  # nothing to cancel yet
assert bpy.ops.neurallabel.bake(frames="0:4") == {"FINISHED"}
out = {"job_running": scene.neurallabel.job_running}

# Preview of frame 2 through its camera.
camera = next(c for c in scene.neurallabel.root.children if c.get("neurallabel_frame") == 2)
scene.camera = camera
assert bpy.ops.neurallabel.preview_labels() == {"FINISHED"}
image = bpy.data.images["NeuralLabel Preview"]
out["preview_size"] = list(image.size)
out["preview_packed"] = image.packed_file is not None

# Snap: displace two meshes by 2 cm / 10 degrees and snap them back onto the true depth maps.
rng = np.random.default_rng(5)
out["snapped"] = {}
for name in ARGS["snap"]:
    obj = bpy.data.objects[name]
    axis = rng.normal(size=3); axis /= np.linalg.norm(axis)
    shift = rng.normal(size=3); shift *= 0.02 / np.linalg.norm(shift)
    origin = obj.matrix_world.translation.copy()
    turn = Matrix.Rotation(np.radians(10.0), 4, Vector(axis.tolist()))
    start = Matrix.Translation(origin + Vector(shift.tolist())) @ turn @ Matrix.Translation(-origin) @ obj.matrix_world
    obj.matrix_world = start
    bpy.ops.object.select_all(action="DESELECT")
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.neurallabel.snap_to_field(depth_dir=ARGS["depth_dir"]) == {"FINISHED"}
    out["snapped"][name] = {"start": [list(r) for r in start], "end": [list(r) for r in obj.matrix_world]}

# A failed snap (no field, no depth maps) reports and leaves the object where it was.
obj = bpy.data.objects[ARGS["snap"][0]]
before = [list(r) for r in obj.matrix_world]
try:
    bpy.ops.neurallabel.snap_to_field()
    out["no_field_message"] = None
except RuntimeError as exc:
    out["no_field_message"] = str(exc)
out["unchanged_after_failure"] = [list(r) for r in obj.matrix_world] == before
emit(out)
'''


def truth_objects(scene_dir: Path) -> list[dict]:
    return [{"name": o.name, "category": o.category, "category_id": o.category_id, "instance_id": o.instance_id,
             "mesh": str(o.mesh_path), "pose": o.object_to_world.tolist()} for o in load_scene_truth(scene_dir).objects]


def cli_bake(spec: Path, out: Path, *extra: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "neurallabel.core.cli", "bake", str(spec), "--out", str(out),
                           "--occlusion-mm", "10", "--occlusion-rel", "0.01", *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def assert_same_bake(blender_out: Path, cli_out: Path) -> None:
    """Every file of the CLI's bake is in Blender's, byte for byte; Blender's has only the spec on top."""
    cli_files = {p.relative_to(cli_out) for p in cli_out.rglob("*") if p.is_file()}
    blender_files = {p.relative_to(blender_out) for p in blender_out.rglob("*") if p.is_file()}
    extra = blender_files - cli_files
    assert all(p == Path("spec.json") or p.parts[0] == "meshes" for p in extra), extra
    assert cli_files <= blender_files and len(cli_files) > 20
    for rel in cli_files:
        assert (blender_out / rel).read_bytes() == (cli_out / rel).read_bytes(), rel


def test_bake_preview_snap_through_installed_extension(small_scene, tmp_path):
    zip_path = build_extension_zip(tmp_path / "dist")
    out = tmp_path / "labels"
    result = run_bpy(BAKE_SCRIPT, {"zip": str(zip_path), "data": str(small_scene / "transforms.json"),
                                   "objects": truth_objects(small_scene), "out": str(out),
                                   "depth_dir": str(small_scene / "gt" / "depth"),
                                   "snap": ["box_1", "cube_1"]}, tmp_path / "bpy", timeout=600)
    assert result["job_running"] is False

    # The bake: spec.json in DIR, frames 0..3, and exactly what `neurallabel bake` makes of that spec.
    assert (out / "spec.json").is_file()
    assert sorted(p.name for p in (out / "raw" / "instance").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    cli_out = tmp_path / "cli"
    cli_bake(out / "spec.json", cli_out, "--frames", "0:4")
    assert_same_bake(out, cli_out)

    # The preview: photo with masks | depth, side by side, packed into the .blend.
    truth_ids = np.asarray(Image.open(small_scene / "gt" / "instance" / "000002.png"))
    assert result["preview_size"] == [2 * truth_ids.shape[1], truth_ids.shape[0]]
    assert result["preview_packed"]

    truth = {o.name: o for o in load_scene_truth(small_scene).objects}
    for name, poses in result["snapped"].items():
        start_t, start_r = pose_error(np.array(poses["start"]), truth[name].object_to_world)
        end_t, end_r = pose_error(np.array(poses["end"]), truth[name].object_to_world)
        assert start_t > 0.015 and start_r > 9.0, (name, start_t, start_r)
        assert end_t <= 0.002 and end_r <= 1.0, (name, end_t, end_r)
    assert "no field to snap to" in result["no_field_message"]
    assert result["unchanged_after_failure"]


FIELD_SCRIPT = DEV_PRELUDE + '''
import numpy as np
scene = bpy.context.scene
assert bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"]) == {"FINISHED"}
out = {}
try:
    bpy.ops.neurallabel.load_field(filepath=ARGS["missing"])
except RuntimeError as exc:
    out["missing_message"] = str(exc)
out["field_path_after_failure"] = scene.neurallabel.field_path
out["cloud_after_failure"] = "NeuralLabel Field Preview" in bpy.data.objects
assert bpy.ops.neurallabel.load_field(filepath=ARGS["field"], views=4) == {"FINISHED"}
cloud = bpy.data.objects["NeuralLabel Field Preview"]
points = np.empty(len(cloud.data.vertices) * 3, dtype=np.float32)
cloud.data.vertices.foreach_get("co", points)
out.update(field_path=scene.neurallabel.field_path, parent=cloud.parent.name if cloud.parent else None,
           points=points.reshape(-1, 3).tolist())
emit(out)
'''


def test_load_field_builds_preview_cloud(small_scene, tmp_path):
    from test_icp import write_voxel_field
    from neurallabel.core.data.truth import load_scene_truth

    cube = next(o for o in load_scene_truth(small_scene).objects if o.name == "cube_1")
    placed = cube.load_mesh().copy().apply_transform(cube.object_to_world)
    roi = np.array([placed.bounds[0] - 0.05, placed.bounds[1] + 0.05])
    roi[0, 2] = -0.02
    write_voxel_field(tmp_path / "field.pt", [placed], roi, resolution=48)
    result = run_bpy(FIELD_SCRIPT, {"data": str(small_scene / "transforms.json"), "field": str(tmp_path / "field.pt"),
                                    "missing": str(tmp_path / "nope.pt")}, tmp_path / "bpy")
    assert "does not exist" in result["missing_message"]
    assert result["field_path_after_failure"] == "" and not result["cloud_after_failure"]
    assert result["field_path"] == str(tmp_path / "field.pt") and result["parent"] == "NeuralLabel Scene"
    points = np.array(result["points"])
    assert len(points) > 50
    assert np.all(points >= roi[0] - 1e-4) and np.all(points <= roi[1] + 1e-4)  # cropped to the field's box
    on_cube = points[:, 2] > 0.004  # above the floor (the slab under it has side walls at the box border)
    from scipy.spatial import cKDTree

    from neurallabel.core.geometry.icp import sample_mesh_surface

    surface, _ = sample_mesh_surface(placed.vertices, placed.faces, 50000)
    distance, _ = cKDTree(surface).query(points[on_cube])
    # within about a voxel (4 mm) of the cube's surface; a few rays that graze an edge mix two depths
    assert on_cube.sum() > 10 and np.percentile(distance, 80) < 0.006


# The modal path needs a window, which a background session has none of: this drives WorkerOperator's
# invoke/modal with stand-ins for the window manager and the scene properties, and a real worker bake.
MODAL_SCRIPT = '''
import json, sys, time
from types import SimpleNamespace as NS
import bpy
import neurallabel.addon.worker_jobs as B
from neurallabel.operators.jobs import NEURALLABEL_OT_cancel_job
ARGS = json.loads(sys.argv[-1])

B.bpy = NS(app=NS(background=False))  # as in the UI
B.worker_settings = lambda context: {"python": sys.executable, "env": None, "device": "cpu"}

class Op(B.WorkerOperator):
    stage_label = "Bake"
    def __init__(self, out):
        self.out, self.reports, self.result = out, [], None
    def report(self, kind, message):
        self.reports.append([sorted(kind)[0], message])
    def build_job(self, context):
        return {"kind": "bake", "spec": ARGS["spec"], "out": self.out, "formats": ["raw"], "frames": "0:6"}
    def job_done(self, context, result):
        self.result = result
        return {"FINISHED"}

def run(out, stop=None):
    calls = []
    props = NS(job_running=False, job_progress=0.0, job_stage="", job_eta_s=-1.0)
    wm = NS(progress_begin=lambda a, b: calls.append(["begin", a, b]),
            progress_update=lambda v: calls.append(["update", v]),
            progress_end=lambda: calls.append(["end"]),
            event_timer_add=lambda step, window=None: "timer",
            event_timer_remove=lambda timer: calls.append(["timer_removed"]),
            modal_handler_add=lambda op: calls.append(["modal_handler"]))
    context = NS(scene=NS(neurallabel=props), window_manager=wm, window="window", screen=None)
    op = Op(out)
    state = {"invoke": sorted(op.invoke(context, NS(type="LEFTMOUSE"))), "running_seen": props.job_running}
    progress_seen, stopping, cancel_at = [], False, None
    while True:
        event = "TIMER"
        if stop and props.job_stage.startswith("Bake: bake") and props.job_progress > 0 and not stopping:
            stopping = True
            cancel_at = [props.job_stage, time.monotonic()]
            if stop == "esc":
                event = "ESC"
            else:
                NEURALLABEL_OT_cancel_job.execute(None, context)
        outcome = op.modal(context, NS(type=event))
        progress_seen.append(props.job_progress)
        if outcome not in ({"RUNNING_MODAL"}, {"PASS_THROUGH"}):
            break
        outcome = op.modal(context, NS(type="MOUSEMOVE"))  # other events pass through
        assert outcome == {"PASS_THROUGH"}, outcome
        time.sleep(0.02)
    state.update(outcome=sorted(outcome), calls=calls, reports=op.reports, result=op.result,
                 progress=progress_seen, running_after=props.job_running, active=B._ACTIVE["operator"] is None,
                 returncode=op._worker.returncode, cancel_at=cancel_at and cancel_at[0],
                 cancel_took=cancel_at and time.monotonic() - cancel_at[1], last=op._worker.last_progress)
    return state

print("NEURALLABEL_RESULT " + json.dumps({"done": run(ARGS["out"] + "/done"), "esc": run(ARGS["out"] + "/esc", "esc"),
                                          "button": run(ARGS["out"] + "/button", "button")}), flush=True)
'''


def test_modal_progress_and_cancel(small_scene, tmp_path, slow_frames):
    from test_worker import frame_files, slow_truth_spec

    spec = slow_truth_spec(small_scene, tmp_path)
    result = run_bpy(MODAL_SCRIPT, {"spec": str(spec), "out": str(tmp_path)}, tmp_path / "bpy")
    done = result["done"]
    assert done["invoke"] == ["RUNNING_MODAL"] and done["running_seen"]
    assert done["outcome"] == ["FINISHED"] and done["result"]["summary"]["frames"] == 6
    updates = [c[1] for c in done["calls"] if c[0] == "update"]
    assert updates == sorted(updates) and updates[-1] == 1000  # the status bar went up to the end
    assert done["calls"][0] == ["begin", 0, 1000] and ["end"] in done["calls"] and ["timer_removed"] in done["calls"]
    assert not done["running_after"] and done["active"] and done["returncode"] == 0
    expected = frame_files(tmp_path / "done")
    for case in ("esc", "button"):
        cancelled = result[case]
        assert cancelled["outcome"] == ["CANCELLED"] and cancelled["returncode"] == 130, case
        assert cancelled["reports"][-1][0] == "WARNING" and "cancelled" in cancelled["reports"][-1][1]
        assert not cancelled["running_after"] and cancelled["active"]
        got = frame_files(tmp_path / case)
        assert 1 <= len(got) < 6, (case, cancelled["cancel_at"], cancelled["cancel_took"], cancelled["last"])
        assert all(files == expected[i] for i, files in got.items()), case  # whole frames only
