"""Field checkpoints: versioned, self-describing, written atomically, loadable on any device.

A checkpoint is one ``torch.save`` file holding only plain values and tensors (it loads with
``weights_only=True``)::

    {"format": "neurallabel-field", "version": 1,
     "config": FieldConfig as a dict,            # rebuilds the modules
     "state": state_dict,                        # grids, planes, MLP, occupancy grid (all on CPU)
     "dataset": {"path", "fingerprint", "frames"},   # what it was trained on
     "training": {"step", "elapsed_s", "done", "options", "optimizer"}}

CUDA-trained tensors are moved to the CPU before saving, so a checkpoint loads anywhere and back.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import NeuralLabelError
from .model import Field, FieldConfig

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
    """Write the checkpoint to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": field.config.to_dict(),
        "state": _to_cpu(field.state_dict()),
        "dataset": dataset or {},
        "training": _to_cpu(training or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; NeuralLabelError for a missing/unreadable file, another format or version."""
    path = Path(path)
    if not path.is_file():
        raise NeuralLabelError(f"{path}: field checkpoint does not exist")
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
        field.load_state_dict(state)
    except NeuralLabelError:
        raise
    except Exception as exc:
        raise NeuralLabelError(f"{path}: damaged field checkpoint ({exc})") from None
    field.eval()
    return Checkpoint(field.to(device), payload.get("dataset", {}), payload.get("training", {}))
