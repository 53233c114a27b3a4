"""The jobs the command line and the worker run: one typed request per job, one :func:`run`.

A request is validated when it is made: bad values raise :class:`NeuralLabelError` whose ``field`` names the
request field at fault (the command line shows its flag, the add-on its button). :func:`run` does the work
with a ``progress(done, total, stage)`` callback and a ``notice(line)`` callback (things the user should
know, e.g. the photos a dataset skipped) and returns the JSON-able result, with ``kind`` first.

The CLI makes requests from its arguments (:mod:`.cli`), the worker from a job file (:func:`request_from_job`,
same field names as the requests).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import MISSING, dataclass, fields
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from ..errors import NeuralLabelError
from ..export import FORMATS
from ..export.coco import MASK_FORMATS as COCO_MASKS
from ..geometry.box import Box
from ..geometry.transforms import Similarity, check_matrix4
from ..io.outdir import check_output_location
from ..labels.frame import LabelOptions
from ..pipeline.frames import parse_frames, parse_shard
from ..pipeline.phases import stages_of
from ..progress import ProgressFn
from ..spec import load_spec

NoticeFn = Callable[[str], None]

DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
SPLITS = ("train", "val", "test", "all")
MATCHERS = ("auto", "exhaustive", "sequential")
DEPTH_LOSSES = ("kl", "mse")  # train.losses.DEPTH_LOSSES, named here without importing torch
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")


# --- validation helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def at_field(name: str) -> Iterator[None]:
    """Errors raised inside name the request field ``name`` unless they already name one."""
    try:
        yield
    except NeuralLabelError as exc:
        if exc.field is None:
            exc.field = name
        raise


#: a request's ``model_cache``: the user's cache folder (:func:`model_cache_folder`)
USER_CACHE = "user"


def model_cache_folder(value: Any) -> Optional[Path]:
    """The folder of box meshes shared between bakes (:class:`~..pipeline.model_cache.SharedModels`):
    ``"user"`` is ``$NEURALLABEL_CACHE/box-meshes`` (default ``$XDG_CACHE_HOME/neurallabel``, else
    ``~/.cache/neurallabel``); None or ``"none"``: no shared cache; anything else: that folder."""
    import os

    if value is None or str(value).strip().lower() in ("", "none"):
        return None
    if str(value) != USER_CACHE:
        return Path(value).expanduser()
    root = os.environ.get("NEURALLABEL_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neurallabel")
    return Path(root).expanduser() / "box-meshes"


def _path(value: Any, name: str) -> Path:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise NeuralLabelError(f"{name}: missing", field=name)
    return Path(value)


def _optional_path(value: Any) -> Optional[Path]:
    return None if value is None or value == "" else Path(value)


def _number(value: Any, name: str, *, minimum: float, inclusive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NeuralLabelError(f"{name} {value!r}: expected a number", field=name) from None
    if not np.isfinite(number) or number < minimum or (number == minimum and not inclusive):
        bound = f"at least {minimum:g}" if inclusive else f"more than {minimum:g}"
        raise NeuralLabelError(f"{name} must be {bound} (got {value})", field=name)
    return number


def _integer(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or int(value) != value:
        raise NeuralLabelError(f"{name} {value!r}: expected a whole number", field=name)
    if value < minimum:
        raise NeuralLabelError(f"{name} must be at least {minimum} (got {value})", field=name)
    return int(value)


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise NeuralLabelError(f"{name} {value!r}: choose from {', '.join(choices)}", field=name)
    return value


def _device(value: Any) -> str:
    """The device's name, checked for form; whether it exists is checked when the job runs."""
    name = str(value or "auto").strip().lower()
    if not DEVICE_NAME.match(name):
        raise NeuralLabelError(f"device {value!r}: use auto, cpu, cuda or cuda:N", field="device")
    return name


def _formats(value: Any) -> tuple[str, ...]:
    names = [f.strip() for f in value.split(",")] if isinstance(value, str) else list(value or ())
    names = [n for n in names if n]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise NeuralLabelError(f"formats: unknown format {bad[0] if bad else '(none)'!r}: choose from "
                               f"{', '.join(FORMATS)}", field="formats")
    return tuple(f for f in FORMATS if f in names)  # canonical order


def _label_options(value: Any) -> LabelOptions:
    if isinstance(value, LabelOptions):
        return value
    if not isinstance(value, dict):
        raise NeuralLabelError(f"options {value!r}: expected an object of label options", field="options")
    try:
        with at_field("options"):
            return LabelOptions(**value)
    except TypeError as exc:
        raise NeuralLabelError(f"options {value}: {exc}", field="options") from None


def _similarity(value: Any, name: str = "world_from_data") -> Similarity:
    if isinstance(value, Similarity):
        return value
    with at_field(name):
        return Similarity.checked(np.eye(4) if value is None else value, name)


def _matrix(value: Any, name: str) -> np.ndarray:
    with at_field(name):
        return check_matrix4(value, name)


def _box(value: Any, name: str = "box") -> Optional[Box]:
    if value is None or isinstance(value, Box):
        return value
    if not isinstance(value, dict) or set(value) != {"pose", "size"}:
        raise NeuralLabelError(f"{name}: expected {{\"pose\": 4x4, \"size\": [sx, sy, sz]}}", field=name)
    size = np.asarray(value["size"], dtype=np.float64)
    if size.shape != (3,) or not np.all(np.isfinite(size)) or np.any(size <= 0):
        raise NeuralLabelError(f"{name} size {value['size']!r}: expected 3 positive numbers", field=name)
    return Box(_matrix(value["pose"], name), size)


def _depth_input(request: Any) -> None:
    if request.field is None and request.depth_dir is None:
        raise NeuralLabelError("no field: train or load a field first (or give true depth maps as depth_dir)",
                               field="field")


# --- requests --------------------------------------------------------------------------------------------


