"""Render a ground-truth tabletop scene with Blender's Cycles: the truth every label is measured against.

Runs under Blender and under Python with the ``bpy`` module::

    blender -b -P scripts/make_scene.py -- --out DIR [--views 40] [--meshes ../shared/data/meshes] [--glass]
    python scripts/make_scene.py --out DIR [--layout room|tabletop] [--clutter N] [--format nerfstudio] [...]

Layouts: ``room`` (default) stands the objects on a 2 m x 2 m floor with low walls at its edges;
``tabletop`` stands them on a 1.2 m x 0.8 m table (top at 0.75 m) in a 5 m x 5 m room whose textured walls
are ~2.5 m away (an open scene: the background lies far beyond the objects). ``--clutter N`` adds N
unannotated monkeys (Blender's Suzanne); the first stands between the first camera and an annotated object.
They have instance ids (the truth knows what they hide) and ``"annotated": false`` in objects.json.
``--thin`` adds a whisk-like cage of wire loops and two leaning rods (wires 2-4 mm thick; ``whisk_1``,
``rod_1``, ``rod_2``), ``--metal`` makes the first primitive and those wires glossy metal: the hard variant
for correspondences, where a ray's weight splits between a wire and what lies behind it, and shiny surfaces
carry no texture of their own. Their objects.json entries say ``"material"`` (textured or metal).

Writes (units: metres)::

    DIR/transforms.json          pinhole intrinsics, OpenGL camera-to-world poses, train/test split:
                                 instant-ngp form (default: per-frame "split", "camera_angle_x", "aabb_scale"
                                 only with --aabb-scale) or nerfstudio form (--format nerfstudio: no per-frame
                                 split; train_filenames / val_filenames / test_filenames, val = test). No
                                 bounds key: the field finds its bounds as it does for a real capture.
    DIR/images/NNNNNN.png        Cycles RGB (few samples + denoiser)
    DIR/gt/depth/NNNNNN.npy      float32 z-depth along the optical axis (Cycles Z pass), inf = nothing hit
    DIR/gt/instance/NNNNNN.png   uint16 instance id per pixel centre (Object Index pass), 0 = floor/walls/sky
    DIR/gt/objects.json          name, category, ids, mesh file, object-to-world pose, enclosing box, transparent,
                                 annotated (false: clutter no label spec should hold); "background": layout
    DIR/gt/meshes/<name>.ply     each object's triangles in its own frame (exactly what Cycles rendered)
    DIR/target/                  only with --target-views N: a target camera set of the same scene (Neural-Sim,
                                 issue 17) in the same layout (transforms.json, every frame in the test split;
                                 images/, gt/depth/, gt/instance/, gt/objects.json whose meshes are ../gt/meshes)

Target cameras (``--target-views N``) orbit the table centre (azimuth from +x towards +y, elevation from the
horizontal, distance from the centre: the orbit terms of ``neurallabel synth``), drawn uniformly in the
``--target-azimuth/-elevation/-distance`` band from a random stream of their own: the scene, its cameras and
its colours are the same with any target plan or none.

The depth and id passes come from a second render with 1 sample and a 0.01 px pixel filter: Cycles writes
them from the first sample only, so with a tiny filter that sample sits on the pixel centre. Cycles' Z pass
is already z-depth along the optical axis (not the distance along the ray); the tests check this against
an analytic projection. Passes are read back through Blender's own compositor (File Output node, EXR) and
image loader, not a hand-written EXR reader.

The output is written into a temporary sibling folder and renamed into place at the end, so a killed run
leaves nothing half-written. Progress goes to stdout as JSON lines (``{"event": "progress", ...}``), the
last line is ``{"event": "result", ...}``; bad arguments give one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Category ids are fixed per shape so that every generated scene shares one category table.
CATEGORY_IDS = {"cube": 1, "box": 2, "cylinder": 3, "sphere": 4, "cone": 5, "torus": 6, "icosphere": 7,
                "bunny": 8, "armadillo": 9, "glass": 10, "monkey": 11, "whisk": 12, "rod": 13}
PRIMITIVES = ("cube", "box", "cylinder", "sphere", "cone", "torus", "icosphere")
STANFORD_MESHES = ("bunny", "armadillo")
TEXTURES = ("checker", "noise", "voronoi", "wave", "brick")
#: --thin: objects built from wires (tubes of this radius range, metres: 2-4 mm thick)
WIRE_KINDS = ("whisk", "rod")
WIRE_RADIUS = (0.001, 0.002)
TUBE_SIDES = 8

FLOOR_HALF_SIZE = 1.0   # the floor is 2 m x 2 m, walls stand on its edges
WALL_HEIGHT = 0.8
TARGET = (0.0, 0.0, 0.04)  # cameras look at the table centre, slightly above the floor (room layout)
#: Geometry per --layout: the surface the objects stand on, the room, and the cameras' elevation range.
#: The tabletop's cameras fly lower so the distant walls show in the upper part of many views.
LAYOUTS = {
    "room": {"surface_z": 0.0, "floor_half_size": FLOOR_HALF_SIZE, "wall_height": WALL_HEIGHT,
             "elevation_deg": (22.0, 60.0)},
    "tabletop": {"surface_z": 0.75, "table_size": (1.2, 0.8), "table_thickness": 0.04, "leg_width": 0.05,
                 "floor_half_size": 2.5, "wall_height": 2.5, "elevation_deg": (12.0, 55.0)},
}
FORMATS = ("instant-ngp", "nerfstudio")
MAX_CLUTTER = 4
HORIZONTAL_FOV_DEG = 55.0
SENSOR_WIDTH_MM = 36.0
BACKGROUND_DEPTH = 1e9  # Cycles writes 1e10 where a ray hits nothing


class SceneError(Exception):
    """Bad arguments or inputs: one line on stderr, exit code 2."""


# --- arguments -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_scene.py",
                                description="Render a ground-truth tabletop scene with Cycles.")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not exist, see --overwrite)")
    p.add_argument("--views", type=int, default=40, help="number of cameras (default 40)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--seed", type=int, default=0, help="the scene, cameras and noise follow from it")
    p.add_argument("--objects", type=int, default=5,
                   help="number of objects, 4-7, including the Stanford meshes and the glass (default 5)")
    p.add_argument("--meshes", type=Path, default=None,
                   help="folder with bunny.obj / armadillo.obj (e.g. ../shared/data/meshes) to add them")
    p.add_argument("--glass", action="store_true", help="add one transparent glass object")
    p.add_argument("--thin", action="store_true",
                   help="add a whisk-like wire cage and two thin rods (wires 2-4 mm thick) beyond --objects")
    p.add_argument("--metal", action="store_true",
                   help="glossy metal instead of a texture on the first primitive (and on the --thin wires)")
    p.add_argument("--test-every", type=int, default=8,
                   help="frame i is in the test split when i %% N == 0 (0: no test frames; default 8)")
    p.add_argument("--samples", type=int, default=12, help="Cycles samples per pixel for RGB (default 12)")
    p.add_argument("--no-denoise", action="store_true", help="do not denoise the RGB images")
    p.add_argument("--threads", type=int, default=0, help="render threads (0: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="room",
                   help="room: floor with walls at its edges (default); tabletop: a table in a larger room")
    p.add_argument("--clutter", type=int, default=0,
                   help=f"unannotated clutter objects (monkeys), 0-{MAX_CLUTTER} (default 0)")
    p.add_argument("--format", choices=FORMATS, default="instant-ngp",
                   help="transforms.json form (default instant-ngp)")
    p.add_argument("--target-views", type=int, default=0,
                   help="also render N target cameras into DIR/target/ (a camera distribution to match)")
    p.add_argument("--target-azimuth", default="-180:180", help="target cameras' azimuth band LOW:HIGH, degrees")
    p.add_argument("--target-elevation", default=None,
                   help="target cameras' elevation band LOW:HIGH, degrees (default: the layout's camera band)")
    p.add_argument("--target-distance", default="0.55:0.8",
                   help="target cameras' distance band LOW:HIGH from the table centre, metres (default: the "
                        "training cameras' band)")
    p.add_argument("--aabb-scale", type=int, default=None,
                   help="instant-ngp's aabb_scale (a power of two, 1-128); written only when given")
    return p


def script_argv(argv: list[str]) -> list[str]:
    """Our arguments: those after ``--`` under ``blender -b -P``, else everything after the script."""
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


def check_args(args: argparse.Namespace) -> list[Path]:
    """Validate arguments; returns the Stanford mesh files to use."""
    if args.views < 1:
        raise SceneError(f"--views must be at least 1 (got {args.views})")
    if not (8 <= args.width <= 8192 and 8 <= args.height <= 8192):
        raise SceneError(f"--width/--height must be 8..8192 pixels (got {args.width}x{args.height})")
    if not 4 <= args.objects <= 7:
        raise SceneError(f"--objects must be 4..7 (got {args.objects})")
    if args.samples < 1:
        raise SceneError(f"--samples must be at least 1 (got {args.samples})")
    if args.test_every < 0:
        raise SceneError(f"--test-every must be >= 0 (got {args.test_every})")
    if args.threads < 0:
        raise SceneError(f"--threads must be >= 0 (got {args.threads})")
    if not 0 <= args.clutter <= MAX_CLUTTER:
        raise SceneError(f"--clutter must be 0..{MAX_CLUTTER} (got {args.clutter})")
    if args.aabb_scale is not None:
        if args.format != "instant-ngp":
            raise SceneError("--aabb-scale is instant-ngp's key: use it with --format instant-ngp")
        if not (1 <= args.aabb_scale <= 128 and args.aabb_scale & (args.aabb_scale - 1) == 0):
            raise SceneError(f"--aabb-scale must be a power of two, 1..128 (got {args.aabb_scale})")
    if args.target_views < 0:
        raise SceneError(f"--target-views must be >= 0 (got {args.target_views})")
    target_band(args)  # a malformed band is an error before anything renders
    mesh_files: list[Path] = []
    if args.meshes is not None:
        if not args.meshes.is_dir():
            raise SceneError(f"--meshes {args.meshes}: folder does not exist")
        mesh_files = [args.meshes / f"{name}.obj" for name in STANFORD_MESHES
                      if (args.meshes / f"{name}.obj").is_file()]
        if not mesh_files:
            raise SceneError(f"--meshes {args.meshes}: neither bunny.obj nor armadillo.obj is in it")
    if len(mesh_files) + int(args.glass) > args.objects:
        raise SceneError(f"--objects {args.objects} is too few for {len(mesh_files)} Stanford meshes"
                         + (" and a glass" if args.glass else ""))
    out = args.out
    if out.exists() and not args.overwrite:
        raise SceneError(f"--out {out}: already exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise SceneError(f"--out {out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "gt" / "objects.json").is_file():
        # --overwrite replaces an earlier scene, never a folder of something else
        raise SceneError(f"--out {out}: is not a generated scene (no gt/objects.json); refusing to replace it")
    return mesh_files


def _band(value: str, name: str, low: float, high: float) -> tuple[float, float]:
    parts = str(value).split(":")
    try:
        a, b = (float(x) for x in parts)
    except ValueError:
        raise SceneError(f"--target-{name} {value!r}: expected LOW:HIGH") from None
    if not (low <= a <= b <= high):
        raise SceneError(f"--target-{name} {value!r}: expected {low:g} <= LOW <= HIGH <= {high:g}")
    return a, b


def target_band(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """The target cameras' band: azimuth and elevation in degrees, distance in metres."""
    elevation = args.target_elevation or ":".join(map(str, LAYOUTS[args.layout]["elevation_deg"]))
    return {"azimuth": _band(args.target_azimuth, "azimuth", -360.0, 360.0),
            "elevation": _band(elevation, "elevation", -89.0, 89.0),
            "distance": _band(args.target_distance, "distance", 0.05, 10.0)}


