"""A worker job's notices reach the Blender user (issue: the add-on dropped every ``notice`` event): each one is a
WARNING report "NeuralLabel: ..." and a line of ``scene.neurallabel.job_notices``, which the sidebar lists; a
new job clears them, and they stay after the job ends, whether it succeeded, failed or was cancelled. The
notice here is the worker's "skipped 1 of 12 frames whose image is missing" for a dataset with a photo gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpy_helpers import DEV_PRELUDE, run_bpy
from test_bake_operator import ANNOTATE, truth_objects
from test_extension import FAKE_LAYOUT
from test_worker import write_truth_spec

pytestmark = pytest.mark.bpy

GONE = "000011.png"  # the last frame's photo: frames 0.. still bake


def dataset_without_a_photo(scene_dir: Path, data: Path) -> Path:
    """The scene's transforms.json with its photos linked one by one (the cached scene is never written to),
    but for :data:`GONE`'s link; returns the link to make to bring it back."""
    (data / "images").mkdir(parents=True)
    (data / "transforms.json").write_text((scene_dir / "transforms.json").read_text())
    for photo in (scene_dir / "images").iterdir():
        if photo.name != GONE:
            (data / "images" / photo.name).symlink_to(photo.resolve())
    return data / "images" / GONE


# The synchronous path (scripts, `blender -b`) through the real operator: a bake refused before its worker
# starts, one that fails in the worker after its notice (the field file is no checkpoint: only the worker reads
# it), one that succeeds, and one after the photo is back. Blender prints each WARNING report to stdout as
# "Warning: <message>" once the operator returns.
SYNC_SCRIPT = DEV_PRELUDE + ANNOTATE + FAKE_LAYOUT + '''
import os
from types import SimpleNamespace as NS
from neurallabel.panels import sidebar
props = scene.neurallabel
props.job_notices = "a notice of an earlier job"

def bake(out):
    try:
        result, error = sorted(bpy.ops.neurallabel.bake(out_dir=out, formats="raw", frames="0:1")), None
    except RuntimeError as exc:  # the operator's ERROR report
        result, error = ["CANCELLED"], str(exc)
    return {"result": result, "error": error, "notices": props.job_notices, "running": props.job_running}

# A job refused before its worker starts (no output folder) clears them too: it is the last job now.
try:
    bpy.ops.neurallabel.bake()
except RuntimeError as exc:
    out = {"refused": {"error": str(exc), "notices": props.job_notices}}
props.field_path = ARGS["bad_field"]
out["failed"] = bake(ARGS["out"] + "/failed")
props.field_path = ""
out["baked"] = bake(ARGS["out"] + "/baked")

# The panel's box: one warning label per notice (wrapped), a clear button; nothing without notices.
class Layout:
    def __init__(self, drawn):
        self.drawn = drawn
    def box(self):
        self.drawn.append(["box"])
        return self
    row = column = lambda self, **kwargs: self
    def label(self, text="", icon="NONE"):
        self.drawn.append(["label", text, icon])
    def operator(self, idname, **kwargs):
        self.drawn.append(["operator", idname])

out["panel"] = []
sidebar.draw_job_notices(Layout(out["panel"]), props, 40)
out["main_panel"] = draw_panels(["NEURALLABEL_PT_main"])  # the real panel: real icons, registered operators
out["panel_two"] = []
sidebar.draw_job_notices(Layout(out["panel_two"]), NS(job_notices="one\\ntwo"), 40)

os.symlink(ARGS["photo"], ARGS["gone"])  # the photo is back: the next job has nothing to say
out["complete"] = bake(ARGS["out"] + "/complete")
out["panel_none"] = []
sidebar.draw_job_notices(Layout(out["panel_none"]), props, 40)
out["main_panel_none"] = draw_panels(["NEURALLABEL_PT_main"])
props.job_notices = "something"
out["clear_poll"] = bpy.ops.neurallabel.clear_job_notices.poll()
assert bpy.ops.neurallabel.clear_job_notices() == {"FINISHED"}
out["cleared"] = props.job_notices
out["clear_poll_empty"] = bpy.ops.neurallabel.clear_job_notices.poll()
emit(out)
'''