@dataclass
class BakeRequest:
    """Bake a label spec into ``out`` (DESIGN.md, Bake output)."""

    spec: Path
    out: Path
    formats: tuple[str, ...] = FORMATS
    frames: Any = None  # "A:B" or [A, B), B exclusive
    shard: Any = None  # "I/N"
    device: str = "auto"
    options: LabelOptions = dataclass_field(default_factory=LabelOptions)
    no_assemble: bool = False  # label the frames only; a later assemble_only run writes the aggregate files
    assemble_only: bool = False  # only the aggregate files, once every selected frame is baked
    ray: Optional[str] = None  # run the frames on Ray: "local" (a local cluster) or a cluster's address
    coco_masks: str = "rle"  # COCO segmentation: "rle", or "polygon" (RLE where a polygon cannot be exact)
    preview: Optional[int] = None  # then `inspect`'s pictures of this many evenly spaced frames (out/inspect)
    model_cache: Optional[str] = USER_CACHE  # box meshes shared between bakes: "user", a folder, or None
    kind = "bake"

    def __post_init__(self) -> None:
        self.spec, self.out = _path(self.spec, "spec"), _path(self.out, "out")
        self.formats = _formats(self.formats)
        parse_frames(self.frames)
        parse_shard(self.shard)
        self.device = _device(self.device)
        self.options = _label_options(self.options)
        stages_of(self.no_assemble, self.assemble_only, self.ray)
        if self.coco_masks not in COCO_MASKS:
            raise NeuralLabelError(f"coco_masks {self.coco_masks!r}: choose from {', '.join(COCO_MASKS)}",
                                   field="coco_masks")
        if self.preview is not None:
            self.preview = _integer(self.preview, "preview", minimum=1)
            if self.no_assemble:  # the pictures read the aggregate files, which this run does not write
                raise NeuralLabelError("preview needs the assembled output: drop --no-assemble, or run "
                                       "`neurallabel inspect` after --assemble-only", field="preview")


@dataclass
class TrainRequest:
    """Train (or resume) a field on ``data``'s train split into ``out``."""

    data: Path
    out: Path
    steps: Optional[int] = None
    minutes: Optional[float] = None
    device: str = "auto"
    downscale: float = 1.0
    strict: bool = False
    depth_supervision: bool = False
    depth_loss: str = "kl"  # kl (DS-NeRF) | mse (of the expected distance, as NeRF-Supervision)
    kind = "train"

    def __post_init__(self) -> None:
        self.data, self.out = _path(self.data, "data"), _path(self.out, "out")
        if self.steps is not None and self.minutes is not None:
            raise NeuralLabelError("give steps or minutes, not both", field="steps")
        if self.steps is not None:
            self.steps = _integer(self.steps, "steps", minimum=1)
        if self.minutes is not None:
            self.minutes = _number(self.minutes, "minutes", minimum=0.0)
        self.device = _device(self.device)
        self.downscale = _number(self.downscale, "downscale", minimum=0.0)
        self.depth_loss = _choice(self.depth_loss, "depth_loss", DEPTH_LOSSES)


@dataclass
class RenderRequest:
    """Render a field's views of ``data`` (rgb, z-depth, PSNR/SSIM) into ``out``."""

    field: Path
    data: Path
    out: Path
    split: str = "test"
    device: str = "auto"
    downscale: float = 1.0
    kind = "render"

    def __post_init__(self) -> None:
        self.field, self.data, self.out = _path(self.field, "field"), _path(self.data, "data"), _path(self.out, "out")
        check_output_location(self.out)  # before minutes of rendering, not after
        self.split = _choice(self.split, "split", SPLITS)
        self.device = _device(self.device)
        self.downscale = _number(self.downscale, "downscale", minimum=1.0, inclusive=True)


@dataclass
class SfmRequest:
    """Recover cameras for the photos in ``images`` and write the dataset folder ``out``."""

    images: Path
    out: Path
    downscale: Optional[float] = None  # None: features on images FEATURE_SIDE px on the longer side
    matcher: str = "auto"
    camera_model: str = "OPENCV"
    allow_inconsistent: bool = False  # write a model failing its self-check (with a warning), not refuse
    # a transforms.json whose poses and intrinsics are kept: only points are triangulated (no mapping)
    known_poses: Optional[Path] = None
    kind = "sfm"

    def __post_init__(self) -> None:
        self.images, self.out = _path(self.images, "images"), _path(self.out, "out")
        if self.known_poses is not None:
            self.known_poses = _path(self.known_poses, "known_poses")
        check_output_location(self.out)
        if self.downscale is not None:
            self.downscale = _number(self.downscale, "downscale", minimum=1.0, inclusive=True)
        self.matcher = _choice(self.matcher, "matcher", MATCHERS)
        self.camera_model = _choice(self.camera_model, "camera_model", CAMERA_MODELS)
        if not isinstance(self.allow_inconsistent, bool):
            raise NeuralLabelError("allow_inconsistent must be true or false", field="allow_inconsistent")


@dataclass
class DemoRequest:
    """The whole pipeline on the built-in demo scene (see :mod:`.demo`)."""

    out: Path = Path(".demo")
    views: int = 40
    width: int = 320
    height: int = 240
    seed: int = 0
    train_minutes: float = 2.0
    kind = "demo"

    def __post_init__(self) -> None:
        self.out = _path(self.out, "out")
        self.views = _integer(self.views, "views", minimum=2)
        self.width = _integer(self.width, "width", minimum=16)
        self.height = _integer(self.height, "height", minimum=16)
        self.seed = _integer(self.seed, "seed", minimum=0)
        self.train_minutes = _number(self.train_minutes, "train_minutes", minimum=0.0)
        if self.out.exists() and not self.out.is_dir():
            raise NeuralLabelError(f"out {self.out}: exists and is not a folder", field="out")


@dataclass
class PreviewRequest:
    """Bake one ``frame`` of a spec (raw) and write ``out/preview.png``: masks over the photo | depth."""

    spec: Path
    frame: int
    out: Optional[Path] = None  # None: a new temporary folder
    device: str = "auto"
    options: LabelOptions = dataclass_field(default_factory=LabelOptions)
    model_cache: Optional[str] = USER_CACHE  # as BakeRequest's: a preview of another frame reuses the box meshes
    kind = "preview"

    def __post_init__(self) -> None:
        self.spec = _path(self.spec, "spec")
        self.frame = _integer(self.frame, "frame", minimum=0)
        self.out = _optional_path(self.out)
        self.device = _device(self.device)
        self.options = _label_options(self.options)