# --- the scene as plain data (all randomness lives here, so a seed fixes everything) ---------------------


def plan_objects(rng: np.random.Generator, count: int, mesh_files: list[Path], glass: bool) -> list[dict]:
    """Shapes, sizes (metres), textures and placements of the objects, before Blender builds them."""
    kinds: list[tuple[str, Path | None]] = [(f.stem, f) for f in mesh_files]
    if glass:
        kinds.append(("glass", None))
    n_primitives = count - len(kinds)
    primitives = list(rng.choice(PRIMITIVES, size=n_primitives, replace=n_primitives > len(PRIMITIVES)))
    kinds += [(str(k), None) for k in primitives]
    # Order the instances deterministically by their kind's position in the plan above.
    objects = []
    seen: dict[str, int] = {}
    for instance_id, (kind, path) in enumerate(kinds, start=1):
        seen[kind] = seen.get(kind, 0) + 1
        size = _plan_size(rng, kind)
        objects.append({
            "name": f"{kind}_{seen[kind]}",
            "category": kind,
            "category_id": CATEGORY_IDS[kind],
            "instance_id": instance_id,
            "source": str(path) if path else None,
            "size": size,
            "yaw": float(rng.uniform(0.0, 2.0 * math.pi)),
            "texture": str(rng.choice(TEXTURES)),
            "texture_scale": float(rng.uniform(30.0, 70.0)),
            "colors": [list(map(float, rng.uniform(0.05, 0.95, size=3))) for _ in range(2)],
            "transparent": kind == "glass",
        })
    _place(rng, objects)
    return objects


def _plan_size(rng: np.random.Generator, kind: str) -> dict:
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if kind == "cube":
        return {"edge": u(0.05, 0.09)}
    if kind == "box":
        return {"dims": [u(0.04, 0.12), u(0.04, 0.09), u(0.04, 0.10)]}
    if kind in ("cylinder", "cone"):
        return {"radius": u(0.025, 0.045), "height": u(0.06, 0.13)}
    if kind in ("sphere", "icosphere"):
        return {"radius": u(0.025, 0.05)}
    if kind == "torus":
        minor = u(0.012, 0.02)
        return {"major": u(0.035, 0.05), "minor": minor}
    if kind == "glass":
        return {"radius": u(0.03, 0.04), "height": u(0.08, 0.12)}
    return {"extent": u(0.09, 0.14)}  # Stanford meshes: largest side of their bounding box


