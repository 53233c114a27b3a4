"""Worker install: "Check Worker" (a ``check`` job in the worker Python) and "Install Dependencies"
(commands by platform and GPU, refusals offline and on a Python it cannot serve, the install as a
cancellable process with progress lines), all without network, bpy standing in for Blender."""

from __future__ import annotations

import re
import sys
import tomllib

from bpy_helpers import DEV_PRELUDE, REPO_ROOT, run_bpy
from neurallabel.core.app.jobs import request_from_job, requirement_modules, run


def requirement_lines() -> list[str]:
    lines = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_check_job_reports_versions_and_missing_modules():
    result = run(request_from_job({"kind": "check", "device": "cpu"}))
    assert result["kind"] == "check" and result["missing"] == []  # the test venv has every requirement
    import numpy
    import torch

    assert result["numpy"] == numpy.__version__ and result["torch"] == torch.__version__
    assert result["cuda"] == torch.cuda.is_available() and result["python"].endswith(f"({sys.executable})")


def test_requirement_import_names():
    modules = requirement_modules(requirement_lines())
    assert modules == ["torch", "numpy", "nerfacc", "trimesh", "embreex", "pycolmap", "pycocotools", "PIL", "cv2",
                       "scipy", "numba", "rich", "mcubes"]
    assert requirement_modules(["opencv-python-headless>=4", "PyMCubes==0.1.6", "a-b[x]==1"]) == \
        ["cv2", "mcubes", "a_b"]


def test_manifest_declares_network():
    manifest = tomllib.loads((REPO_ROOT / "blender_manifest.toml").read_text())
    assert manifest["permissions"]["network"] and manifest["permissions"]["files"]


INSTALL_SCRIPT = DEV_PRELUDE + '''
import sys, time
from neurallabel.addon import preferences as P
from neurallabel.operators import dependencies as D

out = {}
# The commands: every requirement, torch first and alone, its index by platform and GPU.
out["commands"] = P.install_commands("py", "/t", P.torch_index("linux", True))
out["index"] = {f"{p}-{g}": P.torch_index(p, g) for p in ("linux", "win32", "darwin") for g in (True, False)}
out["mac"] = P.install_commands("py", "/t", P.torch_index("darwin", True))
out["refusals"] = {"offline": P.install_refusal((3, 11), False), "py313": P.install_refusal((3, 13), True),
                   "ok": P.install_refusal((3, 11), True)}

# The operator: refuses offline (no process started), then installs with a fake pip.
started = []
D.InstallProcess.start = (lambda original: lambda self: (started.append(self.commands), original(self))[1])(
    D.InstallProcess.start)
out["online_access"] = bpy.app.online_access  # bpy as a module: offline, as a Blender that disallows it
try:
    bpy.ops.neurallabel.install_dependencies()
    out["offline"] = "finished"
except RuntimeError as exc:
    out["offline"] = str(exc)
out["offline_started"] = len(started)

P.install_refusal = (lambda real: lambda version, online: real(version, True))(P.install_refusal)
fake = [sys.executable, "-c", "import sys; [print(f'step {i}', flush=True) for i in range(3)]"]
P.install_commands = lambda python, target, index=None: [fake, fake]
out["install"] = sorted(bpy.ops.neurallabel.install_dependencies())
out["install_commands"] = started[-1]

# Progress lines reach the installer while it runs; cancel kills the running command and stops the list.
slow = [sys.executable, "-u", "-c", "import time\\nfor i in range(100): print(f'line {i}'); time.sleep(0.1)"]
job = D.InstallProcess([slow, slow]).start()
deadline = time.monotonic() + 20
while not any(l.startswith("line 2") for l in job.lines) and time.monotonic() < deadline:
    time.sleep(0.05)
out["seen_before_cancel"] = job.last_line()
t0 = time.monotonic()
job.cancel()
out["cancel_code"] = job.wait(10)
out["cancel_s"] = time.monotonic() - t0
out["cancel_lines"] = job.lines
failing = D.InstallProcess([[sys.executable, "-c", "print('ERROR: no wheel'); raise SystemExit(1)"], slow]).start()
out["fail"] = [failing.wait(10), failing.last_line(), len(failing.lines)]

# The modal path (the UI: no window here, so stand-ins): invoke starts the install and returns at once; the
# timer shows its last line in the status bar; Esc kills it.
from types import SimpleNamespace as NS
Op = D.NEURALLABEL_OT_install_dependencies
class Modal:
    _begin, _end, invoke, modal = Op._begin, Op._end, Op.invoke, Op.modal
    def __init__(self):
        self.reports = []
    def report(self, kind, message):
        self.reports.append([sorted(kind)[0], message])
status = []
D.bpy = NS(app=NS(background=False, online_access=True))
wm = NS(event_timer_add=lambda step, window=None: "timer", modal_handler_add=lambda op: status.append("handler"),
        event_timer_remove=lambda timer: status.append("timer_removed"))
context = NS(window="window", window_manager=wm, workspace=NS(status_text_set=status.append))
P.install_commands = lambda python, target, index=None: [slow]
op = Modal()
t0 = time.monotonic()
out["modal_invoke"] = sorted(op.invoke(context, NS(type="LEFTMOUSE")))
out["modal_invoke_s"] = time.monotonic() - t0
outcomes = []
while op._install.lines[-1:] in ([], [op._install.lines[0]]) and time.monotonic() - t0 < 20:
    outcomes.append(sorted(op.modal(context, NS(type="TIMER"))))
    time.sleep(0.05)
outcomes.append(sorted(op.modal(context, NS(type="MOUSEMOVE"))))
outcomes.append(sorted(op.modal(context, NS(type="ESC"))))
while outcomes[-1] == ["RUNNING_MODAL"] and time.monotonic() - t0 < 20:
    outcomes.append(sorted(op.modal(context, NS(type="TIMER"))))
    time.sleep(0.05)
out["modal_outcomes"], out["modal_status"], out["modal_reports"] = outcomes, status, op.reports

# Check Worker: the worker Python (here this one) reports torch, CUDA, numpy and nothing missing.
out["check"] = sorted(bpy.ops.neurallabel.check_worker())
out["check_line"] = bpy.context.scene.neurallabel.worker_check
out["summary"] = D.check_summary({"python": "3.13", "torch": None, "cuda": False, "numpy": "2.1",
                                  "missing": ["torch", "cv2"]})
emit(out)
'''