@dataclass
class SurfacePointsRequest:
    """World points (N, 3) of the surface the cameras of ``data`` saw near ``box`` (world frame), from a
    ``field`` or true depth maps in ``depth_dir`` (``<image stem>.npy``), saved to ``out`` (.npy). Without
    a box: a preview cloud of the whole field."""

    data: Path
    out: Path
    field: Optional[Path] = None
    depth_dir: Optional[Path] = None
    world_from_data: Similarity = dataclass_field(default_factory=Similarity.identity)
    box: Optional[Box] = None
    margin: float = 0.0  # world units
    max_views: Optional[int] = None  # default: 12 near a box, 6 for a preview cloud
    device: str = "auto"
    kind = "surface_points"

    def __post_init__(self) -> None:
        self.data, self.out = _path(self.data, "data"), _path(self.out, "out")
        self.field, self.depth_dir = _optional_path(self.field), _optional_path(self.depth_dir)
        self.world_from_data = _similarity(self.world_from_data)
        self.box = _box(self.box)
        self.margin = _number(self.margin, "margin", minimum=0.0, inclusive=True)
        if self.max_views is not None:
            self.max_views = _integer(self.max_views, "max_views", minimum=1)
        self.device = _device(self.device)
        if self.box is None and self.field is None:
            raise NeuralLabelError("no field: train or load a field first", field="field")
        _depth_input(self)


@dataclass
class SnapRequest:
    """Fit ``mesh`` (its own frame, world units) placed at ``pose`` (4x4 object-to-world, rigid) to the surface
    the cameras saw around it (robust point-to-plane ICP); the snapped pose, or an error when it would run
    away."""

    mesh: Path
    pose: np.ndarray
    data: Path
    field: Optional[Path] = None
    depth_dir: Optional[Path] = None
    world_from_data: Similarity = dataclass_field(default_factory=Similarity.identity)
    margin: Optional[float] = None  # default: max_distance
    max_distance: Optional[float] = None  # default: 3 cm or a fifth of the mesh's size, whichever is larger
    model_points: int = 20000
    max_views: int = 12
    device: str = "auto"
    kind = "snap"

    def __post_init__(self) -> None:
        self.mesh, self.data = _path(self.mesh, "mesh"), _path(self.data, "data")
        self.pose = _matrix(self.pose, "pose")
        self.field, self.depth_dir = _optional_path(self.field), _optional_path(self.depth_dir)
        self.world_from_data = _similarity(self.world_from_data)
        # 0 means "the default", as the add-on's "max distance 0" does.
        self.margin = _number(self.margin, "margin", minimum=0.0) if self.margin else None
        self.max_distance = _number(self.max_distance, "max_distance", minimum=0.0) if self.max_distance else None
        self.model_points = _integer(self.model_points, "model_points", minimum=100)
        self.max_views = _integer(self.max_views, "max_views", minimum=1)
        self.device = _device(self.device)
        _depth_input(self)


@dataclass
class InspectRequest:
    """Pictures of the bake in ``bake`` (overlays, depth, confidence, contact sheet, index.html) written into
    ``out`` (None: ``bake/inspect``); see :mod:`..eval.inspect`."""

    bake: Path
    out: Optional[Path] = None
    frames: Any = None  # "A:B" or [A, B), B exclusive
    max: Optional[int] = None  # at most this many frames, spread evenly over the selection
    kind = "inspect"

    def __post_init__(self) -> None:
        self.bake, self.out = _path(self.bake, "bake"), _optional_path(self.out)
        if not self.bake.is_dir():
            raise NeuralLabelError(f"bake {self.bake}: not a folder (give a bake's output folder)", field="bake")
        self.frames = parse_frames(self.frames)
        self.max = None if self.max is None else _integer(self.max, "max", minimum=1)


@dataclass
class CheckRequest:
    """Report what this Python can run: torch, CUDA, numpy, and the requirements it cannot import."""

    device: str = "auto"  # the add-on sends every job a device; the check reports CUDA whatever it says
    kind = "check"

    def __post_init__(self) -> None:
        self.device = _device(self.device)


# --- correspond (dense correspondences, issue 15) ------------------------------------------------------------


@dataclass
class CorrespondRequest:
    """Dense correspondences between ``data``'s view pairs from ``field``'s depth distribution, written into
    ``out/correspondences`` (see :mod:`..correspond.writer`)."""

    field: Path
    data: Path
    out: Path
    pairs: Optional[int] = None  # None: every pair within the angle and baseline limits
    per_pair: Optional[int] = 1000  # query pixels per pair; None: every pixel (inside the masks)
    mode: str = "sample"
    round_trip_px: float = 2.0
    mask_from: Optional[Path] = None  # a bake's folder: query only inside its instance masks (raw/instance)
    shard: Any = None  # "I/N"
    seed: int = 0
    max_angle: float = 45.0  # degrees between the optical axes of a pair
    whole_field: bool = False  # open scenes: also keep points outside the field's detailed box
    device: str = "auto"
    kind = "correspond"

    def __post_init__(self) -> None:
        from ..correspond.distribution import MODES

        self.field, self.data, self.out = _path(self.field, "field"), _path(self.data, "data"), _path(self.out, "out")
        check_output_location(self.out)
        self.pairs = None if self.pairs is None else _integer(self.pairs, "pairs", minimum=1)
        self.per_pair = None if self.per_pair is None else _integer(self.per_pair, "per_pair", minimum=1)
        self.mode = _choice(self.mode, "mode", MODES)
        self.round_trip_px = _number(self.round_trip_px, "round_trip_px", minimum=0.0)
        self.mask_from = _optional_path(self.mask_from)
        parse_shard(self.shard)
        self.seed = _integer(self.seed, "seed", minimum=0)
        self.max_angle = _number(self.max_angle, "max_angle", minimum=0.0)
        self.device = _device(self.device)


# --- synth (issue 17): labelled novel views from the field, and an optimised pose distribution ----------


SYNTH_TASKS = ("segment",)
SYNTH_ESTIMATORS = ("reinforce", "gumbel")
SYNTH_CREDITS = ("groups", "subsets")


def _check_draw_fields(request: Any) -> None:
    """The fields that choose a synth run's cameras (views, ranges, tau, seed, size), checked and normalised
    in place: SynthRequest and SynthPosesRequest share them."""
    from ..synth.distribution import check_tau
    from ..synth.poses import parse_range

    request.views = _integer(request.views, "views", minimum=1)
    for name in ("azimuth", "elevation", "distance"):
        parse_range(getattr(request, name), name)
    request.tau = check_tau(request.tau)
    request.seed = _integer(request.seed, "seed", minimum=0)
    if not isinstance(request.allow_extrapolation, bool):
        raise NeuralLabelError("allow_extrapolation must be true or false", field="allow_extrapolation")
    if request.size is not None:
        request.size = str(request.size)
        parts = request.size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise NeuralLabelError(f"size {request.size!r}: expected WxH, e.g. 400x300", field="size")