def _footprint(obj: dict) -> float:
    """Radius of a circle that holds the object's footprint on the table (for non-overlapping placement)."""
    s = obj["size"]
    if "edge" in s:
        return s["edge"] * math.sqrt(0.5)
    if "dims" in s:
        return 0.5 * math.hypot(s["dims"][0], s["dims"][1])
    if "major" in s:
        return s["major"] + s["minor"]
    if "length" in s:  # a leaning rod: half its shadow on the surface
        return 0.5 * s["length"] * math.sin(s["tilt"]) + s["wire"]
    if "radius" in s:
        return s["radius"]
    return 0.5 * s["extent"] * math.sqrt(2.0)


def _place(rng: np.random.Generator, objects: list[dict],
           placed: list[tuple[float, float, float]] | None = None) -> None:
    """Random non-overlapping spots near the centre; ``placed`` holds (x, y, radius) already taken."""
    radius = 0.22
    placed = [] if placed is None else placed
    for obj in objects:
        r = _footprint(obj)
        for attempt in range(2000):
            grow = 1.0 + attempt / 500.0  # a crowded table grows a little rather than failing
            rho = radius * grow * math.sqrt(rng.uniform(0.0, 1.0))
            phi = rng.uniform(0.0, 2.0 * math.pi)
            x, y = rho * math.cos(phi), rho * math.sin(phi)
            if all(math.hypot(x - px, y - py) > r + pr + 0.015 for px, py, pr in placed):
                break
        placed.append((x, y, r))
        obj["xy"] = [float(x), float(y)]


def plan_clutter(rng: np.random.Generator, objects: list[dict], cameras: list[np.ndarray], count: int,
                 surface_z: float = 0.0, aspect: float = 0.75) -> list[dict]:
    """Unannotated monkeys. The first stands just in front of an annotated object as seen from one of
    ``cameras`` (camera-to-world; the caller passes the test cameras), facing it, so it hides the object's
    lower part there and in nearby views; the others stand anywhere free on the surface."""
    clutter = []
    for k in range(count):
        clutter.append({
            "name": f"monkey_{k + 1}", "category": "monkey", "category_id": CATEGORY_IDS["monkey"],
            "instance_id": len(objects) + k + 1, "source": None,
            # Suzanne's proportions: width = extent, depth 0.62, height 0.72 of it.
            "size": {"extent": float(rng.uniform(0.16, 0.2))},
            "yaw": float(rng.uniform(0.0, 2.0 * math.pi)), "texture": str(rng.choice(TEXTURES)),
            "texture_scale": float(rng.uniform(30.0, 70.0)),
            "colors": [list(map(float, rng.uniform(0.05, 0.95, size=3))) for _ in range(2)],
            "transparent": False, "annotated": False,
        })
    taken = [(o["xy"][0], o["xy"][1], _footprint(o)) for o in objects]
    spot = _spot_in_front(objects, cameras, clutter[0]["size"]["extent"], surface_z, aspect) if clutter else None
    if spot is not None:
        xy, towards, obj, view = spot
        clutter[0].update(xy=[float(xy[0]), float(xy[1])], in_front_of=obj["name"], in_front_in_view=view,
                          yaw=float(math.atan2(towards[0], -towards[1])))  # Suzanne faces -y: face the camera
        taken.append((xy[0], xy[1], _footprint(clutter[0])))
    _place(rng, [c for c in clutter if "xy" not in c], taken)
    return clutter


