"""A bake in pieces: run some of its stages (``--no-assemble``, ``--assemble-only``) or its frames on Ray.

Shards of one bake may run at the same time (a Slurm job array, Ray tasks): each labels its own frames into
the same folder (``--no-assemble``), then one last run writes the aggregate files (``--assemble-only``), which
it refuses while any selected frame is unfinished -- a dataset missing frames must not look complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import NeuralLabelError
from ..progress import ProgressFn

if TYPE_CHECKING:  # the requests import this module: the bake's own (heavy) imports wait for a bake
    from ..spec import LabelSpec
    from .bake import BakeJob


@dataclass(frozen=True)
class RayOptions:
    """Where and how a bake's frames run on Ray (:mod:`.ray_bake`)."""

    address: str = "local"  # "local": start a local cluster; else a cluster's address ("auto", "HOST:PORT", "ray://...")
    num_cpus: Optional[int] = None  # a local cluster's CPUs (None: all)
    chunk_frames: Optional[int] = None  # frames per task (None: about two tasks per CPU of the cluster)
    gpus_per_task: Optional[float] = None  # None: 0.5 when the device is CUDA (two tasks share a GPU), else 0
    max_retries: int = 3  # a task whose worker dies (killed, node lost) is run again; finished frames stay done
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class Stages:
    """Which stages of :func:`~.bake.bake` run: ``frames`` (label and write the selected frames, here or on
    ``ray``) and ``assemble`` (the aggregate files). Preparing (checks, claim, models) always runs."""

    frames: bool = True
    assemble: bool = True
    ray: Optional[RayOptions] = None


def stages_of(no_assemble: bool = False, assemble_only: bool = False, ray: Optional[str] = None) -> Stages:
    """The stages of a request's switches; errors name the field at fault."""
    if no_assemble and assemble_only:
        raise NeuralLabelError("assemble_only and no_assemble exclude each other: give one", field="assemble_only")
    if ray is not None and assemble_only:
        raise NeuralLabelError("assemble_only bakes no frames, so there is nothing to run on Ray", field="ray")
    if ray is not None and not str(ray).strip():
        raise NeuralLabelError("ray: empty address (leave it out to start a local cluster)", field="ray")
    return Stages(frames=not assemble_only, assemble=not no_assemble,
                  ray=None if ray is None else RayOptions(address=str(ray).strip()))


def unfinished_frames(job: BakeJob) -> list[int]:
    """The frames of ``job.todo`` without a fragment."""
    return [i for i in job.todo if not (job.fragments_dir / f"{i:06d}.json").is_file()]


def bake_in_stages(spec: LabelSpec, out_dir: str | Path, stages: Stages = Stages(), *,
                   progress: Optional[ProgressFn] = None, **settings: Any) -> dict:
    """:func:`~.bake.bake` (``settings``: its keyword arguments) running only the stages in ``stages``;
    returns the same summary."""
    from .bake import MANIFEST, FramesDone, assemble, bake_frames, prepare, read_fragments, summary

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    runner = None
    if stages.ray is not None:  # before any work: ray installed, the cluster reachable
        from .ray_bake import RayRunner

        runner = RayRunner.connect(stages.ray)
    try:
        if not stages.frames and not (out_dir / MANIFEST).is_file():
            raise NeuralLabelError(f"assemble_only: {out_dir} holds no bake to assemble (bake its frames first)",
                                   field="out")
        job = prepare(spec, out_dir, progress=progress, **settings)
        if runner is not None:
            done = runner.bake_frames(job, spec, settings, progress)
        elif stages.frames:
            done = bake_frames(job, progress)
        else:
            missing = unfinished_frames(job)
            if missing:
                raise NeuralLabelError(f"assemble_only: {len(missing)} of the {len(job.todo)} selected frames are "
                                       f"not baked yet (first: frame {missing[0]}); bake them first",
                                       field="assemble_only")
            done = FramesDone(skipped=len(job.todo))
        finished = assemble(job) if stages.assemble else len(read_fragments(job.fragments_dir))
    finally:
        if runner is not None:
            runner.close()
    return summary(job, done, finished, time.perf_counter() - t_start)