def test_sync_job_reports_and_keeps_notices(small_scene, tmp_path):
    data = tmp_path / "data"
    gone = dataset_without_a_photo(small_scene, data)
    (tmp_path / "bad_field.pt").write_text("not a checkpoint")
    result, proc = run_bpy(SYNC_SCRIPT, {"data": str(data / "transforms.json"), "objects": truth_objects(small_scene),
                                         "out": str(tmp_path / "labels"), "bad_field": str(tmp_path / "bad_field.pt"),
                                         "gone": str(gone), "photo": str((small_scene / "images" / GONE).resolve())},
                           tmp_path / "bpy", output=True)
    assert "no output folder" in result["refused"]["error"] and result["refused"]["notices"] == ""
    failed, baked, complete = result["failed"], result["baked"], result["complete"]
    assert failed["result"] == ["CANCELLED"] and "not a NeuralLabel field checkpoint" in failed["error"], failed
    assert baked["result"] == ["FINISHED"] and complete["result"] == ["FINISHED"], (baked, complete)
    assert (tmp_path / "labels" / "baked" / "raw" / "instance" / "000000.png").is_file()

    # The earlier job's notice is gone; this job's one line stays after it failed, and after it succeeded.
    for case in (failed, baked):
        lines = case["notices"].splitlines()
        assert len(lines) == 1 and "skipped 1 of 12 frames" in lines[0] and GONE in lines[0], case
        assert not case["running"]
    assert complete["notices"] == ""  # a new job cleared them, and said nothing

    # Each notice was a WARNING report (Blender prints them to stdout), one per job that had it ...
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("Warning: NeuralLabel: ")]
    assert len(warnings) == 2 and all(w == "Warning: NeuralLabel: " + baked["notices"] for w in warnings), warnings
    # ... and headless, a line on stderr as it came (beside the progress lines), before the job's end.
    assert proc.stderr.count("NeuralLabel: " + baked["notices"]) == 2

    # The sidebar's box: a header with the clear button, the notice wrapped into labels, a warning icon first.
    panel = result["panel"]
    assert panel[:3] == [["box"], ["label", "Notices of the last job", "NONE"],
                         ["operator", "neurallabel.clear_job_notices"]]
    labels = panel[3:]
    assert len(labels) >= 2 and all(len(text) <= 40 for _, text, _ in labels)
    assert [icon for _, _, icon in labels] == ["ERROR"] + ["BLANK1"] * (len(labels) - 1)
    assert "".join(text for _, text, _ in labels).replace(" ", "") == baked["notices"].replace(" ", "")  # all of it
    assert [d for d in result["panel_two"] if d[0] == "label"][1:] == [["label", "one", "ERROR"],
                                                                       ["label", "two", "ERROR"]]
    assert result["panel_none"] == [] and result["main_panel_none"] == []
    assert result["main_panel"] == [d[:2] for d in panel if d[0] != "box"]
    assert result["clear_poll"] and result["cleared"] == "" and not result["clear_poll_empty"]