def plan_thin(rng: np.random.Generator, objects: list[dict]) -> list[dict]:
    """--thin: a whisk-like cage of wire loops and two leaning rods, placed where the surface is free. Their
    wires are 2-4 mm thick: a pixel or two at full size, where a ray's weight splits between wire and floor."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    sizes = [("whisk", {"radius": u(0.035, 0.05), "height": u(0.1, 0.14), "loops": int(rng.integers(4, 7)),
                        "wire": u(*WIRE_RADIUS)})]
    sizes += [("rod", {"length": u(0.1, 0.16), "tilt": u(math.radians(15.0), math.radians(50.0)),
                       "wire": u(*WIRE_RADIUS)}) for _ in range(2)]
    thin, seen = [], {}
    for k, (kind, size) in enumerate(sizes):
        seen[kind] = seen.get(kind, 0) + 1
        thin.append({
            "name": f"{kind}_{seen[kind]}", "category": kind, "category_id": CATEGORY_IDS[kind],
            "instance_id": len(objects) + k + 1, "source": None, "size": size,
            "yaw": u(0.0, 2.0 * math.pi), "texture": str(rng.choice(TEXTURES)), "texture_scale": u(30.0, 70.0),
            "colors": [list(map(float, rng.uniform(0.05, 0.95, size=3))) for _ in range(2)],
            "transparent": False, "material": "textured",
        })
    _place(rng, thin, [(o["xy"][0], o["xy"][1], _footprint(o)) for o in objects])
    return thin


def make_metal(objects: list[dict]) -> None:
    """--metal: the first primitive and every wire object turn glossy metal (no randomness: a seed's scene
    keeps its shapes and places, only materials change)."""
    primitives = [o for o in objects if o["category"] in PRIMITIVES and o.get("annotated", True)]
    for obj in primitives[:1] + [o for o in objects if o["category"] in WIRE_KINDS]:
        obj["material"] = "metal"


def _spot_in_front(objects: list[dict], cameras: list[np.ndarray], extent: float, surface_z: float,
                   aspect: float):
    """(xy, unit direction to the camera, object, camera index) of the free spot just in front of an opaque
    object, well inside one camera's view, where the monkey hides most of the object from that camera
    (estimated with boxes and cylinders standing in for the meshes). None when the table is too crowded."""
    r_side = 0.5 * math.hypot(extent, 0.62 * extent)  # the neighbours' clearance (a circle round her)
    half_x = math.tan(0.5 * math.radians(HORIZONTAL_FOV_DEG))
    best, best_hidden = None, 0.0
    for view, camera in enumerate(cameras):
        eye, world_to_cam = camera[:3, 3], np.linalg.inv(camera)
        for obj in (o for o in objects if not o["transparent"]):
            towards = eye[:2] - np.asarray(obj["xy"])
            towards /= np.linalg.norm(towards)
            samples = _object_samples(obj, surface_z)
            for gap in (0.005, 0.02, 0.04):
                xy = np.asarray(obj["xy"]) + towards * (_footprint(obj) + 0.31 * extent + gap)
                x, y, z = (world_to_cam @ [xy[0], xy[1], surface_z + 0.05, 1.0])[:3]
                in_view = z < 0 and abs(x / z) < 0.85 * half_x and abs(y / z) < 0.85 * half_x * aspect
                free = all(math.hypot(xy[0] - o["xy"][0], xy[1] - o["xy"][1]) > r_side + _footprint(o) + 0.005
                           for o in objects if o is not obj)
                if not (in_view and free):
                    continue
                hidden = _hidden_share(eye, samples, xy, towards, extent, surface_z)
                if hidden > best_hidden + 1e-9:
                    best, best_hidden = (xy, towards, obj, view), hidden
    return best


def _object_samples(obj: dict, surface_z: float) -> np.ndarray:
    """Points on a cylinder standing in for the object (footprint radius x 0.7, its height)."""
    s = obj["size"]
    height = (s.get("edge") or (s["dims"][2] if "dims" in s else None) or s.get("height")
              or (2 * s["minor"] if "minor" in s else None) or (2 * s["radius"] if "radius" in s else s["extent"]))
    angles = np.linspace(0.0, 2.0 * math.pi, 12, endpoint=False)
    r = 0.7 * _footprint(obj)
    ring = np.stack([obj["xy"][0] + r * np.cos(angles), obj["xy"][1] + r * np.sin(angles)], axis=1)
    points = [np.column_stack([ring, np.full(len(ring), surface_z + f * height)]) for f in (0.15, 0.4, 0.65, 0.9)]
    return np.concatenate(points)


def _hidden_share(eye: np.ndarray, points: np.ndarray, xy: np.ndarray, towards: np.ndarray, extent: float,
                  surface_z: float) -> float:
    """The share of ``points`` whose sight line from ``eye`` passes through a box inside the monkey (facing
    ``towards``; 0.7 x 0.4 x 0.5 of her width, depth and height), a slab test in her frame."""
    side = np.array([-towards[1], towards[0]])

    def to_local(p: np.ndarray) -> np.ndarray:
        return np.column_stack([(p[:, :2] - xy) @ side, (p[:, :2] - xy) @ towards, p[:, 2] - surface_z])

    a, b = to_local(eye[None, :])[0], to_local(points)
    lo = np.array([-0.35 * extent, -0.2 * extent, 0.1 * extent])
    hi = np.array([0.35 * extent, 0.2 * extent, 0.6 * extent])
    d = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - a) / d, (hi - a) / d
    t_near = np.nanmax(np.minimum(t0, t1), axis=1)
    t_far = np.nanmin(np.maximum(t0, t1), axis=1)
    return float(np.mean((t_near < t_far) & (t_far > 0) & (t_near < 1)))


def held_out_frames(views: int, test_every: int) -> list[int]:
    """The frames of the test split (every frame when there is none)."""
    return [i for i in range(views) if test_every and i % test_every == 0] or list(range(views))


def plan_cameras(rng: np.random.Generator, views: int, layout: str = "room") -> list[np.ndarray]:
    """Camera-to-world poses (OpenGL axes = Blender camera) on a hemisphere, looking at the table centre.

    Azimuths are stratified (one random angle per equal sector) so any number of views covers the circle.
    """
    geometry = LAYOUTS[layout]
    target = np.array(TARGET) + np.array([0.0, 0.0, geometry["surface_z"]])
    low, high = geometry["elevation_deg"]
    poses = []
    for i in range(views):
        azimuth = 2.0 * math.pi * (i + rng.uniform(0.0, 1.0)) / views
        elevation = math.radians(rng.uniform(low, high))
        distance = rng.uniform(0.55, 0.8)
        look_at = target + np.array([rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), 0.0])
        poses.append(orbit_camera(look_at, azimuth, elevation, distance))
    return poses


def plan_target_cameras(rng: np.random.Generator, views: int, layout: str,
                        band: dict[str, tuple[float, float]]) -> list[np.ndarray]:
    """``views`` camera-to-world poses looking at the table centre (no jitter: the orbit terms are exact),
    azimuth, elevation and distance each uniform in ``band``."""
    centre = np.array(TARGET) + np.array([0.0, 0.0, LAYOUTS[layout]["surface_z"]])
    draws = rng.uniform(*zip(band["azimuth"], band["elevation"], band["distance"]), size=(views, 3))
    return [orbit_camera(centre, math.radians(a), math.radians(e), d) for a, e, d in draws]


def orbit_camera(look_at: np.ndarray, azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """The camera-to-world pose (OpenGL axes, z up) at ``azimuth`` / ``elevation`` (radians) and ``distance``
    from ``look_at``, looking at it."""
    eye = look_at + distance * np.array([math.cos(elevation) * math.cos(azimuth),
                                         math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    back = eye - look_at
    back /= np.linalg.norm(back)  # camera +z points backwards
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, eye
    return pose


# --- building the scene in Blender -----------------------------------------------------------------------


def _material(bpy, name: str, texture: str, scale: float, colors: list[list[float]], roughness: float = 0.5):
    """A principled material whose base colour is a procedural texture in the object's own coordinates
    (so the texture moves with the object; the NeRF needs texture to see depth)."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes.get("Principled BSDF")
    bsdf.inputs["Roughness"].default_value = roughness
    coords = nodes.new("ShaderNodeTexCoord")
    tex = {"checker": "ShaderNodeTexChecker", "noise": "ShaderNodeTexNoise", "voronoi": "ShaderNodeTexVoronoi",
           "wave": "ShaderNodeTexWave", "brick": "ShaderNodeTexBrick"}[texture]
    tex_node = nodes.new(tex)
    tex_node.inputs["Scale"].default_value = scale
    if texture == "noise":
        tex_node.inputs["Detail"].default_value = 6.0
    links.new(coords.outputs["Object"], tex_node.inputs["Vector"])
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs["A"].default_value = (*colors[0], 1.0)
    mix.inputs["B"].default_value = (*colors[1], 1.0)
    fac = tex_node.outputs["Distance"] if texture == "voronoi" else tex_node.outputs["Fac"]
    links.new(fac, mix.inputs["Factor"])
    links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    return mat


def _metal_material(bpy, name: str, color: list[float]):
    """Glossy metal: no texture of its own, only the mirrored surroundings (what a photographed fork shows)."""
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes.get("Principled BSDF")
    bsdf.inputs["Base Color"].default_value = (*[0.55 + 0.4 * c for c in color], 1.0)  # bright, slightly tinted
    bsdf.inputs["Metallic"].default_value = 1.0
    bsdf.inputs["Roughness"].default_value = 0.12
    return mat