def _synth_options(request: Any, **more: Any):
    """The SynthOptions of a request's drawing fields (plus ``more``, e.g. the trust gate's)."""
    from ..synth.views import SynthOptions

    size = None if request.size is None else tuple(int(v) for v in request.size.lower().split("x"))
    return SynthOptions(views=request.views, azimuth=request.azimuth, elevation=request.elevation,
                        distance=request.distance, weights=request.weights, tau=request.tau, seed=request.seed,
                        allow_extrapolation=request.allow_extrapolation, size=size, **more)


@dataclass
class SynthRequest:
    """Render and bake ``views`` synthetic views of ``spec`` into ``out`` (DESIGN.md, Synthetic views); with
    ``optimise``, first fit the pose distribution to ``target`` (a labelled dataset) for ``task``."""

    spec: Path
    out: Path
    views: int = 100
    azimuth: Optional[str] = None  # "A0:A1:K" (degrees); None: the training cameras' hull
    elevation: Optional[str] = None
    distance: Optional[str] = None
    weights: Optional[str] = None  # "uniform", a JSON list of weights per bin, or a psi.json
    tau: float = 0.1
    seed: int = 0
    allow_extrapolation: bool = False
    size: Optional[str] = None  # "WxH"; None: the dataset's first camera
    min_confidence: float = 0.5
    keep_untrusted: bool = False
    formats: tuple[str, ...] = FORMATS
    device: str = "auto"
    optimise: bool = False
    target: Optional[Path] = None
    task: str = "segment"
    iterations: int = 10
    views_per_iteration: int = 40
    estimator: str = "reinforce"
    credit: str = "groups"  # reinforce: how a view's advantage is found (OptimiseOptions.credit)
    fit_to_poses: Optional[Path] = None  # a dataset whose camera histogram becomes the weights
    kind = "synth"

    def __post_init__(self) -> None:
        self.spec, self.out = _path(self.spec, "spec"), _path(self.out, "out")
        check_output_location(self.out)
        _check_draw_fields(self)
        self.min_confidence = _number(self.min_confidence, "min_confidence", minimum=0.0, inclusive=True)
        self.formats = _formats(self.formats)
        self.device = _device(self.device)
        self.task = _choice(self.task, "task", SYNTH_TASKS)
        self.estimator = _choice(self.estimator, "estimator", SYNTH_ESTIMATORS)
        self.credit = _choice(self.credit, "credit", SYNTH_CREDITS)
        self.iterations = _integer(self.iterations, "iterations", minimum=1)
        self.views_per_iteration = _integer(self.views_per_iteration, "views_per_iteration", minimum=2)
        self.target, self.fit_to_poses = _optional_path(self.target), _optional_path(self.fit_to_poses)
        if self.optimise and self.target is None:
            raise NeuralLabelError("optimise needs a target: a labelled dataset (COCO/BOP folder)", field="target")
        if sum(x is not None for x in (self.weights, self.fit_to_poses)) + self.optimise > 1:
            raise NeuralLabelError("give one of weights, fit_to_poses and optimise", field="weights")


