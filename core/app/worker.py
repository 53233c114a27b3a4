"""The worker process: ``python <extension>/core/worker.py job.json`` runs one heavy job outside Blender.

Blender starts it with ``subprocess.Popen`` (never ``multiprocessing``: spawned children cannot import
``bl_ext.*``) and reads its stdout, the JSON-lines events of :mod:`.events` (exit code 0 after the result;
2 after an error the user can fix; 3 when a module is missing; 130 after a cancel).

A job file is a JSON object: ``kind`` (one of :data:`.jobs.JOB_KINDS`) and the fields of that kind's request
(:mod:`.jobs`, e.g. ``{"kind": "bake", "spec": ..., "out": ..., "frames": "0:10", "device": "cuda"}``), plus
two keys of the worker's own:

- ``threads``: torch CPU threads.
- ``sys_path``: folders to import the dependencies from. A job file must not be able to run code of its
  choosing, so only the add-on's own folders are accepted -- the extension folder and ``site-packages``
  folders (where "Install dependencies" puts the packages; the add-on normally passes it as ``PYTHONPATH``)
  -- and they go *last* on ``sys.path``: they add missing packages and never shadow a module this Python
  already has.

SIGTERM is handled between units of work (a baked frame, a training step, an ICP iteration): the bake
writers write each file to a temp name and rename it, so stopping between frames leaves only whole frames.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path

from ..errors import NeuralLabelError
from ..progress import Cancelled
from .events import EventWriter

#: The extension folder (the package root: core/app/worker.py is three levels down).
EXTENSION_DIR = Path(__file__).resolve().parents[2]
WORKER_KEYS = ("sys_path", "threads")
DEPENDENCIES_FOLDER = "site-packages"


def allowed_sys_path(folders: object) -> list[str]:
    """The job's ``sys_path`` checked against the add-on's own folders (see the module docstring)."""
    if folders is None:
        return []
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        raise NeuralLabelError("sys_path must be a list of folders", field="sys_path")
    allowed = []
    for folder in folders:
        path = Path(folder)
        resolved = path.resolve()
        if not path.is_absolute() or not (resolved == EXTENSION_DIR or resolved.name == DEPENDENCIES_FOLDER):
            raise NeuralLabelError(f"sys_path {folder!r}: only the extension folder ({EXTENSION_DIR}) and "
                                   f"'{DEPENDENCIES_FOLDER}' folders may be added", field="sys_path")
        allowed.append(str(resolved))
    return allowed


def read_job(path: str) -> dict:
    try:
        job = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NeuralLabelError(f"{path}: cannot read the job ({exc})") from None
    if not isinstance(job, dict):
        raise NeuralLabelError(f"{path}: a job must be a JSON object")
    return job


def run_job(job: dict, events: EventWriter) -> dict:
    """Run one job object in this process; its result as the worker reports it."""
    from .jobs import request_from_job, run

    request = request_from_job(job, ignore=WORKER_KEYS)
    threads = job.get("threads")
    if getattr(request, "field", None) is not None or request.kind in ("train", "render") or threads:
        import torch  # first: a worker Python without torch is told so before any other work

        if threads:
            torch.set_num_threads(int(threads))
    result = run(request, events.progress, events.notice)
    if request.kind == "bake":  # the add-on's Bake (operators/bake.py) reads the numbers under "summary"
        result["summary"] = {k: v for k, v in result.items() if k != "kind"}
    return result


def missing_module_message(exc: ModuleNotFoundError) -> str:
    return (f"the worker's Python ({sys.executable}) cannot import {exc.name!r}: install NeuralLabel's "
            "dependencies into it, or choose a worker Python that has them (torch, numpy, scipy, trimesh, "
            "pillow)")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python core/worker.py JOB.json", file=sys.stderr)
        return 2
    cancel = {"requested": False}

    def on_sigterm(signum, frame):  # stop at the next unit of work (see the module docstring)
        cancel["requested"] = True

    signal.signal(signal.SIGTERM, on_sigterm)
    events = EventWriter(sys.stdout, min_interval_s=0.1, cancel_requested=lambda: cancel["requested"])
    try:
        job = read_job(argv[0])
        for folder in allowed_sys_path(job.get("sys_path")):
            if folder not in sys.path:
                sys.path.append(folder)
        result = run_job(job, events)
        # Done: a SIGTERM from now on has nothing to stop (and must not kill the exit half-way).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        events.result(result)
        return 0
    except (Cancelled, KeyboardInterrupt):
        events.cancelled()
        return 130
    except NeuralLabelError as exc:
        events.user_error(exc)
        return 2
    except ModuleNotFoundError as exc:
        events.error(missing_module_message(exc), "worker_python")
        return 3
    except Exception as exc:  # a bug: the traceback goes to stderr, the message to Blender
        traceback.print_exc(file=sys.stderr)
        events.error(f"worker failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