def tube_mesh(paths: list[tuple[np.ndarray, np.ndarray, bool]], radius: float, sides: int = TUBE_SIDES
              ) -> tuple[np.ndarray, list[list[int]]]:
    """Vertices and faces of tubes of ``radius`` around polylines: each path is (points (n, 3), a unit
    vector perpendicular to it everywhere (the loop's plane normal; any for a straight line), closed). Open
    tubes get end caps, so every tube is closed."""
    verts, faces = [], []
    angles = 2.0 * math.pi * np.arange(sides) / sides
    for points, normal, closed in paths:
        n = len(points)
        ahead = np.roll(points, -1, axis=0) if closed else np.vstack([points[1:], 2 * points[-1] - points[-2]])
        behind = np.roll(points, 1, axis=0) if closed else np.vstack([2 * points[0] - points[1], points[:-1]])
        tangent = ahead - behind
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        side = np.cross(tangent, normal)
        ring = points[:, None, :] + radius * (np.cos(angles)[None, :, None] * normal
                                              + np.sin(angles)[None, :, None] * side[:, None, :])
        base = sum(len(v) for v in verts)
        verts.append(ring.reshape(-1, 3))
        for i in range(n if closed else n - 1):
            i2 = (i + 1) % n
            faces += [[base + i * sides + j, base + i * sides + (j + 1) % sides,
                       base + i2 * sides + (j + 1) % sides, base + i2 * sides + j] for j in range(sides)]
        if not closed:
            faces += [[base + j for j in reversed(range(sides))], [base + (n - 1) * sides + j for j in range(sides)]]
    return np.vstack(verts), faces


def wire_paths(kind: str, size: dict, points: int = 48) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """The centre lines of a wire object, in its own frame (z up): a whisk's meridian loops (all through both
    poles) and two latitude rings; a rod's straight line, leaning ``tilt`` from the vertical."""
    if kind == "rod":
        axis = np.array([math.sin(size["tilt"]), 0.0, math.cos(size["tilt"])])
        line = np.linspace(-0.5, 0.5, 2)[:, None] * size["length"] * axis
        return [(line, np.array([0.0, 1.0, 0.0]), False)]
    a, b = size["radius"], 0.5 * size["height"]
    theta = 2.0 * math.pi * np.arange(points) / points
    paths = []
    for k in range(size["loops"]):
        phi = math.pi * k / size["loops"]
        loop = np.column_stack([a * np.sin(theta) * math.cos(phi), a * np.sin(theta) * math.sin(phi),
                                b * np.cos(theta)])
        paths.append((loop, np.array([-math.sin(phi), math.cos(phi), 0.0]), True))
    for z in (-0.4 * b, 0.4 * b):
        r = a * math.sqrt(1.0 - (z / b) ** 2)
        ring = np.column_stack([r * np.cos(theta), r * np.sin(theta), np.full(points, z)])
        paths.append((ring, np.array([0.0, 0.0, 1.0]), True))
    return paths


def _new_wire(bpy, kind: str, size: dict):
    verts, faces = tube_mesh(wire_paths(kind, size), size["wire"])
    mesh = bpy.data.meshes.new(kind)
    mesh.from_pydata([tuple(map(float, v)) for v in verts], [], faces)
    mesh.update()
    obj = bpy.data.objects.new(kind, mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.data.shade_smooth()
    return obj


def _glass_material(bpy):
    mat = bpy.data.materials.new("glass")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.remove(nodes.get("Principled BSDF"))
    glass = nodes.new("ShaderNodeBsdfGlass")
    glass.inputs["Roughness"].default_value = 0.0
    glass.inputs["IOR"].default_value = 1.45
    links.new(glass.outputs["BSDF"], nodes.get("Material Output").inputs["Surface"])
    return mat


def _new_primitive(bpy, kind: str, size: dict):
    """Create a primitive at the origin with its size baked into the mesh (object scale stays 1)."""
    if kind == "cube":
        bpy.ops.mesh.primitive_cube_add(size=size["edge"])
    elif kind == "box":
        bpy.ops.mesh.primitive_cube_add(size=1.0)
        sx, sy, sz = size["dims"]
        bpy.context.object.data.transform(_blender_matrix(np.diag([sx, sy, sz, 1.0])))
    elif kind in ("cylinder", "glass"):
        bpy.ops.mesh.primitive_cylinder_add(vertices=48, radius=size["radius"], depth=size["height"])
    elif kind == "cone":
        bpy.ops.mesh.primitive_cone_add(vertices=48, radius1=size["radius"], radius2=0.0, depth=size["height"])
    elif kind == "sphere":
        bpy.ops.mesh.primitive_uv_sphere_add(segments=48, ring_count=24, radius=size["radius"])
    elif kind == "icosphere":
        bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=2, radius=size["radius"])
    elif kind == "torus":
        bpy.ops.mesh.primitive_torus_add(major_segments=48, minor_segments=16, major_radius=size["major"],
                                         minor_radius=size["minor"])
    elif kind == "monkey":
        bpy.ops.mesh.primitive_monkey_add(size=1.0)  # scaled to size["extent"] by _center_and_scale
    elif kind in WIRE_KINDS:
        return _new_wire(bpy, kind, size)
    else:
        raise SceneError(f"unknown primitive {kind!r}")
    obj = bpy.context.object
    if kind in ("sphere", "torus", "cylinder", "cone", "glass"):
        obj.data.shade_smooth()
    return obj


def _import_stanford(bpy, path: Path, extent: float):
    """Import a Stanford mesh, scale it so its largest side is ``extent`` metres (baked into the mesh)."""
    before = set(bpy.data.objects)
    try:
        bpy.ops.wm.obj_import(filepath=str(path), forward_axis="NEGATIVE_Z", up_axis="Y")
    except RuntimeError as exc:
        raise SceneError(f"{path}: cannot import ({exc})") from None
    new = [o for o in bpy.data.objects if o not in before and o.type == "MESH"]
    if len(new) != 1 or len(new[0].data.vertices) == 0:
        raise SceneError(f"{path}: expected one mesh, found {len(new)}")
    obj = new[0]
    obj.data.transform(obj.matrix_basis)  # bake the importer's axis conversion into the vertices
    obj.matrix_basis.identity()
    obj.data.shade_smooth()
    return obj, extent


def _mesh_bounds(obj) -> tuple[np.ndarray, np.ndarray]:
    co = np.empty(len(obj.data.vertices) * 3, dtype=np.float64)
    obj.data.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    return co.min(axis=0), co.max(axis=0)


def _center_and_scale(obj, extent: float | None) -> None:
    """Move the mesh's bounding-box centre to the object origin; scale to ``extent`` (largest side)."""
    lo, hi = _mesh_bounds(obj)
    scale = 1.0 if extent is None else extent / float(np.max(hi - lo))
    m = np.eye(4)
    m[:3, :3] *= scale
    m[:3, 3] = -scale * 0.5 * (lo + hi)
    obj.data.transform(_blender_matrix(m))


def _triangulate(bpy, obj) -> None:
    """Render exactly the triangles that go into gt/meshes (quads could be split differently)."""
    import bmesh

    bm = bmesh.new()
    bm.from_mesh(obj.data)
    bmesh.ops.triangulate(bm, faces=bm.faces[:])
    # triangulate's output order varies from run to run; sort the triangles so a seed fixes the PLY bytes.
    n = float(len(bm.verts))  # keys stay exact in a double for up to ~200k vertices
    bm.faces.sort(key=lambda f: _face_key(f, n))
    bm.to_mesh(obj.data)
    bm.free()
    obj.data.update()


