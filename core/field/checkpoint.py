"""Field checkpoints: versioned, self-describing, written atomically, loadable on any device.

A checkpoint is one ``torch.save`` file holding only plain values and tensors (it loads with
``weights_only=True``)::

    {"format": "neurallabel-field", "version": 1,
     "config": FieldConfig as a dict,            # rebuilds the modules
     "state": state_dict,                        # grids, planes, MLP, occupancy grid (all on CPU)
     "dataset": {"path", "fingerprint", "frames"},   # what it was trained on
     "training": {"step", "elapsed_s", "done", "options", "optimizer"}}

CUDA-trained tensors are moved to the CPU before saving, so a checkpoint loads anywhere and back. The
file is created with the umask's mode (teammates on a shared server can read it).

Safety checks for callers that load a field to label with: :func:`check_dataset` (trained on these
frames?) and :func:`check_finite` (a diverged run leaves NaN/inf density: "damaged field").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch

from ..errors import NeuralLabelError
from ..io.files import file_problem
from ..io.atomic import write_with
from .model import Field, FieldConfig

if TYPE_CHECKING:
    from ..data.dataset import Dataset, Frame

FORMAT = "neurallabel-field"
VERSION = 1


@dataclass
class Checkpoint:
    field: Field
    dataset: dict[str, Any] = dc_field(default_factory=dict)
    training: dict[str, Any] = dc_field(default_factory=dict)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_checkpoint(path: str | Path, field: Field, *, dataset: Optional[dict[str, Any]] = None,
                    training: Optional[dict[str, Any]] = None) -> None:
    """Write the checkpoint to a temporary file next to ``path``, then rename it into place (mode by umask,
    so teammates can read it where the umask lets them)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": field.config.to_dict(),
        "state": _to_cpu(field.state_dict()),
        "dataset": dataset or {},
        "training": _to_cpu(training or {}),
    }
    write_with(path, lambda tmp: torch.save(payload, tmp))


#: nerfacc's ``OccGridEstimator`` was once cached on the occupancy grid, as a sub-module: CUDA-trained
#: checkpoints of that time hold its buffers (a copy of the grid) under this prefix
ESTIMATOR_PREFIX = "occupancy._estimator."


def without_estimator(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the cached estimator's copies of the occupancy grid (old CUDA checkpoints)."""
    return {key: value for key, value in state.items() if not key.startswith(ESTIMATOR_PREFIX)}


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; NeuralLabelError for a missing/unreadable file, another format or version."""
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:  # a FIFO would hang torch.load; a folder is not "missing"
        raise NeuralLabelError(f"{path}: field checkpoint {problem}", field="field")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise NeuralLabelError(f"{path}: not a NeuralLabel field checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NeuralLabelError(f"{path}: not a NeuralLabel field checkpoint")
    version = payload.get("version")
    if version != VERSION:
        raise NeuralLabelError(
            f"{path}: field checkpoint version {version!r} is not supported by this NeuralLabel "
            f"(reads version {VERSION}); retrain the field with `neurallabel train`")
    try:
        config = FieldConfig.from_dict(payload["config"])
        field = Field(config)
        state = payload["state"]
        grid = state.get("density_grid")
        if grid is not None and grid.shape != field.density_grid.shape:
            field.resize_density(int(grid.shape[-1]))
        field.load_state_dict(without_estimator(state))
    except NeuralLabelError:
        raise
    except Exception as exc:
        raise NeuralLabelError(f"{path}: damaged field checkpoint ({exc})") from None
    field.eval()
    return Checkpoint(field.to(device), payload.get("dataset", {}), payload.get("training", {}))


def dataset_fingerprint(frames: Sequence["Frame"]) -> str:
    """A short hash of the frames a field is trained on (image names, poses, intrinsics)."""
    digest = hashlib.sha256()
    for f in frames:
        digest.update(f.image_path.name.encode())
        digest.update(np.asarray(f.cam_to_data, dtype=np.float64).round(6).tobytes())
        i = f.intrinsics
        digest.update(json.dumps([i.width, i.height, i.fx, i.fy, i.cx, i.cy, list(i.distortion)]).encode())
    return digest.hexdigest()[:16]


def check_dataset(checkpoint: Checkpoint, frames: Sequence["Frame"], data: str | Path, *,
                  source: str | Path = "field", what: str = "field") -> None:
    """NeuralLabelError naming both datasets unless ``checkpoint`` was trained on ``frames`` (from ``data``;
    ``source`` names the checkpoint, ``what`` the request field at fault)."""
    trained = checkpoint.dataset.get("fingerprint")
    if trained != dataset_fingerprint(frames):
        raise NeuralLabelError(
            f"{source}: this checkpoint was trained on other frames "
            f"({checkpoint.dataset.get('path') or 'an unnamed dataset'}) than {data}'s", field=what)


def check_trained_on(checkpoint: Checkpoint, dataset: "Dataset", data: str | Path, *, source: str | Path,
                     what: str | None = "field") -> None:
    """:func:`check_dataset` against ``dataset``'s train split fingerprinted as training did it: at the
    downscale the checkpoint trained with (intrinsics are part of the fingerprint), re-reading ``data`` when
    ``dataset`` was loaded at another size."""
    from ..data.dataset import load_dataset

    options = checkpoint.training.get("options") or {}
    downscale = float(options.get("downscale") or 1.0)
    trained_on = dataset if downscale == dataset.downscale else load_dataset(data, downscale)
    check_dataset(checkpoint, trained_on.split("train"), data, source=source, what=what)


@torch.no_grad()
def check_finite(field: Field, *, what: str = "field") -> None:
    """NeuralLabelError "damaged field" when the field's density holds NaN or infinity (a diverged run):
    every depth and label rendered from it would be garbage."""
    bad = int((~torch.isfinite(field.density_grid)).sum())
    if bad:
        raise NeuralLabelError(f"damaged field: {bad} of {field.density_grid.numel()} density values are "
                               "NaN or infinite (training diverged); retrain the field", field=what)
