"""The selection state: one JSON file holding every round chosen so far, written atomically.

::

    {"format": "neurallabel-selection", "version": 1, "field_fingerprint": ..., "strategy": ...,
     "granularity": "patch:16", "seed": 0,
     "rounds": [{"round": 0, "budget": 4096, "cost": 4096, "selected": [{frame, image, x, y, w, h}, ...]}]}

A round's random draws are seeded by (seed, round), so re-running a round (after a kill, before its state
was written) chooses the same units; units of earlier rounds are never chosen again (they are waiting for
their labels, and count as labelled for novelty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NeuralLabelError
from ..io.atomic import write_json
from ..io.jsonfile import read_json

FORMAT = "neurallabel-selection"
VERSION = 1


def new_state(field_fingerprint: str | None, strategy: str, granularity: str, seed: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "field_fingerprint": field_fingerprint, "strategy": strategy,
            "granularity": granularity, "seed": int(seed), "rounds": []}


def load_state(path: str | Path, field_fingerprint: str | None, strategy: str, granularity: str,
               seed: int) -> dict[str, Any]:
    """The state at ``path`` (a new one when there is no file); NeuralLabelError (field ``state``) when it
    belongs to another field, strategy, granularity or seed."""
    path = Path(path)
    fresh = new_state(field_fingerprint, strategy, granularity, seed)
    if not path.exists():
        return fresh
    state = read_json(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("rounds"), list):
        raise NeuralLabelError(f"{path}: not a selection state file", field="state")
    for key in ("field_fingerprint", "strategy", "granularity", "seed"):
        if state.get(key) != fresh[key]:
            raise NeuralLabelError(f"{path}: its {key} is {state.get(key)!r}, this selection's {fresh[key]!r} "
                                   "(give another --state, or the same settings)", field="state")
    return state


def round_rng(state: dict[str, Any]) -> np.random.Generator:
    return np.random.default_rng([int(state["seed"]), len(state["rounds"])])


def selected_before(state: dict[str, Any]) -> list[dict]:
    return [rect for r in state["rounds"] for rect in r["selected"]]


def add_round(path: str | Path, state: dict[str, Any], budget: int, cost: int, selected: list[dict]) -> dict:
    state = dict(state, rounds=list(state["rounds"]) + [
        {"round": len(state["rounds"]), "budget": int(budget), "cost": int(cost), "selected": selected}])
    write_json(path, state)
    return state