def _face_key(face, n: float) -> float:
    a, b, c = sorted(v.index for v in face.verts)
    return (a * n + b) * n + c


def _add_table(bpy, geometry: dict) -> None:
    """A textured table (a slab on four legs) whose top lies at ``surface_z``; instance id 0 like the floor."""
    (sx, sy), top, thick, leg = geometry["table_size"], geometry["surface_z"], geometry["table_thickness"], \
        geometry["leg_width"]
    mat = _material(bpy, "table", "checker", 10.0, [[0.62, 0.5, 0.36], [0.4, 0.3, 0.2]], roughness=0.5)
    _add_floor_noise(bpy, mat)
    parts = [((0.0, 0.0, top - 0.5 * thick), (sx, sy, thick))]
    leg_height = top - thick
    for cx in (-1, 1):
        for cy in (-1, 1):
            parts.append(((cx * (0.5 * sx - leg), cy * (0.5 * sy - leg), 0.5 * leg_height), (leg, leg, leg_height)))
    for k, (centre, dims) in enumerate(parts):
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=centre)
        part = bpy.context.object
        part.name = "table_top" if k == 0 else f"table_leg_{k}"
        part.data.transform(_blender_matrix(np.diag([*dims, 1.0])))
        part.data.materials.append(mat)


def build_scene(bpy, objects: list[dict], rng: np.random.Generator, layout: str = "room"):
    """Floor, walls, (table,) light, world and objects; returns the Blender objects in the order of ``objects``."""
    from mathutils import Matrix

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    geometry = LAYOUTS[layout]
    half, wall_height = geometry["floor_half_size"], geometry["wall_height"]

    # Floor and four walls (and the table), all with instance id 0.
    bpy.ops.mesh.primitive_plane_add(size=2.0 * half)
    floor = bpy.context.object
    floor.name = "floor"
    floor.data.materials.append(_material(bpy, "floor", "checker", 6.0, [[0.55, 0.42, 0.3], [0.3, 0.22, 0.15]],
                                          roughness=0.6))
    _add_floor_noise(bpy, floor.data.materials[0])
    wall_colors = [list(map(float, rng.uniform(0.3, 0.8, size=3))) for _ in range(2)]
    for k in range(4):
        bpy.ops.mesh.primitive_plane_add(size=1.0)
        wall = bpy.context.object
        wall.name = f"wall_{k}"
        wall.data.transform(_blender_matrix(np.diag([2.0 * half, wall_height, 1.0, 1.0])))
        angle = k * math.pi / 2.0
        wall.matrix_world = (Matrix.Rotation(angle, 4, "Z") @ Matrix.Translation((0.0, half, 0.5 * wall_height))
                             @ Matrix.Rotation(math.pi / 2.0, 4, "X"))
        wall.data.materials.append(_material(bpy, f"wall_{k}", "brick", 3.0, wall_colors, roughness=0.8))
        if layout == "tabletop":
            _add_floor_noise(bpy, wall.data.materials[0])  # distant walls need fine texture to be seen in depth
    if layout == "tabletop":
        _add_table(bpy, geometry)

    # Light: a soft sun from a random direction plus a dim sky.
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", type="SUN"))
    sun.data.energy = 3.0
    sun.data.angle = math.radians(8.0)
    sun.rotation_euler = (math.radians(rng.uniform(25.0, 45.0)), 0.0, rng.uniform(0.0, 2.0 * math.pi))
    scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background")
    background.inputs["Color"].default_value = (0.7, 0.75, 0.8, 1.0)
    background.inputs["Strength"].default_value = 0.6
    scene.world = world

    blender_objects = []
    glass_mat = None
    for spec in objects:
        if spec["source"]:
            obj, extent = _import_stanford(bpy, Path(spec["source"]), spec["size"]["extent"])
            _center_and_scale(obj, extent)
        else:
            obj = _new_primitive(bpy, spec["category"], spec["size"])
            _center_and_scale(obj, spec["size"].get("extent"))  # only the monkey's size is an extent
        _triangulate(bpy, obj)
        obj.name = spec["name"]
        obj.data.name = spec["name"]
        obj.pass_index = spec["instance_id"]
        if spec["transparent"]:
            glass_mat = glass_mat or _glass_material(bpy)
            obj.data.materials.append(glass_mat)
        elif spec.get("material") == "metal":
            obj.data.materials.append(_metal_material(bpy, spec["name"], spec["colors"][0]))
        else:
            obj.data.materials.append(_material(bpy, spec["name"], spec["texture"], spec["texture_scale"],
                                                spec["colors"]))
        lo, hi = _mesh_bounds(obj)
        x, y = spec["xy"]
        obj.matrix_world = (Matrix.Translation((x, y, geometry["surface_z"] - lo[2]))
                            @ Matrix.Rotation(spec["yaw"], 4, "Z"))
        blender_objects.append(obj)
    return blender_objects


def _add_floor_noise(bpy, mat) -> None:
    """Modulate the floor's checker with fine noise so every patch of it has texture."""
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    mix = next(n for n in nodes if n.bl_idname == "ShaderNodeMix")
    bsdf = nodes.get("Principled BSDF")
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 40.0
    noise.inputs["Detail"].default_value = 8.0
    links.new(nodes.get("Texture Coordinate").outputs["Object"], noise.inputs["Vector"])
    multiply = nodes.new("ShaderNodeMix")
    multiply.data_type = "RGBA"
    multiply.blend_type = "MULTIPLY"
    multiply.inputs["Factor"].default_value = 0.8
    links.new(mix.outputs["Result"], multiply.inputs["A"])
    links.new(noise.outputs["Color"], multiply.inputs["B"])
    links.new(multiply.outputs["Result"], bsdf.inputs["Base Color"])


def add_camera(bpy, width: int, height: int):
    scene = bpy.context.scene
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.data.sensor_fit = "HORIZONTAL"
    cam.data.sensor_width = SENSOR_WIDTH_MM
    cam.data.lens = 0.5 * SENSOR_WIDTH_MM / math.tan(0.5 * math.radians(HORIZONTAL_FOV_DEG))
    cam.data.clip_start = 0.01
    cam.data.clip_end = 100.0
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    focal_px = cam.data.lens / SENSOR_WIDTH_MM * width
    return cam, focal_px


