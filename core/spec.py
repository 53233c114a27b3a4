"""Label spec v1: the JSON that Blender exports and ``neurallabel bake`` reads (DESIGN.md "Label spec").

:func:`load_spec` reads and validates a spec file strictly: every problem is one :class:`NeuralLabelError`
that names the file, the object and the value. Relative paths resolve against the spec file's folder.
Object poses and sizes are in the *world* frame: the dataset's camera frame mapped by ``world_from_data``
(a similarity: rotation, translation and one uniform scale).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .errors import NeuralLabelError
from .geometry.transforms import RIGID_TOLERANCE, Similarity, check_matrix4, check_rigid, rigidity_error
from .io.atomic import write_text
from .io.files import file_problem
from .io.jsonfile import read_json
from .io.meshes import load_mesh

SPEC_VERSION = 1
KINDS = ("mesh", "box")
#: the largest ``units_to_mm`` taken (1 world unit = 1 km); beyond it BOP's millimetres overflow to Infinity
MAX_UNITS_TO_MM = 1e6
__all__ = ["SPEC_VERSION", "KINDS", "RIGID_TOLERANCE", "MAX_UNITS_TO_MM", "SpecObject", "LabelSpec", "write_spec",
           "load_spec", "parse_spec", "spec_from_scene"]

_TOP_KEYS = {"neurallabel_spec", "data", "field", "world_from_data", "units_to_mm", "frames", "objects"}
_TOP_REQUIRED = {"neurallabel_spec", "data", "objects"}
_OBJECT_KEYS = {"name", "category", "category_id", "instance_id", "kind", "mesh", "pose", "size", "transparent"}
_OBJECT_REQUIRED = {"name", "category", "category_id", "instance_id", "kind", "pose"}


@dataclass
class SpecObject:
    """One annotated object. ``pose`` is object-to-world (mesh) or box-to-world (box, centred at its origin)."""

    name: str
    category: str
    category_id: int
    instance_id: int
    kind: str  # "mesh" | "box"
    pose: np.ndarray  # 4x4 rigid, world frame
    mesh_path: Optional[Path] = None  # kind == "mesh"
    size: Optional[np.ndarray] = None  # kind == "box": (3,) full edge lengths in world units
    transparent: bool = False
    mesh: Any = None  # trimesh.Trimesh in the object's own frame (world units), loaded by load_spec

    def to_json(self, base_dir: Optional[Path] = None) -> dict:
        out: dict[str, Any] = {"name": self.name, "category": self.category, "category_id": self.category_id,
                               "instance_id": self.instance_id, "kind": self.kind,
                               "pose": [[float(v) for v in row] for row in self.pose]}
        if self.kind == "mesh":
            out["mesh"] = _relative(self.mesh_path, base_dir)
        else:
            out["size"] = [float(v) for v in self.size]
        out["transparent"] = bool(self.transparent)
        return out


@dataclass
class LabelSpec:
    path: Optional[Path]  # the spec file (None when built in memory)
    data_path: Path  # transforms.json (or its folder)
    field_path: Optional[Path]  # None: no field -> mesh-only labels
    world_from_data: np.ndarray = field(default_factory=lambda: np.eye(4))  # 4x4 similarity
    units_to_mm: float = 1000.0
    frames: Optional[list[int]] = None  # None = every frame of `data`
    objects: list[SpecObject] = field(default_factory=list)

    @property
    def data_to_world(self) -> Similarity:
        """``world_from_data`` as a :class:`Similarity` (views take their world poses through it)."""
        return Similarity(self.world_from_data)

    @property
    def data_scale(self) -> float:
        """World units per data unit (the uniform scale of ``world_from_data``)."""
        return self.data_to_world.scale

    def categories(self) -> dict[int, str]:
        return {o.category_id: o.category for o in sorted(self.objects, key=lambda o: o.category_id)}

    def to_json(self, base_dir: Optional[Path] = None) -> dict:
        """The spec as v1 JSON; paths relative to ``base_dir`` when given (absolute otherwise)."""
        return {"neurallabel_spec": SPEC_VERSION,
                "data": _relative(self.data_path, base_dir),
                "field": None if self.field_path is None else _relative(self.field_path, base_dir),
                "world_from_data": [[float(v) for v in row] for row in self.world_from_data],
                "units_to_mm": float(self.units_to_mm),
                "frames": self.frames,
                "objects": [o.to_json(base_dir) for o in self.objects]}

    def file_digests(self) -> dict[str, str]:
        """The content digest of each input file the fingerprint reads (dataset, field, mesh files), by path:
        computed once by a caller that fingerprints the spec more than once (a bake's manifest and its box
        meshes' keys), then handed to :meth:`fingerprint`."""
        paths = [_transforms_file(self.data_path)] + ([self.field_path] if self.field_path is not None else [])
        paths += [obj.mesh_path for obj in self.objects if obj.kind == "mesh"]
        return {str(path): _file_digest(path) for path in paths}

    def fingerprint(self, digests: Optional[dict[str, str]] = None) -> str:
        """A hash of everything that decides the labels: data, field and mesh file contents, poses, frames.

        Two specs with the same fingerprint bake the same dataset; ``bake`` refuses an output folder holding
        a dataset with another fingerprint. ``digests``: :meth:`file_digests` of this spec's files (read again
        where one is missing).
        """
        known = digests or {}

        def digest(path: Path) -> str:
            return known.get(str(path)) or _file_digest(path)

        h = hashlib.sha256()
        canonical = self.to_json(None)
        canonical["data"] = digest(_transforms_file(self.data_path))
        canonical["field"] = None if self.field_path is None else digest(self.field_path)
        for obj, obj_json in zip(self.objects, canonical["objects"]):
            if obj.kind == "mesh":
                obj_json["mesh"] = digest(obj.mesh_path)
        h.update(json.dumps(canonical, sort_keys=True).encode())
        return h.hexdigest()


def write_spec(spec: LabelSpec, path: str | Path, *, absolute_inputs: bool = False) -> Path:
    """Write ``spec`` as JSON with paths relative to the file's folder.

    ``absolute_inputs`` keeps ``data`` and ``field`` absolute (meshes stay relative): a spec written into
    an output folder (Blender's bake) still finds the dataset when that folder moves.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = spec.to_json(path.parent.resolve())
    if absolute_inputs:
        doc["data"] = _relative(spec.data_path, None)
        doc["field"] = None if spec.field_path is None else _relative(spec.field_path, None)
    return write_text(path, json.dumps(doc, indent=1))  # atomic: a bake never reads half a spec


def load_spec(path: str | Path, *, load_meshes: bool = True, check_frames: bool = True) -> LabelSpec:
    """Read and validate a label spec file. Relative paths resolve against the spec's folder.

    With ``load_meshes`` every mesh is loaded now (so a mesh that does not load is reported up front);
    with ``check_frames`` the dataset is read and ``frames`` are checked against it.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        raise NeuralLabelError(f"{path}: label spec file {problem}")
    data = read_json(path)
    spec = parse_spec(data, path.parent.resolve(), source=str(path), load_meshes=load_meshes,
                      check_frames=check_frames)
    spec.path = path
    return spec


def parse_spec(data: Any, base_dir: Path, *, source: str = "label spec", load_meshes: bool = True,
               check_frames: bool = True) -> LabelSpec:
    """Validate a spec already parsed from JSON; ``base_dir`` resolves relative paths."""

    def fail(problem: str) -> NeuralLabelError:
        return NeuralLabelError(f"{source}: {problem}")

    if not isinstance(data, dict):
        raise fail("expected a JSON object")
    if "neurallabel_spec" not in data:
        raise fail("missing 'neurallabel_spec' (the spec version); is this a NeuralLabel label spec?")
    version = data["neurallabel_spec"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail(f"'neurallabel_spec' must be a positive integer version, got {_short(version)}")
    if version > SPEC_VERSION:
        raise fail(f"spec version {_short(version)} is newer than this NeuralLabel reads (up to {SPEC_VERSION}); "
                   f"update NeuralLabel")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    missing = sorted(_TOP_REQUIRED - set(data))
    if missing:
        raise fail(f"missing key {missing[0]!r}")

    data_path = _path(data["data"], base_dir, "data", fail)
    _check_file_or_folder(data_path, "'data'", fail)
    field_path = None
    if data.get("field") is not None:
        field_path = _path(data["field"], base_dir, "field", fail)
        _check_file_or_folder(field_path, "'field'", fail)

    world_from_data = np.eye(4)
    if data.get("world_from_data") is not None:
        world_from_data = _checked(lambda: Similarity.checked(data["world_from_data"], "world_from_data"),
                                   fail).matrix

    units_to_mm = data.get("units_to_mm", 1000.0)
    if not _is_number(units_to_mm) or not 0 < units_to_mm <= MAX_UNITS_TO_MM:
        raise fail(f"'units_to_mm' must be a positive number up to {MAX_UNITS_TO_MM:g}, got "
                   f"{_short(units_to_mm)}")

    frames = data.get("frames")
    if frames is not None:
        if not isinstance(frames, list) or not all(_is_int(i) for i in frames):
            raise fail("'frames' must be null or a list of frame indices (integers)")
        if len(set(frames)) != len(frames):
            raise fail("'frames' lists a frame index twice")
        frames = sorted(int(i) for i in frames)

    objects_json = data["objects"]
    if not isinstance(objects_json, list) or not objects_json:
        raise fail("'objects' must be a non-empty list")
    objects = [_parse_object(o, i, base_dir, fail, load_meshes) for i, o in enumerate(objects_json)]
    _check_ids(objects, fail)

    spec = LabelSpec(None, data_path, field_path, world_from_data, float(units_to_mm), frames, objects)
    if check_frames and frames is not None:
        from .data.dataset import load_dataset

        dataset = load_dataset(data_path)
        count = dataset.frame_count
        bad = [i for i in frames if not 0 <= i < count]
        if bad:
            raise fail(f"'frames': frame index {_short(bad[0])} is out of range (the dataset {data_path} has "
                       f"{count} frames, 0..{count - 1})")
        unloaded = [i for i in frames if not dataset.has_frame(i)]
        if unloaded:
            raise fail(f"'frames': frame {unloaded[0]} of {data_path} was skipped (its photo "
                       f"{dataset.skip_reason(unloaded[0])})")
    return spec


# --- helpers ---------------------------------------------------------------------------------------------


def _parse_object(obj: Any, index: int, base_dir: Path, fail, load_meshes: bool) -> SpecObject:
    if not isinstance(obj, dict):
        raise fail(f"objects[{index}] must be a JSON object")
    label = f"objects[{index}]" + (f" ({obj['name']!r})" if isinstance(obj.get("name"), str) else "")
    unknown = sorted(set(obj) - _OBJECT_KEYS)
    if unknown:
        raise fail(f"{label}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_OBJECT_KEYS))})")
    missing = sorted(_OBJECT_REQUIRED - set(obj))
    if missing:
        raise fail(f"{label}: missing key {missing[0]!r}")
    if not isinstance(obj["name"], str) or not obj["name"]:
        raise fail(f"{label}: 'name' must be a non-empty string")
    if not isinstance(obj["category"], str) or not obj["category"]:
        raise fail(f"{label}: 'category' must be a non-empty string")
    for key in ("category_id", "instance_id"):
        if not _is_int(obj[key]) or not 1 <= obj[key] <= 65535:
            raise fail(f"{label}: '{key}' must be an integer in 1..65535 (0 is background, maps are uint16), "
                       f"got {_short(obj[key])}")
    kind = obj["kind"]
    if kind not in KINDS:
        raise fail(f"{label}: 'kind' must be 'mesh' or 'box', got {_short(kind)}")
    pose = _checked(lambda: check_matrix4(obj["pose"], f"{label}: 'pose'"), fail)
    try:
        check_rigid(pose, f"{label}: 'pose'")
    except NeuralLabelError as exc:
        scaled = rigidity_error(pose) > RIGID_TOLERANCE
        raise fail(str(exc) + ("; apply the scale to the mesh or box size instead" if scaled else "")) from None
    transparent = obj.get("transparent", False)
    if not isinstance(transparent, bool):
        raise fail(f"{label}: 'transparent' must be true or false, got {_short(transparent)}")

    mesh_path, size, mesh = None, None, None
    if kind == "mesh":
        if "size" in obj:
            raise fail(f"{label}: 'size' is for box objects; a mesh object's size is its mesh")
        if "mesh" not in obj:
            raise fail(f"{label}: a mesh object needs 'mesh' (a mesh file)")
        mesh_path = _path(obj["mesh"], base_dir, f"{label}: 'mesh'", fail)
        problem = file_problem(mesh_path)
        if problem is not None:
            raise fail(f"{label}: mesh file {mesh_path} {problem}")
        if load_meshes:
            try:
                mesh = load_mesh(mesh_path, what=f"{label}: mesh")
            except NeuralLabelError as exc:
                raise fail(str(exc)) from None
    else:
        if "mesh" in obj:
            raise fail(f"{label}: a box object has no 'mesh' (its mesh is extracted from the field); "
                       f"use kind 'mesh' for a known mesh")
        if "size" not in obj:
            raise fail(f"{label}: a box object needs 'size' [sx, sy, sz]")
        size_json = obj["size"]
        if (not isinstance(size_json, list) or len(size_json) != 3 or not all(_is_number(v) for v in size_json)
                or not all(v > 0 for v in size_json)):
            raise fail(f"{label}: 'size' must be three positive numbers, got {_short(size_json)}")
        size = np.array(size_json, dtype=np.float64)
    return SpecObject(obj["name"], obj["category"], int(obj["category_id"]), int(obj["instance_id"]), kind, pose,
                      mesh_path, size, transparent, mesh)


def _check_ids(objects: list[SpecObject], fail) -> None:
    by_instance: dict[int, SpecObject] = {}
    names: set[str] = set()
    category_name: dict[int, str] = {}
    category_id: dict[str, int] = {}
    for o in objects:
        if o.instance_id in by_instance:
            raise fail(f"duplicate instance_id {o.instance_id}: objects {by_instance[o.instance_id].name!r} "
                       f"and {o.name!r}")
        by_instance[o.instance_id] = o
        if o.name in names:
            raise fail(f"duplicate object name {o.name!r}")
        names.add(o.name)
        if category_name.setdefault(o.category_id, o.category) != o.category:
            raise fail(f"category_id {o.category_id} is named both {category_name[o.category_id]!r} and "
                       f"{o.category!r} (object {o.name!r})")
        if category_id.setdefault(o.category, o.category_id) != o.category_id:
            raise fail(f"category {o.category!r} has two ids, {category_id[o.category]} and {o.category_id} "
                       f"(object {o.name!r})")
    # BOP names models by obj_id = category_id: the mesh objects of one category must share one mesh file.
    mesh_of: dict[int, SpecObject] = {}
    for o in objects:
        if o.kind != "mesh":
            continue
        first = mesh_of.setdefault(o.category_id, o)
        if first.mesh_path.resolve() != o.mesh_path.resolve():
            raise fail(f"category {o.category!r} (id {o.category_id}) has two different meshes "
                       f"({first.mesh_path.name} for {first.name!r}, {o.mesh_path.name} for {o.name!r}); BOP "
                       f"names models by obj_id = category_id, so give them different categories")


def _path(value: Any, base_dir: Path, what: str, fail) -> Path:
    if not isinstance(value, str) or not value:
        raise fail(f"{what} must be a path (a string), got {_short(value)}")
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~someone/..." naming no user
        raise fail(f"{what}: {value!r} names a home folder that does not exist") from None
    return p if p.is_absolute() else (base_dir / p)


def _checked(check, fail):
    """``check()``, with a NeuralLabelError from a shared validator re-raised as this spec's (naming the file)."""
    try:
        return check()
    except NeuralLabelError as exc:
        raise fail(str(exc)) from None


def _check_file_or_folder(path: Path, what: str, fail) -> None:
    """``data`` and ``field`` may be a file or a folder, but not a FIFO or a device."""
    if path.is_dir():
        return
    problem = file_problem(path)
    if problem is not None:
        raise fail(f"{what}: {path} {problem}")


def _short(value: Any) -> str:
    """``repr`` of a user value, cut short (a 400-digit integer should not fill the terminal)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long for Python to print
        return "a number too large"
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite JSON number (a huge integer that does not fit a float is not one)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _relative(path: Optional[Path], base_dir: Optional[Path]) -> Optional[str]:
    if path is None:
        return None
    path = Path(path).resolve()
    if base_dir is None:
        return str(path)
    import os

    return os.path.relpath(path, base_dir)


def _transforms_file(data_path: Path) -> Path:
    data_path = Path(data_path)
    if data_path.is_dir():
        candidate = data_path / "transforms.json"
        return candidate if candidate.is_file() else data_path
    return data_path


def _file_digest(path: Path) -> str:
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():  # a checkpoint or dataset folder: hash every file's name and contents
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def spec_from_scene(scene_dir: str | Path, *, field_path: Optional[str | Path] = None,
                    box_objects: tuple[str, ...] = (), box_margin: float = 0.0,
                    units_to_mm: float = 1000.0) -> LabelSpec:
    """A spec for a generated scene (``scripts/make_scene.py``): its true meshes at their true poses (its
    unannotated clutter left out).

    Objects named in ``box_objects`` become box objects with the scene's true enclosing box, grown by
    ``box_margin`` (world units) on every side. Used by the demo, tests and benchmarks.
    """
    from .data.truth import load_scene_truth

    truth = load_scene_truth(scene_dir)
    # Unannotated clutter ("annotated": false in objects.json) stays out of the spec: it only occludes.
    clutter = {o.get("name") for o in read_json(Path(scene_dir) / "gt" / "objects.json")["objects"]
               if isinstance(o, dict) and o.get("annotated") is False}
    objects = []
    for t in truth.objects:
        if t.name in clutter:
            continue
        if t.name in box_objects:
            objects.append(SpecObject(t.name, t.category, t.category_id, t.instance_id, "box",
                                      np.array(t.box_to_world, dtype=np.float64), None,
                                      np.asarray(t.box_size, dtype=np.float64) + 2 * box_margin, t.transparent))
        else:
            objects.append(SpecObject(t.name, t.category, t.category_id, t.instance_id, "mesh",
                                      np.array(t.object_to_world, dtype=np.float64), Path(t.mesh_path), None,
                                      t.transparent, load_mesh(Path(t.mesh_path), what=f"object {t.name!r}: mesh")))
    unknown = sorted(set(box_objects) - {t.name for t in truth.objects})
    if unknown:
        raise NeuralLabelError(f"{scene_dir}: no object named {unknown[0]!r}")
    return LabelSpec(None, truth.transforms_path, None if field_path is None else Path(field_path),
                     np.eye(4), float(units_to_mm), None, objects)