def test_install_commands_refusals_and_process(tmp_path):
    result = run_bpy(INSTALL_SCRIPT, {}, tmp_path)
    requirements = requirement_lines()
    torch_command, rest = result["commands"]
    assert torch_command[-1] == requirements[0] == "torch==2.13.0"
    assert torch_command[torch_command.index("--index-url") + 1] == "https://download.pytorch.org/whl/cu128"
    assert rest[-len(requirements) + 1:] == requirements[1:] and "--index-url" not in rest  # the complete list
    assert torch_command[:4] == ["py", "-m", "pip", "install"] and "/t" in torch_command and "/t" in rest
    assert result["index"] == {"linux-True": "https://download.pytorch.org/whl/cu128",
                               "linux-False": "https://download.pytorch.org/whl/cpu",
                               "win32-True": "https://download.pytorch.org/whl/cu128",
                               "win32-False": "https://download.pytorch.org/whl/cpu",
                               "darwin-True": None, "darwin-False": None}
    assert "--index-url" not in result["mac"][0]
    refusals = result["refusals"]
    assert refusals["ok"] is None and "Allow Online Access" in refusals["offline"]
    assert "3.13" in refusals["py313"] and "set Worker Python" in refusals["py313"]
    assert result["online_access"] is False
    assert "Online access is disabled" in result["offline"] and result["offline_started"] == 0
    assert result["install"] == ["FINISHED"] and len(result["install_commands"]) == 2
    assert result["seen_before_cancel"].startswith("line ")
    assert result["cancel_code"] == -1 and result["cancel_s"] < 5
    assert not any(line.startswith("[2/2]") for line in result["cancel_lines"])  # the list stopped
    assert not any(line == "line 99" for line in result["cancel_lines"])  # killed, not run to its end
    assert result["fail"] == [1, "ERROR: no wheel", 2]  # the first failure stops the list
    assert result["modal_invoke"] == ["RUNNING_MODAL"] and result["modal_invoke_s"] < 2  # never blocks
    outcomes = result["modal_outcomes"]
    assert ["PASS_THROUGH"] in outcomes and outcomes[-1] == ["CANCELLED"]
    status = result["modal_status"]
    assert status[0] == "handler" and any(re.search(r": line \d+$", str(line)) for line in status)  # progress shown
    assert "timer_removed" in status and status[-1] is None  # the status bar is given back
    assert result["modal_reports"][-1] == ["WARNING", "Installing the dependencies was cancelled"]
    assert result["check"] == ["FINISHED"] and "all dependencies found" in result["check_line"]
    assert "torch" in result["check_line"] and "numpy" in result["check_line"]
    assert result["summary"].endswith("missing: torch, cv2") and "torch missing" in result["summary"]