def setup_render(bpy, args: argparse.Namespace, gt_dir: Path):
    """Cycles on the CPU; a compositor that writes the Depth and Object Index passes to one float EXR."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.seed = args.seed
    cycles.use_adaptive_sampling = False
    cycles.max_bounces = 6
    cycles.diffuse_bounces = 2
    cycles.glossy_bounces = 2
    cycles.transmission_bounces = 6
    cycles.transparent_max_bounces = 4
    cycles.caustics_reflective = False
    cycles.caustics_refractive = False
    scene.render.use_persistent_data = True  # keep the BVH between the frames
    if args.threads:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = args.threads
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    view_layer = scene.view_layers[0]
    view_layer.use_pass_z = True
    view_layer.use_pass_object_index = True

    tree = bpy.data.node_groups.new("neurallabel_gt", "CompositorNodeTree")
    scene.compositing_node_group = tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    combine = tree.nodes.new("CompositorNodeCombineColor")  # R = z-depth, G = object index
    tree.links.new(layers.outputs["Depth"], combine.inputs["Red"])
    tree.links.new(layers.outputs["Object Index"], combine.inputs["Green"])
    file_out = tree.nodes.new("CompositorNodeOutputFile")
    file_out.format.media_type = "IMAGE"
    file_out.format.file_format = "OPEN_EXR"
    file_out.format.color_depth = "32"
    file_out.format.color_mode = "RGBA"
    file_out.format.exr_codec = "NONE"
    file_out.save_as_render = False
    file_out.directory = str(gt_dir)
    file_out.file_output_items.new("RGBA", "pass")
    tree.links.new(combine.outputs["Image"], file_out.inputs["pass"])
    return file_out


def _set_rgb_mode(bpy, args) -> None:
    scene = bpy.context.scene
    scene.render.use_compositing = False
    scene.cycles.samples = args.samples
    scene.cycles.use_denoising = not args.no_denoise
    if not args.no_denoise:
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
        scene.cycles.denoising_quality = "FAST"  # ~3x cheaper than HIGH; enough at 320x240
    scene.cycles.pixel_filter_type = "BLACKMAN_HARRIS"
    scene.cycles.filter_width = 1.5


def _set_truth_mode(bpy) -> None:
    """1 sample with a 0.01 px filter: the passes Cycles writes from the first sample sit on pixel centres."""
    scene = bpy.context.scene
    scene.render.use_compositing = True
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 0.01


def _save_png(bpy, image, path: Path, depth: str, mode: str) -> None:
    settings = bpy.context.scene.render.image_settings
    settings.media_type = "IMAGE"
    settings.file_format = "PNG"
    settings.color_depth = depth
    settings.color_mode = mode
    settings.compression = 15
    image.save_render(str(path), scene=bpy.context.scene)


def _read_truth_exr(bpy, path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(z_depth float32 (H, W) with inf where nothing was hit, instance ids uint16 (H, W))."""
    image = bpy.data.images.load(str(path))
    try:
        if tuple(image.size) != (width, height):
            raise SceneError(f"{path}: pass image is {tuple(image.size)}, expected {(width, height)}")
        pixels = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    pixels = pixels.reshape(height, width, 4)[::-1]  # Blender stores the bottom row first
    z_depth = pixels[..., 0].copy()
    z_depth[z_depth > BACKGROUND_DEPTH] = np.inf
    ids = np.rint(pixels[..., 1]).astype(np.uint16)
    return z_depth, ids


def _write_instance_png(bpy, path: Path, ids: np.ndarray) -> None:
    """Save uint16 ids as a 16-bit grey PNG through Blender (exact: a Non-Color float buffer of id/65535)."""
    height, width = ids.shape
    image = bpy.data.images.new("instance_ids", width, height, alpha=False, float_buffer=True)
    try:
        image.colorspace_settings.name = "Non-Color"
        pixels = np.ones((height, width, 4), dtype=np.float32)
        pixels[..., :3] = (ids[::-1].astype(np.float32) / 65535.0)[..., None]
        image.pixels.foreach_set(pixels.ravel())
        _save_png(bpy, image, path, "16", "BW")
    finally:
        bpy.data.images.remove(image)


def _export_ply(bpy, obj, path: Path) -> None:
    """The object's triangles in its own frame, through Blender's PLY exporter (world transform set aside)."""
    saved = obj.matrix_world.copy()
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    obj.matrix_world.identity()
    bpy.context.view_layer.update()
    try:
        bpy.ops.wm.ply_export(filepath=str(path), export_selected_objects=True, apply_modifiers=False,
                              export_normals=False, export_uv=False, export_colors="NONE",
                              export_attributes=False, export_triangulated_mesh=True, ascii_format=False,
                              forward_axis="Y", up_axis="Z", global_scale=1.0)
    finally:
        obj.matrix_world = saved
        obj.select_set(False)
        bpy.context.view_layer.update()


def _progress(done: int, total: int, stage: str) -> None:
    print(json.dumps({"event": "progress", "done": done, "total": total, "stage": stage}), flush=True)


def _rounded(matrix) -> list[list[float]]:
    return [[float(round(v, 9)) for v in row] for row in np.asarray(matrix, dtype=np.float64)]


def generate(args: argparse.Namespace, mesh_files: list[Path], staging: Path) -> dict:
    """Build, render and write the whole dataset into ``staging``."""
    import bpy

    clock = time.monotonic()
    rng = np.random.default_rng(args.seed)
    objects = plan_objects(rng, args.objects, mesh_files, args.glass)
    poses = plan_cameras(rng, args.views, args.layout)
    # Clutter draws from its own stream: a scene without clutter stays what the seed made before.
    test = held_out_frames(args.views, args.test_every)
    objects += plan_clutter(np.random.default_rng([args.seed, 1]), objects, [poses[i] for i in test],
                            args.clutter, LAYOUTS[args.layout]["surface_z"], args.height / args.width)
    if args.thin:  # its own stream too: --thin adds objects, it does not move the others
        objects += plan_thin(np.random.default_rng([args.seed, 2]), objects)
    if args.metal:
        make_metal(objects)
    blender_objects = build_scene(bpy, objects, rng, args.layout)
    cam, focal_px = add_camera(bpy, args.width, args.height)

    for sub in ("images", "gt/depth", "gt/instance", "gt/meshes"):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    exr_dir = Path(tempfile.mkdtemp(prefix="passes-", dir=staging))
    file_out = setup_render(bpy, args, exr_dir)

    # Meshes and objects.json first (cheap), then the renders.
    records = []
    for spec, obj in zip(objects, blender_objects):
        mesh_rel = f"gt/meshes/{spec['name']}.ply"
        _export_ply(bpy, obj, staging / mesh_rel)
        lo, hi = _mesh_bounds(obj)
        pose = np.array(obj.matrix_world, dtype=np.float64)
        box_pose = pose @ _translation(0.5 * (lo + hi))
        records.append({
            "name": spec["name"], "category": spec["category"], "category_id": spec["category_id"],
            "instance_id": spec["instance_id"], "mesh": mesh_rel, "pose": _rounded(pose),
            "box": {"pose": _rounded(box_pose), "size": [float(round(v, 9)) for v in (hi - lo)]},
            "transparent": spec["transparent"], "annotated": spec.get("annotated", True),
            **({"material": spec["material"]} if "material" in spec else {}),  # --thin / --metal scenes only
            **({"in_front_of": spec["in_front_of"], "in_front_in_frame": test[spec["in_front_in_view"]]}
               if "in_front_of" in spec else {}),
        })

    seconds = {"setup": time.monotonic() - clock}
    seconds.update(render_views(bpy, args, cam, file_out, exr_dir, poses, staging, ""))
    targets, band = [], target_band(args)
    if args.target_views:
        # a stream of its own: the scene and its cameras do not depend on the target plan
        targets = plan_target_cameras(np.random.default_rng([args.seed, 3]), args.target_views, args.layout, band)
        for sub in ("images", "gt/depth", "gt/instance"):
            (staging / "target" / sub).mkdir(parents=True, exist_ok=True)
        seconds.update(render_views(bpy, args, cam, file_out, exr_dir, targets, staging / "target", "target "))
    shutil.rmtree(exr_dir)
    _stop_if_terminated()

    transforms = transforms_json(args, focal_px, poses)
    (staging / "transforms.json").write_text(json.dumps(transforms, indent=1))
    geometry = LAYOUTS[args.layout]
    background = {"layout": args.layout, "floor_z": 0.0, "floor_half_size": geometry["floor_half_size"],
                  "wall_height": geometry["wall_height"]}
    if args.layout == "tabletop":
        background["table"] = {"top_z": geometry["surface_z"], "size": list(geometry["table_size"]),
                               "centre": [0.0, 0.0]}
    truth = {"units": "m", "objects": records, "background": background}
    (staging / "gt" / "objects.json").write_text(json.dumps(truth, indent=1))
    if targets:
        target = transforms_json(args, focal_px, targets, every_frame_test=True)
        target["generator"]["target"] = {"views": args.target_views, "seed_stream": [args.seed, 3],
                                         **{k: list(v) for k, v in band.items()}}
        (staging / "target" / "transforms.json").write_text(json.dumps(target, indent=1))
        shared_meshes = [{**r, "mesh": f"../{r['mesh']}"} for r in records]  # the scene's own mesh files
        (staging / "target" / "gt" / "objects.json").write_text(
            json.dumps({**truth, "objects": shared_meshes}, indent=1))
    return {"objects": len(records), "views": args.views, "target_views": len(targets),
            "stage_seconds": {k: round(v, 2) for k, v in seconds.items()}}


