"""The semantic head: class logits from position only (Semantic-NeRF's head), composited with the frozen
field's weights, ``logits(ray) = Σ_k w_k logits(x_k)``.

Its own low-resolution tri-plane over the field's normalised cube (so labels spread through 3D space, not
through the field's colour features; a 24^3 grid was too coarse for table-top objects, 64^3 too many
parameters for a CPU round) plus the position itself, into a small MLP. The checkpoint holds
the class table (head output ``i`` is category id ``class_ids[i]``) and the fingerprint of the frames the
field was trained on: a head never labels another dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import NeuralLabelError
from ..io.atomic import write_with
from ..io.files import file_problem

FORMAT = "neurallabel-semantic-head"
VERSION = 1


@dataclass
class HeadConfig:
    class_ids: list[int]  # category id of each output
    resolution: int = 64  # tri-plane vertices per axis over the field's [-1, 1]^3
    features: int = 8
    hidden: int = 32

    @property
    def n_classes(self) -> int:
        return len(self.class_ids)


class SemanticHead(torch.nn.Module):
    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        r = config.resolution
        self.grid = torch.nn.Parameter(torch.zeros(3, config.features, r, r))  # xy, xz, yz planes
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3 * config.features + 3, config.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(config.hidden, config.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(config.hidden, config.n_classes))

    def forward(self, coords: Tensor) -> Tensor:
        """(M, C) logits at normalised coordinates (M, 3) in [-1, 1]."""
        planes = torch.stack([coords[:, [0, 1]], coords[:, [0, 2]], coords[:, [1, 2]]]).unsqueeze(1)
        sampled = F.grid_sample(self.grid, planes, mode="bilinear", padding_mode="border",
                                align_corners=True)  # (3, F, 1, M)
        features = sampled.squeeze(2).permute(2, 0, 1).reshape(coords.shape[0], -1)
        return self.mlp(torch.cat([features, coords], dim=-1))


def ray_logits(head: SemanticHead, cache, chunk: int = 1 << 20) -> Tensor:
    """(N, C) composited logits ``Σ w_k logits_k`` of every ray in a :class:`.rays.RayCache`."""
    out = torch.zeros(cache.n_rays, head.config.n_classes)
    # index_add, not segment_sum: segment_reduce's backward on the CPU was half of a training step
    for begin in range(0, cache.coords.shape[0], chunk):
        part = slice(begin, begin + chunk)
        out = out.index_add(0, cache.ray_indices[part], cache.weights[part, None] * head(cache.coords[part]))
    return out


def save_head(path: str | Path, head: SemanticHead, *, field_fingerprint: str | None, info: dict | None = None) -> None:
    payload = {"format": FORMAT, "version": VERSION, "config": asdict(head.config),
               "state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
               "field_fingerprint": field_fingerprint, "info": info or {}}
    write_with(path, lambda tmp: torch.save(payload, tmp))


@dataclass
class HeadCheckpoint:
    head: SemanticHead
    field_fingerprint: str | None
    info: dict[str, Any]


def load_head(path: str | Path) -> HeadCheckpoint:
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise NeuralLabelError(f"{path}: semantic head {problem}", field="head")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NeuralLabelError(f"{path}: not a semantic head ({type(exc).__name__})", field="head") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NeuralLabelError(f"{path}: not a semantic head", field="head")
    if payload.get("version") != VERSION:
        raise NeuralLabelError(f"{path}: semantic head version {payload.get('version')!r} is not supported",
                               field="head")
    try:
        head = SemanticHead(HeadConfig(**payload["config"]))
        head.load_state_dict(payload["state"])
    except Exception as exc:
        raise NeuralLabelError(f"{path}: damaged semantic head ({exc})", field="head") from None
    head.eval()
    return HeadCheckpoint(head, payload.get("field_fingerprint"), payload.get("info") or {})


def check_head_matches(checkpoint: HeadCheckpoint, field_fingerprint: str | None, source: str | Path) -> None:
    """NeuralLabelError (field ``head``) unless the head was trained on a field of these very frames."""
    if checkpoint.field_fingerprint != field_fingerprint:
        raise NeuralLabelError(f"{source}: this semantic head was trained with a field of other frames "
                               f"(fingerprint {checkpoint.field_fingerprint}, the field's is {field_fingerprint})",
                               field="head")
