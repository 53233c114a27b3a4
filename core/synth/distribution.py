"""A pose distribution over bins (azimuth x elevation x distance), parameterised by logits.

Sampling is Neural-Sim's Tool 1: a Gumbel-softmax over the bins (temperature ``tau``) picks a bin, then a
uniform draw places the pose inside it. Every draw's noise (the Gumbel uniforms and the in-bin offsets) is
returned in a :class:`Draws` and can be saved: :func:`replay` gives the same poses from it (Tool 2: "twice
forward, once backward" needs the same sample twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import NeuralLabelError
from .poses import AXES, Range

#: a bin given weight 0 gets this logit (finite: the logits never hold log 0)
MIN_LOGIT = -30.0
#: uniforms are kept this far from 0 and 1 (the Gumbel noise -log(-log u) is finite)
EPS = 1e-7


@dataclass(frozen=True)
class Bins:
    """The bin lattice: one Range per axis; bin b = (ia, ie, id) in C order (azimuth slowest)."""

    ranges: tuple[Range, Range, Range]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(r.count for r in self.ranges)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape))

    def index(self, b: int) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.unravel_index(b, self.shape))

    def bounds(self, b: int) -> list[tuple[float, float]]:
        """[(low, high)] per axis of bin ``b``."""
        return [(float(r.edges()[i]), float(r.edges()[i + 1])) for r, i in zip(self.ranges, self.index(b))]

    def place(self, bins: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(N, 3) azimuth, elevation, distance of bins ``bins`` (N,) at in-bin ``offsets`` (N, 3) in [0, 1)."""
        idx = np.stack(np.unravel_index(np.asarray(bins), self.shape), axis=1)
        out = np.empty((len(bins), 3))
        for axis, r in enumerate(self.ranges):
            edges = r.edges()
            low, high = edges[idx[:, axis]], edges[idx[:, axis] + 1]
            out[:, axis] = low + offsets[:, axis] * (high - low)
        return out

    def locate(self, coords: np.ndarray) -> np.ndarray:
        """(N,) the bin of each (azimuth, elevation, distance) row; values outside a range go to its end bin."""
        idx = []
        for axis, r in enumerate(self.ranges):
            v = np.asarray(coords)[:, axis]
            if axis == 0:  # azimuth: move by whole turns into [low, low + 360)
                v = r.low + np.mod(v - r.low, 360.0)
            width = (r.high - r.low) / r.count
            i = np.floor((v - r.low) / width) if width > 0 else np.zeros_like(v)
            idx.append(np.clip(i, 0, r.count - 1).astype(int))
        return np.ravel_multi_index(tuple(idx), self.shape)

    def to_json(self) -> dict:
        return {name: r.to_json() for name, r in zip(AXES, self.ranges)}


@dataclass(frozen=True)
class Draws:
    """N draws and their noise: enough to replay them exactly (``synth/draws.npz`` holds these arrays)."""

    gumbel_uniform: np.ndarray  # (N, B) the uniforms of the Gumbel noise
    offsets: np.ndarray  # (N, 3) the uniform in-bin offsets
    bins: np.ndarray  # (N,) the chosen bins
    coords: np.ndarray  # (N, 3) azimuth (deg), elevation (deg), distance