def render_views(bpy, args: argparse.Namespace, cam, file_out, exr_dir: Path, poses: list[np.ndarray],
                 root: Path, stage: str) -> dict[str, float]:
    """Render RGB, then the truth passes (z-depth, instance ids) of ``poses`` into ``root``'s images/ and gt/;
    returns the seconds of each."""
    seconds = {}
    clock = time.monotonic()
    _set_rgb_mode(bpy, args)
    render_result = None
    for i, pose in enumerate(poses):
        _stop_if_terminated()
        cam.matrix_world = _blender_matrix(pose)
        bpy.ops.render.render()
        render_result = render_result or bpy.data.images["Render Result"]
        _save_png(bpy, render_result, root / "images" / f"{i:06d}.png", "8", "RGB")
        _progress(i + 1, len(poses), f"{stage}render rgb")

    seconds[f"{stage}rgb"] = time.monotonic() - clock
    clock = time.monotonic()
    _set_truth_mode(bpy)
    for i, pose in enumerate(poses):
        _stop_if_terminated()
        cam.matrix_world = _blender_matrix(pose)
        file_out.file_name = f"{i:06d}_"
        bpy.ops.render.render()
        exr = exr_dir / f"{i:06d}_pass.exr"
        if not exr.is_file():
            raise SceneError(f"Blender's compositor did not write {exr}")
        z_depth, ids = _read_truth_exr(bpy, exr, args.width, args.height)
        exr.unlink()
        np.save(root / "gt" / "depth" / f"{i:06d}.npy", z_depth.astype(np.float32))
        _write_instance_png(bpy, root / "gt" / "instance" / f"{i:06d}.png", ids)
        _progress(i + 1, len(poses), f"{stage}render truth")  # ~10x faster per frame than rgb: its own stage
    seconds[f"{stage}truth"] = time.monotonic() - clock
    return seconds


def transforms_json(args: argparse.Namespace, focal_px: float, poses: list[np.ndarray], *,
                    every_frame_test: bool = False) -> dict:
    """transforms.json in ``args.format``: instant-ngp's (a per-frame ``split``, ``camera_angle_x``,
    ``aabb_scale`` when asked) or nerfstudio's (intrinsics at the top, the split as file lists, as nerfstudio's
    dataparser reads them: it asks for ``val_filenames`` while training, so val holds the test frames).
    ``every_frame_test``: every frame in the test split (a target set is never trained on)."""
    files = [f"images/{i:06d}.png" for i in range(len(poses))]
    split = ["test" if every_frame_test or (args.test_every and i % args.test_every == 0) else "train"
             for i in range(len(poses))]
    data: dict = {
        "camera_model": "PINHOLE",
        "w": args.width, "h": args.height,
        "fl_x": focal_px, "fl_y": focal_px,
        "cx": args.width / 2.0, "cy": args.height / 2.0,  # Blender's principal point: the image centre
    }
    if args.format == "instant-ngp":
        data["camera_angle_x"] = math.radians(HORIZONTAL_FOV_DEG)
        if args.aabb_scale is not None:
            data["aabb_scale"] = args.aabb_scale
    data["generator"] = {"script": "make_scene.py", "seed": args.seed, "samples": args.samples,
                         "layout": args.layout, "clutter": args.clutter}
    if args.format == "instant-ngp":
        data["frames"] = [{"file_path": f, "transform_matrix": _rounded(pose), "split": s}
                          for f, pose, s in zip(files, poses, split)]
    else:
        data["frames"] = [{"file_path": f, "transform_matrix": _rounded(pose)} for f, pose in zip(files, poses)]
        data["train_filenames"] = [f for f, s in zip(files, split) if s == "train"]
        data["val_filenames"] = data["test_filenames"] = [f for f, s in zip(files, split) if s == "test"]
    return data


def _translation(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def _blender_matrix(pose: np.ndarray):
    """A mathutils Matrix from a row-major numpy 4x4 (nested lists would be read column-major by RNA)."""
    from mathutils import Matrix

    return Matrix([list(map(float, row)) for row in pose])


_TERMINATED: list[int] = []


def _terminate(signum, frame) -> None:
    # Only note it: raising here could happen inside a Python call nested in Blender's C code, where
    # SystemExit ends the process at once and skips the cleanup. The render loops check between frames.
    _TERMINATED.append(signum)


def _stop_if_terminated() -> None:
    if _TERMINATED:
        raise SystemExit(128 + _TERMINATED[0])  # unwinds to main(), which removes the staging folder


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(script_argv(argv))  # argparse: usage + exit 2 on malformed arguments
    try:
        mesh_files = check_args(args)
        out = args.out.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            summary = generate(args, mesh_files, staging)
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    except SceneError as exc:
        print(f"make_scene.py: error: {exc}", file=sys.stderr, flush=True)
        return 2
    seconds = time.monotonic() - start
    print(json.dumps({"event": "result", "out": str(out), "seconds": round(seconds, 2), **summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