def run_synth(request: SynthRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..synth.views import bake_synthetic

    device = _torch_device(request.device)
    with at_field("spec"):
        spec = load_spec(request.spec)
    options = _synth_options(request, min_confidence=request.min_confidence,
                             keep_untrusted=request.keep_untrusted)
    extra: dict = {}
    if request.optimise or request.fit_to_poses is not None:
        from ..synth.optimise import fitted_weights

        options, extra = fitted_weights(spec, request, options, device=device, progress=progress, notice=notice)
    result = bake_synthetic(spec, request.out, options, formats=request.formats, device=device,
                            progress=progress, notice=notice, psi_extra=extra)
    return result


@dataclass
class SynthPosesRequest:
    """The cameras a synth run with these settings would draw around ``data``'s training cameras, without
    rendering anything: per view its pose (world frame), bin and whether it is extrapolated (the add-on's
    "Show synthetic cameras")."""

    data: Path
    world_from_data: Similarity = dataclass_field(default_factory=Similarity.identity)
    views: int = 100
    azimuth: Optional[str] = None  # as SynthRequest's
    elevation: Optional[str] = None
    distance: Optional[str] = None
    weights: Optional[str] = None
    tau: float = 0.1
    seed: int = 0
    allow_extrapolation: bool = False
    size: Optional[str] = None  # "WxH"; None: the dataset's first camera
    kind = "synth_poses"

    def __post_init__(self) -> None:
        self.data = _path(self.data, "data")
        self.world_from_data = _similarity(self.world_from_data)
        _check_draw_fields(self)


def run_synth_poses(request: SynthPosesRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..synth.views import draw_views

    with at_field("data"):
        dataset = load_dataset_noting(request.data, notice)
    try:
        drawn = draw_views(dataset, request.world_from_data, _synth_options(request), notice)
    except NeuralLabelError as exc:
        if exc.field == "spec":  # a capture with no orbit centre: here that is the dataset's fault
            exc.field = "data"
        raise
    return drawn.to_json()


Request = Union[BakeRequest, TrainRequest, RenderRequest, SfmRequest, DemoRequest, PreviewRequest,
                SurfacePointsRequest, SnapRequest, InspectRequest, CheckRequest, CorrespondRequest,
                SynthRequest, SynthPosesRequest]
REQUESTS: dict[str, type] = {cls.kind: cls for cls in Request.__args__}
JOB_KINDS = tuple(REQUESTS)


def request_from_job(job: dict, ignore: tuple[str, ...] = ()) -> Request:
    """The request of a job object (``kind`` plus the request's fields, by name); keys in ``ignore`` are the
    caller's (e.g. the worker's ``sys_path``). Unknown keys are errors, not silently ignored."""
    kind = job.get("kind")
    if kind not in REQUESTS:
        raise NeuralLabelError(f"unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}", field="kind")
    cls = REQUESTS[kind]
    names = {f.name for f in fields(cls)}
    arguments = {k: v for k, v in job.items() if k != "kind" and k not in ignore}
    unknown = sorted(set(arguments) - names)
    if unknown:
        raise NeuralLabelError(f"job {kind!r}: unknown key {unknown[0]!r}; expected {', '.join(sorted(names))}",
                               field=unknown[0])
    missing = [f.name for f in fields(cls) if f.name not in arguments and _required(f)]
    if missing:
        raise NeuralLabelError(f"job {kind!r}: missing {missing[0]!r}", field=missing[0])
    # None means "the default" in a job file, as it does on the command line.
    defaults = {f.name for f in fields(cls) if not _required(f)}
    return cls(**{k: v for k, v in arguments.items() if not (v is None and k in defaults)})


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


# --- running ---------------------------------------------------------------------------------------------


def run(request: Request, progress: Optional[ProgressFn] = None, notice: Optional[NoticeFn] = None) -> dict:
    """Run ``request``; its result (``kind`` first, then the job's numbers and paths)."""
    runner = RUNNERS[request.kind]
    return {"kind": request.kind, **runner(request, progress, notice or (lambda line: None))}


def load_dataset_noting(path: Path, notice: NoticeFn, downscale: float = 1.0, strict: bool = False):
    """:func:`load_dataset`, telling ``notice`` in one line which photos it skipped (missing images)."""
    from ..data.dataset import load_dataset

    dataset = load_dataset(path, downscale, strict)
    skipped = dataset.skipped_summary()
    if skipped:
        notice(skipped)
    return dataset


def _torch_device(name: str) -> str:
    from ..devices import resolve_device

    return str(resolve_device(name, "device"))


def run_bake(request: BakeRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..pipeline.phases import bake_in_stages

    device = _torch_device(request.device)  # first: a missing device is refused before anything is read
    with at_field("spec"):
        spec = load_spec(request.spec)
    load_dataset_noting(spec.data_path, notice)
    result = bake_in_stages(spec, request.out, stages_of(request.no_assemble, request.assemble_only, request.ray),
                            formats=request.formats, frames=request.frames, shard=request.shard,
                            device=device, progress=progress, options=request.options,
                            coco_masks=request.coco_masks, model_cache=model_cache_folder(request.model_cache))
    if request.preview is not None:  # the same pictures, in the same place, as `neurallabel inspect DIR`
        result["preview"] = run_inspect(InspectRequest(request.out, max=request.preview), progress, notice)["index"]
    return result


def check_bake(request: BakeRequest) -> None:
    """The add-on's pre-flight, in Blender's own process before it starts the worker: every check of
    :func:`run_bake` that needs neither torch (the device, the field) nor decoding every photo -- the spec,
    dataset, frames, meshes, objects in view and the output folder. Writes nothing; NeuralLabelError on the
    first problem. The worker makes these checks again, and the rest, before it writes anything."""
    from ..pipeline.bake import check_request

    with at_field("spec"):
        spec = load_spec(request.spec)
    check_request(spec, request.out, formats=request.formats, frames=request.frames, shard=request.shard,
                  device=None, options=request.options, load_field=False, check_photos=False,
                  coco_masks=request.coco_masks)


def run_train(request: TrainRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..train.loop import TrainOptions, train_field

    load_dataset_noting(request.data, notice, request.downscale)
    options = TrainOptions(steps=request.steps, minutes=request.minutes, device=_torch_device(request.device),
                           downscale=request.downscale, strict=request.strict,
                           depth_supervision=request.depth_supervision, depth_loss=request.depth_loss)
    return train_field(request.data, request.out, options, progress=progress, notice=notice).to_dict()


def load_trained_field(request: Union["RenderRequest", "CorrespondRequest"], notice: NoticeFn,
                       downscale: float = 1.0):
    """The request's field checkpoint (finite) on its device and its dataset, refused (field ``field``) when the
    field was trained on other frames."""
    from ..field.checkpoint import check_finite, check_trained_on, load_checkpoint

    device = _torch_device(request.device)
    with at_field("field"):
        checkpoint = load_checkpoint(request.field, device=device)
        check_finite(checkpoint.field)
    with at_field("data"):
        dataset = load_dataset_noting(request.data, notice, downscale)
    with at_field("data"):  # re-reading the data at the field's training size may fail
        check_trained_on(checkpoint, dataset, request.data, source=request.field, what="field")
    return checkpoint, dataset


def run_render(request: RenderRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..render.views import claim_render_dir, render_views

    checkpoint, dataset = load_trained_field(request, notice, request.downscale)
    frames = dataset.frames if request.split == "all" else dataset.split(request.split)
    if not frames:
        raise NeuralLabelError(f"split {request.split!r}: {dataset.path} has no frame in it", field="split")
    claim_render_dir(request.out, dataset, field_path=request.field, split=request.split,
                     trained_on=checkpoint.dataset.get("fingerprint"), downscale=request.downscale)
    summary = render_views(checkpoint.field, frames, request.out, progress=progress)
    return {"out": str(request.out), "split": request.split, **summary}


def run_sfm_job(request: SfmRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..data.sfm import run_sfm

    if request.known_poses is not None:
        return run_triangulation(request, progress, notice)
    with at_field("images"):  # the photos' problems (none there, no overlap); the claim names ``out`` itself
        result = run_sfm(request.images, request.out, downscale=request.downscale, matcher=request.matcher,
                         camera_model=request.camera_model, allow_inconsistent=bool(request.allow_inconsistent),
                         progress=progress)
    if not result.check.passed:
        notice(f"sfm: warning: written despite the self-check (--allow-inconsistent): {result.check.message()}")
    if result.unregistered:
        shown = ", ".join(result.unregistered[:5]) + (" ..." if len(result.unregistered) > 5 else "")
        notice(f"sfm: skipped {len(result.unregistered)} images that could not be registered: {shown}")
    return {**sfm_summary(result), "self_check_passed": result.check.passed,
            "inconsistent_cameras": sorted(result.check.flagged), "remapped": result.remapped}


def sfm_summary(result) -> dict:
    """What both forms of ``sfm`` report of their :class:`..data.sfm.SfmResult`."""
    return {"transforms": str(result.transforms_path), "images": result.num_images,
            "registered": result.num_registered, "points": result.num_points, "unregistered": result.unregistered,
            "mean_reprojection_error_px": result.mean_reprojection_error_px, "camera_model": result.camera_model,
            "cameras": result.num_cameras, "seconds": result.seconds}


def run_triangulation(request: SfmRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    """``sfm --known-poses``: points for a posed dataset (:func:`..data.triangulate.triangulate_known_poses`)."""
    from ..data.triangulate import triangulate_known_poses

    with at_field("images"):
        result = triangulate_known_poses(request.images, request.out, request.known_poses,
                                         downscale=request.downscale, matcher=request.matcher, progress=progress)
    if result.unregistered:
        shown = ", ".join(result.unregistered[:5]) + (" ..." if len(result.unregistered) > 5 else "")
        notice(f"sfm: {len(result.unregistered)} frames have no photo and no points (they stay listed): {shown}")
    return {**sfm_summary(result), "known_poses": str(request.known_poses)}


def run_demo_job(request: DemoRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from .demo import run_demo

    return run_demo(request, progress)


def run_preview(request: PreviewRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from PIL import Image

    from ..pipeline.bake import bake

    out = request.out or Path(tempfile.mkdtemp(prefix="neurallabel-preview-"))
    with at_field("spec"):
        spec = load_spec(request.spec)
    dataset = load_dataset_noting(spec.data_path, notice)
    if request.frame >= len(dataset.frames):
        raise NeuralLabelError(f"frame {request.frame}: {dataset.path} has {len(dataset.frames)} frames",
                               field="frame")
    try:
        bake(spec, out, formats=("raw",), frames=(request.frame, request.frame + 1),
             device=_torch_device(request.device), progress=progress, options=request.options,
             model_cache=model_cache_folder(request.model_cache))
    except NeuralLabelError as exc:
        if exc.field == "frames":  # the one frame is not among the spec's frames (or has no photo)
            exc.field = "frame"
        raise
    raw = out / "raw"
    name = f"{request.frame:06d}"
    instance_path, depth_path = raw / "instance" / f"{name}.png", raw / "depth" / f"{name}.npy"
    if not instance_path.is_file() or not depth_path.is_file():
        raise NeuralLabelError(f"the bake wrote no raw labels for frame {request.frame} in {raw}", field="frame")
    with Image.open(instance_path) as image:
        instance = np.asarray(image).astype(np.int64)
    z_depth = np.load(depth_path)
    with Image.open(dataset.frames[request.frame].image_path) as image:
        photo = np.asarray(image.convert("RGB"))
    image_path = out / "preview.png"
    Image.fromarray(preview_image(photo, instance, z_depth)).save(image_path)
    ids = sorted(int(i) for i in np.unique(instance) if i > 0)
    return {"image": str(image_path), "frame": request.frame, "instance_ids": ids,
            "width": int(instance.shape[1]), "height": int(instance.shape[0])}


def palette(ids: np.ndarray) -> np.ndarray:
    """A stable bright colour per id (uint8 RGB)."""
    ids = ids.astype(np.uint64)
    hashed = (ids * np.uint64(2654435761)) % np.uint64(2**32)
    rgb = np.stack([(hashed >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], axis=-1)
    return (96 + (rgb.astype(np.float64) * (159.0 / 255.0))).astype(np.uint8)


def preview_image(photo: np.ndarray, instance: np.ndarray, z_depth: np.ndarray) -> np.ndarray:
    """Visible masks over the photo (left) and the depth (right, near = bright) as one RGB image."""
    photo = photo[..., :3].astype(np.float64)
    if photo.shape[:2] != instance.shape:
        from PIL import Image

        photo = np.asarray(Image.fromarray(photo.astype(np.uint8)).resize(instance.shape[::-1]),
                           dtype=np.float64)
    overlay = photo.copy()
    labelled = instance > 0
    overlay[labelled] = 0.45 * photo[labelled] + 0.55 * palette(instance[labelled])
    finite = np.isfinite(z_depth)
    depth_rgb = np.zeros(photo.shape)
    if finite.any():
        near, far = np.percentile(z_depth[finite], [1, 99])
        level = 1.0 - np.clip((z_depth - near) / max(far - near, 1e-9), 0.0, 1.0)
        depth_rgb[finite] = (40.0 + 215.0 * level[finite])[:, None]
    return np.concatenate([overlay, depth_rgb], axis=1).clip(0, 255).astype(np.uint8)


def _scene_query(request: Union[SurfacePointsRequest, SnapRequest]):
    """The scene's surface at a view's pixels: true depth maps in ``depth_dir`` (named like the images), or the
    field's median surface (the same surface the bake's occlusion reads)."""
    from ..scene.queries import DepthMapQuery, FieldQuery

    if request.depth_dir is not None:
        depth_dir = request.depth_dir

        def depth_map(view):
            path = depth_dir / f"{view.name}.npy"
            if not path.is_file():
                raise NeuralLabelError(f"depth_dir: {path} does not exist", field="depth_dir")
            return np.load(path)

        return DepthMapQuery(depth_map)
    return FieldQuery(_load_field(request), device=str(_torch_device(request.device)))


def _load_field(request: Union[SurfacePointsRequest, SnapRequest]):
    from ..field.model import load_field

    device = _torch_device(request.device)
    with at_field("field"):
        return load_field(request.field, device=device)


def surface_near_box(request: Union[SurfacePointsRequest, SnapRequest], box_world: Box, margin_world: float,
                     max_views: int, progress: Optional[ProgressFn], notice: NoticeFn) -> tuple[np.ndarray, int]:
    """Surface points (world) near a world box: the box goes into the cameras' frame and back."""
    from ..geometry.view import View
    from ..scene.surface import surface_points

    world_from_data = request.world_from_data
    dataset = load_dataset_noting(request.data, notice)
    views = [View.from_frame(frame, world_from_data) for frame in dataset.frames]
    box_data = box_world.transformed(world_from_data.inverse().matrix)
    surface = surface_points(views, box_data, _scene_query(request),
                             margin=margin_world / world_from_data.scale, max_views=max_views, progress=progress)
    return world_from_data.apply(surface.points), surface.view_count


def run_surface_points(request: SurfacePointsRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    if request.box is None:
        from ..scene.surface import field_cloud

        views = request.max_views or 6
        dataset = load_dataset_noting(request.data, notice)
        points = request.world_from_data.apply(field_cloud(_load_field(request), dataset.frames, views=views,
                                                           progress=progress))
        views = min(len(dataset.frames), views)
    else:
        points, views = surface_near_box(request, request.box, request.margin, request.max_views or 12,
                                         progress, notice)
    request.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(request.out, points.astype(np.float32))
    return {"points": str(request.out), "count": int(len(points)), "views": int(views)}


def run_snap(request: SnapRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..geometry.icp import icp_point_to_plane, sample_mesh_surface
    from ..io.meshes import load_mesh
    from ..scene.surface import estimate_normals

    with at_field("mesh"):
        mesh = load_mesh(request.mesh, what="mesh")
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    pose = request.pose
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    centre = np.eye(4)
    centre[:3, 3] = 0.5 * (lo + hi)
    size = float(np.linalg.norm(hi - lo))
    max_distance = request.max_distance or max(0.03, 0.2 * size)
    margin = request.margin or max_distance
    scene_points, views = surface_near_box(request, Box(pose @ centre, hi - lo), margin, request.max_views,
                                           progress, notice)
    model_points, model_normals = sample_mesh_surface(vertices, faces, request.model_points)
    result = icp_point_to_plane(model_points, model_normals, scene_points, pose, max_distance=max_distance,
                                scene_normals=estimate_normals(scene_points), progress=progress)
    # A snap that runs away is worse than none: the surface there does not look like the mesh.
    moved = float(np.linalg.norm((result.pose @ centre)[:3, 3] - (pose @ centre)[:3, 3]))
    turned = float(np.degrees(np.arccos(np.clip((np.trace(pose[:3, :3].T @ result.pose[:3, :3]) - 1) / 2, -1, 1))))
    if moved > max_distance or turned > 30.0:
        raise NeuralLabelError(
            f"the snap would move the mesh by {moved:.3g} (scene units) and turn it by {turned:.0f} degrees: the "
            f"surface near it does not match the mesh (RMS residual {result.rmse:.3g}). The mesh stays where it was; "
            "place it closer (within max_distance), raise max_distance, or check the field there",
            field="max_distance")
    return {"pose": result.pose.tolist(), "fitness": result.fitness, "rmse": result.rmse,
            "iterations": result.iterations, "converged": result.converged,
            "scene_points": int(len(scene_points)), "views": int(views)}


def run_inspect(request: InspectRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..eval.inspect import inspect_bake

    return inspect_bake(request.bake, request.out, frames=request.frames, max_frames=request.max,
                        progress=progress)


def run_correspond(request: CorrespondRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..correspond.writer import correspond_dataset

    checkpoint, dataset = load_trained_field(request, notice)
    return correspond_dataset(checkpoint, dataset, request.out, field_path=request.field, pairs=request.pairs,
                              per_pair=request.per_pair, mode=request.mode, round_trip_px=request.round_trip_px,
                              mask_from=request.mask_from, shard=parse_shard(request.shard), seed=request.seed,
                              max_angle=request.max_angle, whole_field=request.whole_field, progress=progress)


#: Import names of requirements.txt's distributions where they differ from the name in lower case.
IMPORT_NAMES = {"pymcubes": "mcubes", "opencv-python-headless": "cv2", "pillow": "PIL"}


def requirement_modules(requirements: list[str]) -> list[str]:
    """The module each requirement line (``name==version``) is imported as."""
    names = [re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower() for line in requirements]
    return [IMPORT_NAMES.get(name, name.replace("-", "_")) for name in names]


def run_check(request: CheckRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    import importlib.util
    import platform
    import sys

    extension = Path(__file__).resolve().parents[2]
    requirements = extension / "requirements.txt"
    lines = [line.strip() for line in requirements.read_text().splitlines()] if requirements.exists() else []
    modules = requirement_modules([line for line in lines if line and not line.startswith("#")])
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    result = {"python": f"{platform.python_version()} ({sys.executable})", "torch": None, "cuda": False,
              "device": "cpu", "numpy": np.__version__, "missing": missing,
              "package": f"{__name__.rsplit('.core.', 1)[0]} ({extension})"}
    if "torch" not in missing:
        import torch

        result["torch"] = torch.__version__
        result["cuda"] = bool(torch.cuda.is_available())
        if result["cuda"]:
            result["device"] = torch.cuda.get_device_name(0)
    return result


RUNNERS: dict[str, Callable[[Any, Optional[ProgressFn], NoticeFn], dict]] = {
    "bake": run_bake, "train": run_train, "render": run_render, "sfm": run_sfm_job, "demo": run_demo_job,
    "preview": run_preview, "surface_points": run_surface_points, "snap": run_snap,
    "inspect": run_inspect, "check": run_check, "correspond": run_correspond, "synth": run_synth,
    "synth_poses": run_synth_poses}


# --- semantic head and active selection (issue 16) -------------------------------------------------------


def _class_ids(value: Any) -> Optional[list[int]]:
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        ids = sorted({int(str(v).strip()) for v in items if str(v).strip()})
    except ValueError:
        raise NeuralLabelError(f"classes {value!r}: expected comma-separated category ids", field="classes") from None
    if not ids or ids[0] < 0 or ids[-1] >= 0xFFFF:
        raise NeuralLabelError(f"classes {value!r}: ids must be 0..65534 (65535 is 'unlabelled')", field="classes")
    return ids


@dataclass
class SemanticTrainRequest:
    """Train a semantic head on a frozen ``field`` from the label images in ``labels`` into ``out``."""

    field: Path
    data: Path
    labels: Path
    out: Path
    classes: Any = None  # the class table ("0,1,2"); default: the ids the labels use
    steps: int = 300
    device: str = "auto"
    downscale: float = 1.0  # label images are at the photos' size shrunk by this factor
    kind = "semantic_train"

    def __post_init__(self) -> None:
        self.field, self.data = _path(self.field, "field"), _path(self.data, "data")
        self.labels, self.out = _path(self.labels, "labels"), _path(self.out, "out")
        self.classes = _class_ids(self.classes)
        self.steps = _integer(self.steps, "steps", minimum=1)
        self.device = _device(self.device)
        self.downscale = _number(self.downscale, "downscale", minimum=1.0, inclusive=True)


@dataclass
class SemanticRenderRequest:
    """Render a semantic head's category map, entropy and a colour preview for ``data``'s views into ``out``."""

    head: Path
    data: Path
    out: Path
    split: str = "all"
    field: Optional[Path] = None  # default: the field the head was trained with
    device: str = "auto"
    downscale: float = 1.0
    kind = "semantic_render"

    def __post_init__(self) -> None:
        self.head, self.data, self.out = _path(self.head, "head"), _path(self.data, "data"), _path(self.out, "out")
        check_output_location(self.out)
        self.split = _choice(self.split, "split", SPLITS)
        self.field = _optional_path(self.field)
        self.device = _device(self.device)
        self.downscale = _number(self.downscale, "downscale", minimum=1.0, inclusive=True)


@dataclass
class SelectRequest:
    """Choose what to label next in ``data``'s train views: ``budget`` pixels as pixel, patch:K or image units."""

    field: Path
    data: Path
    out: Path
    budget: int
    granularity: str = "patch:16"
    strategy: str = "geometry"
    head: Optional[Path] = None
    labels: Optional[Path] = None
    seed: int = 0
    state: Optional[Path] = None  # default: OUT with .state.json
    device: str = "auto"
    downscale: float = 1.0  # select in images shrunk by this factor (rectangles in their pixels)
    kind = "select"

    def __post_init__(self) -> None:
        from ..semantic.pool import parse_granularity
        from ..semantic.strategies import STRATEGIES

        self.field, self.data, self.out = _path(self.field, "field"), _path(self.data, "data"), _path(self.out, "out")
        self.budget = _integer(self.budget, "budget", minimum=1)
        self.granularity = str(parse_granularity(self.granularity))
        self.strategy = _choice(self.strategy, "strategy", STRATEGIES)
        self.head, self.labels = _optional_path(self.head), _optional_path(self.labels)
        self.seed = _integer(self.seed, "seed", minimum=0)
        self.state = _optional_path(self.state) or self.out.with_name(self.out.stem + ".state.json")
        self.device = _device(self.device)
        self.downscale = _number(self.downscale, "downscale", minimum=1.0, inclusive=True)


def _semantic_field(request: Any, notice: NoticeFn, field_path: Path):
    """The frozen field (checked finite, trained on ``request.data``), its fingerprint and the dataset."""
    from ..field.checkpoint import check_finite, check_trained_on, load_checkpoint

    with at_field("field"):
        checkpoint = load_checkpoint(field_path, device=_torch_device(request.device))
        check_finite(checkpoint.field)
    with at_field("data"):
        dataset = load_dataset_noting(request.data, notice, request.downscale)
        check_trained_on(checkpoint, dataset, request.data, source=field_path, what="field")
    return checkpoint.field, checkpoint.dataset.get("fingerprint"), dataset


def run_semantic_train(request: SemanticTrainRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..semantic.train import HeadTrainOptions
    from ..semantic.workflow import train_from_labels

    field, fingerprint, dataset = _semantic_field(request, notice, request.field)
    return train_from_labels(field, fingerprint, dataset.frames, request.labels, request.out,
                             class_ids=request.classes, options=HeadTrainOptions(steps=request.steps),
                             field_path=request.field, notice=notice, progress=progress)


def run_semantic_render(request: SemanticRenderRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..io.outdir import claim_output_dir
    from ..semantic.head import load_head
    from ..semantic.render import SEMANTIC_OUTPUTS, render_semantic
    from ..semantic.workflow import load_checked_head

    head_path = request.head
    field_path = request.field or load_head(head_path).info.get("field")
    if not field_path:
        raise NeuralLabelError(f"{head_path}: the head does not say which field it was trained with; give --field",
                               field="field")
    field, fingerprint, dataset = _semantic_field(request, notice, Path(field_path))
    head = load_checked_head(head_path, fingerprint)
    frames = dataset.frames if request.split == "all" else dataset.split(request.split)
    if not frames:
        raise NeuralLabelError(f"split {request.split!r}: {dataset.path} has no frame in it", field="split")
    claim_output_dir(request.out, kind="semantic_render", reserved=SEMANTIC_OUTPUTS,
                     manifest={"head": str(head_path.resolve()), "data": str(Path(dataset.path).resolve()),
                               "split": request.split},
                     inputs={"photo": [f.image_path for f in dataset.frames], "dataset file": dataset.source_paths(),
                             "head": [head_path], "field": [Path(field_path)]})
    views = render_semantic(field, head.head, frames, request.out, progress=progress)
    return {"out": str(request.out), "split": request.split, "count": len(views), "classes": head.head.config.class_ids,
            "views": views}


def _ray_cache_key(request: SelectRequest) -> dict:
    """What the cached rays of a selection depend on: the field file's bytes and the image scale."""
    import hashlib

    digest = hashlib.sha256(Path(request.field).read_bytes()).hexdigest()
    return {"field_sha256": digest, "downscale": float(request.downscale)}


def run_select(request: SelectRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..semantic.labels import load_labels
    from ..semantic.workflow import load_checked_head, select_next

    field, fingerprint, dataset = _semantic_field(request, notice, request.field)
    head = load_checked_head(request.head, fingerprint) if request.head is not None else None
    labels = None
    if request.labels is not None:
        labels = load_labels(request.labels, dataset.frames, head.head.config.class_ids if head else None)
    frames = dataset.split("train")
    if not frames:
        raise NeuralLabelError(f"{dataset.path} has no train frame to select from", field="data")
    result = select_next(field, fingerprint, frames, budget=request.budget, granularity=request.granularity,
                         strategy=request.strategy, seed=request.seed, state_path=request.state, out=request.out,
                         head=head, labels=labels, notice=notice, progress=progress,
                         ray_cache=Path(f"{request.state}.rays.pt"), ray_cache_key=_ray_cache_key(request))
    return {"out": str(request.out), "state": str(request.state), "round": result.round, "units": len(result.selected),
            "pixels": result.cost, "budget": request.budget, "pool_exhausted": result.pool_exhausted}


REQUESTS.update({cls.kind: cls for cls in (SemanticTrainRequest, SemanticRenderRequest, SelectRequest)})
JOB_KINDS = tuple(REQUESTS)
RUNNERS.update({"semantic_train": run_semantic_train, "semantic_render": run_semantic_render, "select": run_select})


# --- export-mesh (issue 14): the field's surface as a triangle mesh --------------------------------------------


@dataclass
class ExportMeshRequest:
    """The field's surface over its detailed region as a PLY triangle mesh (the dataset frame); see
    :mod:`..scene.field_mesh`."""

    field: Path
    out: Path
    resolution: int = 256  # voxels along the region's longest side
    threshold: Optional[float] = None  # iso-level, density per data unit; None: ln 2 / the render step
    colour: bool = True  # vertex colours from the field's rgb
    device: str = "auto"
    kind = "export_mesh"

    def __post_init__(self) -> None:
        self.field, self.out = _path(self.field, "field"), _path(self.out, "out")
        self.resolution = _integer(self.resolution, "resolution", minimum=8)
        if self.threshold is not None:
            self.threshold = _number(self.threshold, "threshold", minimum=0.0)
        self.colour = bool(self.colour)
        self.device = _device(self.device)


def run_export_mesh(request: ExportMeshRequest, progress: Optional[ProgressFn], notice: NoticeFn) -> dict:
    from ..scene.field_mesh import export_field_mesh

    return export_field_mesh(request.field, request.out, resolution=request.resolution, threshold=request.threshold,
                             colour=request.colour, device=_torch_device(request.device), progress=progress)


REQUESTS[ExportMeshRequest.kind] = ExportMeshRequest
JOB_KINDS = tuple(REQUESTS)
RUNNERS[ExportMeshRequest.kind] = run_export_mesh