# The modal path (the UI) needs a window: WorkerOperator's invoke/modal with stand-ins for the window manager
# (as in test_bake_operator.py) but the real scene properties, and real worker jobs.
MODAL_SCRIPT = DEV_PRELUDE + '''
import time
from types import SimpleNamespace as NS
import neurallabel.addon.worker_jobs as B

B.bpy = NS(app=NS(background=False))  # as in the UI
B.worker_settings = lambda context: {"python": sys.executable, "env": None, "device": "cpu"}
props = bpy.context.scene.neurallabel

class Op(B.WorkerOperator):
    stage_label = "Bake"
    def __init__(self, job):
        self.job, self.reports, self.result = job, [], None
    def report(self, kind, message):
        self.reports.append([sorted(kind)[0], message])
    def build_job(self, context):
        return dict(self.job)
    def job_done(self, context, result):
        self.result = result
        return {"FINISHED"}

def run(job, mode):
    """mode "ticks": a timer tick every 20 ms; "at_end": the first tick after the worker exited (its notice,
    progress and result in one poll); "esc_at_end": Esc then, so the cancel path drains them; "cancel": Esc
    once the bake has started."""
    wm = NS(progress_begin=lambda a, b: None, progress_update=lambda v: None, progress_end=lambda: None,
            event_timer_add=lambda step, window=None: "timer", event_timer_remove=lambda timer: None,
            modal_handler_add=lambda op: None)
    context = NS(scene=bpy.context.scene, window_manager=wm, window="window", screen=None)
    op = Op(job)
    state = {"invoke": sorted(op.invoke(context, NS(type="LEFTMOUSE"))), "notices_at_start": props.job_notices}
    if mode in ("at_end", "esc_at_end"):
        deadline = time.monotonic() + 120
        while not op._worker.finished() and time.monotonic() < deadline:
            time.sleep(0.05)
        state["polled_before_end"] = op._worker.last_progress is not None  # nothing was drained yet
    escaped = False
    while True:
        event = "TIMER"
        if not escaped and (mode == "esc_at_end" or mode == "cancel" and props.job_stage.startswith("Bake: bake")
                                                     and props.job_progress > 0):
            escaped, event = True, "ESC"
        outcome = op.modal(context, NS(type=event))
        if outcome not in ({"RUNNING_MODAL"}, {"PASS_THROUGH"}):
            break
        time.sleep(0.02)
    state.update(outcome=sorted(outcome), reports=op.reports, notices=props.job_notices,
                 running=props.job_running, returncode=op._worker.returncode)
    return state

bake = {"kind": "bake", "spec": ARGS["spec"], "formats": ["raw"]}
props.job_notices = "a notice of an earlier job"
out = {"ticks": run({**bake, "out": ARGS["out"] + "/ticks", "frames": "0:1"}, "ticks"),
       "at_end": run({**bake, "out": ARGS["out"] + "/at_end", "frames": "0:1"}, "at_end"),
       "esc_at_end": run({**bake, "out": ARGS["out"] + "/esc_at_end", "frames": "0:1"}, "esc_at_end"),
       "cancel": run({**bake, "out": ARGS["out"] + "/cancel", "frames": "0:6"}, "cancel")}
emit(out)
'''


def test_modal_job_reports_and_keeps_notices(small_scene, tmp_path, slow_frames):
    data = tmp_path / "data"
    dataset_without_a_photo(small_scene, data)
    spec = json.loads(write_truth_spec(small_scene, tmp_path / "spec.json").read_text())
    spec["data"] = str(data / "transforms.json")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = run_bpy(MODAL_SCRIPT, {"spec": str(tmp_path / "spec.json"), "out": str(tmp_path / "labels")},
                     tmp_path / "bpy")

    for case in ("ticks", "at_end", "esc_at_end", "cancel"):
        state = result[case]
        # each job starts by clearing the notices before it (an earlier job's, then the previous case's)
        assert state["invoke"] == ["RUNNING_MODAL"] and state["notices_at_start"] == "", (case, state)
        lines = state["notices"].splitlines()
        assert len(lines) == 1 and "skipped 1 of 12 frames" in lines[0] and GONE in lines[0], (case, state)
        warnings = [message for kind, message in state["reports"] if kind == "WARNING" and GONE in message]
        assert warnings == ["NeuralLabel: " + lines[0]], (case, state["reports"])
        assert not state["running"], case
    for case in ("ticks", "at_end", "esc_at_end"):
        assert result[case]["outcome"] == ["FINISHED"] and result[case]["returncode"] == 0, (case, result[case])
    # the notice came in the same poll as the result, on the finishing path and on the cancel path
    assert not result["at_end"]["polled_before_end"] and not result["esc_at_end"]["polled_before_end"]
    cancelled = result["cancel"]  # a real cancel mid-bake keeps the notice too
    assert cancelled["outcome"] == ["CANCELLED"] and cancelled["returncode"] == 130, cancelled
    assert cancelled["reports"][-1] == ["WARNING", "Bake cancelled"]