def check_tau(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise NeuralLabelError(f"tau {tau!r}: the Gumbel-softmax temperature must be > 0", field="tau")
    return float(tau)


def logits_from_weights(weights: Sequence[float], count: int) -> np.ndarray:
    """Logits of non-negative ``weights`` (one per bin, not all 0); a 0 weight gets ``MIN_LOGIT``."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != count:
        raise NeuralLabelError(f"weights: {w.size} values for {count} bins", field="weights")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise NeuralLabelError("weights must be finite, >= 0 and not all 0", field="weights")
    p = w / w.sum()
    return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), MIN_LOGIT)


def load_weights(value: Optional[str], bins: Bins) -> np.ndarray:
    """Logits from ``"uniform"``/None, or a JSON file: a list of weights, or a psi.json (its ``probabilities``)."""
    if value is None or value == "uniform":
        return np.zeros(bins.count)
    import json

    path = Path(value)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NeuralLabelError(f"weights {value}: not a readable JSON file ({exc})", field="weights") from None
    if isinstance(data, dict):
        data = data.get("probabilities", data.get("weights"))
    if not isinstance(data, list):
        raise NeuralLabelError(f"weights {value}: expected a list of weights or a psi.json", field="weights")
    return logits_from_weights(data, bins.count)


def probabilities(logits) -> np.ndarray:
    return torch.softmax(torch.as_tensor(np.asarray(logits, dtype=np.float64)), dim=0).numpy()


def gumbel_softmax(logits: torch.Tensor, uniforms: torch.Tensor, tau: float) -> torch.Tensor:
    """(N, B) relaxed one-hot samples softmax((logits + g) / tau), g = -log(-log u): differentiable in logits."""
    g = -torch.log(-torch.log(uniforms))
    return torch.softmax((logits[None, :] + g) / tau, dim=-1)


def replay(logits, bins: Bins, gumbel_uniform: np.ndarray, offsets: np.ndarray, tau: float) -> Draws:
    """The draws of the given noise: the bin is the arg max of the Gumbel-softmax (the exact categorical
    sample of softmax(logits)), the pose its in-bin offsets."""
    tau = check_tau(tau)
    soft = gumbel_softmax(torch.as_tensor(np.asarray(logits, dtype=np.float64)),
                          torch.as_tensor(gumbel_uniform, dtype=torch.float64), tau)
    chosen = soft.argmax(dim=-1).numpy()
    return Draws(np.asarray(gumbel_uniform), np.asarray(offsets), chosen, bins.place(chosen, offsets))


def sample(logits, bins: Bins, n: int, rng: np.random.Generator, tau: float = 0.1) -> Draws:
    """``n`` draws (Tool 1), with their noise from ``rng``."""
    u = rng.uniform(EPS, 1.0 - EPS, size=(n, bins.count))
    v = rng.uniform(0.0, 1.0, size=(n, 3))
    return replay(logits, bins, u, v, tau)


def log_prob(logits: torch.Tensor, chosen: np.ndarray) -> torch.Tensor:
    """(N,) log p(bin) under softmax(logits): the score function of REINFORCE."""
    return torch.log_softmax(logits, dim=0)[torch.as_tensor(chosen, dtype=torch.long)]


def histogram_logits(coords: np.ndarray, bins: Bins, smoothing: float = 0.0) -> np.ndarray:
    """Logits of the pose histogram of ``coords`` (N, 3) over ``bins`` (``--fit-to-poses``)."""
    counts = np.bincount(bins.locate(coords), minlength=bins.count).astype(np.float64) + smoothing
    return logits_from_weights(counts, bins.count)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def psi_json(bins: Bins, logits, tau: float, seed: Optional[int], *, orbit: Optional[dict] = None,
             history: Optional[list] = None, extra: Optional[dict] = None) -> dict:
    """The distribution in human terms: each bin's ranges (degrees, world units) and probability."""
    p = probabilities(logits)
    table = []
    for b in range(bins.count):
        (a0, a1), (e0, e1), (d0, d1) = bins.bounds(b)
        table.append({"bin": b, "azimuth": [a0, a1], "elevation": [e0, e1], "distance": [d0, d1],
                      "probability": float(p[b])})
    out = {"sampler": "gumbel-softmax", "tau": tau, "seed": seed, "ranges": bins.to_json(),
           "logits": [float(x) for x in np.asarray(logits)], "probabilities": [float(x) for x in p], "bins": table}
    if orbit is not None:
        out["orbit"] = orbit
    if history is not None:
        out["history"] = history
    out.update(extra or {})
    return out
