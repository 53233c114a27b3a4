"""Test-only: slows every baked frame by ``NEURALLABEL_TEST_FRAME_SECONDS`` in processes the cancel tests start.

The cancel tests (SIGTERM, the worker's cancel, Esc in Blender) must land in the middle of a bake. How fast a
frame bakes depends on the machine and the marcher, so a timing guess is a flaky test. The tests put this folder
on ``PYTHONPATH``; Python imports ``sitecustomize`` at start-up in every child (CLI, worker, Blender), and this
hook wraps ``finish_view`` of the bake pipeline (a frame's label math, on the bake's own thread) when that
module is first imported, without importing anything itself (torch before bpy would change what the Blender
process does).
"""

import importlib.abc
import importlib.machinery
import os
import sys
import time

# The package's name depends on how it was loaded: ``neurallabel`` when installed, ``bl_ext.<repo>.neurallabel`` in
# Blender, and the extension folder's own name when the worker runs as a script (``core/worker.py``).
_TARGET_SUFFIX = ".core.pipeline.bake"
_SECONDS = float(os.environ.get("NEURALLABEL_TEST_FRAME_SECONDS", "0") or 0)


class _SlowFrames(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if not name.endswith(_TARGET_SUFFIX):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            real_finish_view = module.finish_view

            def finish_view(job, rendered):
                time.sleep(_SECONDS)
                return real_finish_view(job, rendered)

            module.finish_view = finish_view

        spec.loader.exec_module = exec_module
        return spec


if _SECONDS > 0:
    sys.meta_path.insert(0, _SlowFrames())
