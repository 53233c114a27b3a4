"""A bake's frames as Ray tasks (``neurallabel bake SPEC --out DIR --ray [ADDRESS]``; ``pip install
"neurallabel[ray]"``). The only module that imports ray; :mod:`.phases` imports it only when asked to.

The driver prepares once (claim, manifest, models); each task bakes a chunk of the frames into the shared
folder: it re-runs :func:`~.bake.prepare` (the claim resumes, the models come from the cache, static files are
left as they are) and :func:`~.bake.bake_frames` on its chunk. A task whose worker dies is run again
(``max_retries``): the frames it finished keep their fragments, so the retry does only the rest. The driver
assembles once, after every chunk.
"""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import NeuralLabelError
from ..progress import ProgressFn, report
from ..spec import LabelSpec
from .bake import BakeJob, FramesDone, bake_frames, prepare
from .phases import RayOptions, unfinished_frames

try:
    import ray
except ImportError:
    raise NeuralLabelError('ray: Ray is not installed: pip install "neurallabel[ray]"', field="ray") from None


def _host_port(address: str) -> Optional[tuple[str, int]]:
    """``HOST:PORT`` of an address (``ray://`` or not); None for ``auto`` and other names Ray resolves."""
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast, naming the address, rather than wait for Ray's own (long) connection retries."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as exc:
        raise NeuralLabelError(f"ray: no Ray cluster answers at {address} ({exc.strerror or exc})",
                               field="ray") from None


def task_device(device: str) -> str:
    """A task's device: Ray shows a task only its own GPUs, so ``cuda:N`` on the driver is ``cuda`` there."""
    return "cuda" if device.startswith("cuda") else device


def chunks(frames: Sequence[int], size: int) -> list[list[int]]:
    return [list(frames[i:i + size]) for i in range(0, len(frames), size)]


def _bake_chunk(spec: LabelSpec, out_dir: Path, settings: dict, frames: list[int]) -> tuple[dict, list[str]]:
    """One task: the job rebuilt from the same spec and settings (same manifest, so the claim resumes),
    restricted to ``frames``. Returns the :class:`FramesDone` fields and the GPU ids Ray gave the task."""
    job = prepare(spec, out_dir, **settings)
    job.todo = list(frames)
    return asdict(bake_frames(job)), [str(g) for g in ray.get_gpu_ids()]


class RayRunner:
    """A connection to a Ray cluster (started locally or joined) that bakes a job's frames as tasks."""

    def __init__(self, options: RayOptions, started: bool) -> None:
        self.options = options
        self.started = started  # we started (or joined) Ray here, so we shut it down
        self.chunk_gpu_ids: list[list[str]] = []  # per finished chunk: the GPU ids its task saw

    @classmethod
    def connect(cls, options: RayOptions) -> "RayRunner":
        if ray.is_initialized():  # the caller's own Ray session (a notebook, the tests)
            return cls(options, started=False)
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if options.address == "local":
            ray.init(num_cpus=options.num_cpus, **quiet)
            return cls(options, started=True)
        _check_reachable(options.address, options.connect_timeout_s)
        try:
            ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise NeuralLabelError(f"ray: cannot join the Ray cluster at {options.address}: {exc}",
                                   field="ray") from None
        return cls(options, started=True)

    def close(self) -> None:
        if self.started:
            ray.shutdown()

    def _chunk_size(self, count: int) -> int:
        if self.options.chunk_frames is not None:
            return max(1, int(self.options.chunk_frames))
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return max(1, math.ceil(count / (2 * cpus)))  # two chunks per CPU: the last ones end close together

    def bake_frames(self, job: BakeJob, spec: LabelSpec, settings: dict[str, Any],
                    progress: Optional[ProgressFn] = None) -> FramesDone:
        """:func:`~.bake.bake_frames` of ``job`` (prepared by ``prepare(spec, job.out_dir, **settings)``) on
        Ray; ``progress`` hears of each chunk as it finishes."""
        device = settings.get("device", "cpu")
        gpus = self.options.gpus_per_task
        if gpus is None:
            gpus = 0.5 if str(device).startswith("cuda") else 0.0
        task_settings = {**settings, "device": task_device(str(device))}
        todo = unfinished_frames(job)
        done = FramesDone(skipped=len(job.todo) - len(todo))
        total = len(job.todo)
        report(progress, done.skipped, total, "bake")
        remote = ray.remote(_bake_chunk).options(num_cpus=1, num_gpus=gpus, max_retries=self.options.max_retries)
        spec_ref, settings_ref = ray.put(spec), ray.put(task_settings)
        pending = {remote.remote(spec_ref, job.out_dir, settings_ref, chunk): chunk
                   for chunk in chunks(todo, self._chunk_size(len(todo)))}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    pending.pop(ref)
                    fields, gpu_ids = _result(ref)
                    part = FramesDone(**fields)
                    done = replace(done, baked=done.baked + part.baked, skipped=done.skipped + part.skipped,
                                   instances=done.instances + part.instances,
                                   label_seconds=done.label_seconds + part.label_seconds)
                    self.chunk_gpu_ids.append(gpu_ids)
                    report(progress, done.baked + done.skipped, total, "bake")
        finally:
            for ref in pending:  # an error or a cancel: stop the rest (finished frames stay finished)
                ray.cancel(ref, force=True)
        return done


def _result(ref: Any) -> Any:
    """A task's result; a task's NeuralLabelError is raised as itself (its message names the field)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, NeuralLabelError):
            raise exc.cause from None
        raise
