"""Fuzzing the user-facing parsers with hypothesis: whatever the input, the only exception is NeuralLabelError.

The spec parser gets random JSON-like values and mutations of a valid spec; the transforms.json loader gets
mutations of a valid file, written to a temp file and loaded. Meshes are not loaded and the photos are
tiny, so a few hundred cases take seconds.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.spec import parse_spec

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["mesh", "box", "~nobody/x", "", ".", "/dev/zero", "a\x00b", "transforms.json"]))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=5)
                           | st.dictionaries(st.text(max_size=8), children, max_size=5), max_leaves=20)

POSE = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    frames = []
    for i in range(3):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(folder / f"{i}.png")
        frames.append({"file_path": f"{i}.png", "transform_matrix": POSE})
    (folder / "transforms.json").write_text(json.dumps({"fl_x": 8.0, "w": 8, "h": 6, "frames": frames}))
    (folder / "cube.ply").write_text("not loaded: load_meshes=False")
    return folder


def valid_spec() -> dict:
    return {"neurallabel_spec": 1, "data": "transforms.json", "field": None, "world_from_data": POSE,
            "units_to_mm": 1000.0, "frames": [0, 2],
            "objects": [{"name": "a", "category": "cube", "category_id": 1, "instance_id": 1, "kind": "mesh",
                         "mesh": "cube.ply", "pose": POSE, "transparent": False},
                        {"name": "b", "category": "box", "category_id": 2, "instance_id": 2, "kind": "box",
                         "pose": POSE, "size": [0.1, 0.2, 0.3]}]}


def paths_in(value, prefix=()):
    """Every (path, value) in a JSON-like tree, the root included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_in(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_in(v, prefix + (i,))


@st.composite
def mutated(draw, make):
    """``make()`` with 1-3 random places replaced by random values, deleted, or given an extra key."""
    doc = copy.deepcopy(make())  # its lists share POSE: mutate a copy, never the module's constant
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p, _ in paths_in(doc) if p]
        if not places:
            break
        where = draw(st.sampled_from(places))
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "extra"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent[where[-1]] = draw(json_values)
    return doc


def only_neurallabel_errors(call) -> None:
    try:
        call()
    except NeuralLabelError as exc:
        assert str(exc) and "\n" not in str(exc)


@FUZZ
@given(data=json_values)
def test_parse_spec_on_random_values_raises_only_neurallabel_errors(dataset_dir, data):
    only_neurallabel_errors(lambda: parse_spec(data, dataset_dir, load_meshes=False))


@FUZZ
@given(data=mutated(valid_spec))
def test_parse_spec_on_mutated_specs_raises_only_neurallabel_errors(dataset_dir, data):
    only_neurallabel_errors(lambda: parse_spec(data, dataset_dir, load_meshes=False))


def test_the_valid_spec_parses(dataset_dir):
    spec = parse_spec(valid_spec(), dataset_dir, load_meshes=False)
    assert spec.frames == [0, 2] and len(spec.objects) == 2


def valid_transforms() -> dict:
    return {"fl_x": 8.0, "fl_y": 8.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6, "k1": 0.0, "aabb_scale": 2,
            "frames": [{"file_path": f"{i}.png", "transform_matrix": [list(r) for r in POSE], "split": "train"}
                       for i in range(3)]}


@FUZZ
@given(data=mutated(valid_transforms))
def test_transforms_loader_on_mutated_files_raises_only_neurallabel_errors(dataset_dir, data):
    with tempfile.TemporaryDirectory(dir=dataset_dir) as folder:
        path = Path(folder) / "transforms.json"
        text = json.dumps(data, default=str)  # NaN and Infinity are written as JSON's non-standard literals
        for i in range(3):  # the photos beside it, as file_path names them
            (Path(folder) / f"{i}.png").symlink_to(dataset_dir / f"{i}.png")
        path.write_text(text)
        only_neurallabel_errors(lambda: load_dataset(path))
