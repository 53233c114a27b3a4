"""Dataset <-> Blender cameras.

Each dataset frame becomes a Blender camera parented to a root empty "NeuralLabel Scene"; the root's
matrix maps the dataset frame into Blender's world (the artist may move, rotate and scale it).

Blender's camera model (``BKE_camera_params_compute_viewplane``), for an image of ``W x H`` pixels with
pixel aspect ``xasp, yasp`` (``ycor = yasp / xasp``), sensor size ``S`` and focal length ``lens`` (mm):
- the sensor fit picks the image dimension the sensor spans: horizontal when ``W * xasp >= H * yasp``
  (what AUTO does), else vertical; ``viewfac = W`` (horizontal) or ``ycor * H`` (vertical);
- a pixel is ``S / lens / viewfac`` wide at unit depth and ``ycor`` times that high, so
  ``fx = lens * viewfac / S`` and ``fy = fx / ycor``;
- lens shift moves the frame by ``shift * viewfac`` pixel widths: the optical axis lands on
  ``cx = W / 2 - shift_x * viewfac`` and ``cy = H / 2 + shift_y * viewfac / ycor`` (rows grow downwards
  while Blender's y grows upwards). Shift is thus in units of the fitted (larger) sensor dimension.
Blender cameras have no lens distortion: it is kept in custom properties, with the exact intrinsics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..core.geometry.cameras import Intrinsics
from ..core.data.dataset import Dataset, Frame
from ..core.errors import NeuralLabelError

ROOT_NAME = "NeuralLabel Scene"
SENSOR_MM = 36.0  # any value works; 36 mm keeps focal lengths familiar to photographers

# Custom properties on each camera object (doubles: exact, unlike Blender's float32 camera settings).
PROP_FRAME = "neurallabel_frame"
PROP_IMAGE = "neurallabel_image"
PROP_SPLIT = "neurallabel_split"
PROP_INTRINSICS = "neurallabel_intrinsics"  # [width, height, fx, fy, cx, cy]
PROP_MODEL = "neurallabel_camera_model"
PROP_DISTORTION = "neurallabel_distortion"


@dataclass(frozen=True)
class BlenderCameraSettings:
    """The Blender camera + render settings that reproduce a pinhole camera exactly."""

    resolution_x: int
    resolution_y: int
    pixel_aspect_x: float
    pixel_aspect_y: float
    sensor_fit: str  # "HORIZONTAL" | "VERTICAL"
    sensor_width: float
    sensor_height: float
    lens: float
    shift_x: float
    shift_y: float


def blender_camera_settings(intrinsics: Intrinsics) -> BlenderCameraSettings:
    """Blender settings for a pinhole camera (distortion aside); see the module docstring for the model."""
    w, h = intrinsics.width, intrinsics.height
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    # fy / fx = xasp / yasp; Blender wants both aspects >= 1.
    if fy >= fx:
        xasp, yasp = fy / fx, 1.0
    else:
        xasp, yasp = 1.0, fx / fy
    ycor = yasp / xasp
    horizontal = w * xasp >= h * yasp
    viewfac = w if horizontal else ycor * h
    return BlenderCameraSettings(
        resolution_x=w, resolution_y=h, pixel_aspect_x=xasp, pixel_aspect_y=yasp,
        sensor_fit="HORIZONTAL" if horizontal else "VERTICAL", sensor_width=SENSOR_MM, sensor_height=SENSOR_MM,
        lens=fx * SENSOR_MM / viewfac,
        shift_x=(0.5 * w - cx) / viewfac,
        shift_y=(cy - 0.5 * h) * ycor / viewfac,
    )


def pinhole_from_blender(settings: BlenderCameraSettings) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of Blender camera settings: the inverse of :func:`blender_camera_settings`."""
    w, h = settings.resolution_x, settings.resolution_y
    ycor = settings.pixel_aspect_y / settings.pixel_aspect_x
    horizontal = settings.sensor_fit == "HORIZONTAL"
    sensor = settings.sensor_width if horizontal else settings.sensor_height
    viewfac = w if horizontal else ycor * h
    fx = settings.lens * viewfac / sensor
    return fx, fx / ycor, 0.5 * w - settings.shift_x * viewfac, 0.5 * h + settings.shift_y * viewfac / ycor


# --- Blender side ---------------------------------------------------------------------------------------


def apply_render_settings(scene: bpy.types.Scene, settings: BlenderCameraSettings) -> None:
    """Set the scene's (single) output resolution and pixel aspect to a camera's."""
    render = scene.render
    render.resolution_x = settings.resolution_x
    render.resolution_y = settings.resolution_y
    render.resolution_percentage = 100
    render.pixel_aspect_x = settings.pixel_aspect_x
    render.pixel_aspect_y = settings.pixel_aspect_y


def camera_intrinsics(obj: bpy.types.Object) -> Intrinsics:
    """The exact intrinsics (incl. distortion) recorded on an imported camera object."""
    values = obj.get(PROP_INTRINSICS)
    if values is None:
        raise NeuralLabelError(f"camera {obj.name!r} was not imported by NeuralLabel (no intrinsics recorded)")
    width, height, fx, fy, cx, cy = (float(v) for v in values)
    return Intrinsics(int(width), int(height), fx, fy, cx, cy, str(obj.get(PROP_MODEL, "PINHOLE")),
                      tuple(float(k) for k in obj.get(PROP_DISTORTION, ())))


def camera_settings_of(obj: bpy.types.Object) -> BlenderCameraSettings:
    return blender_camera_settings(camera_intrinsics(obj))


def dataset_cameras(root: bpy.types.Object) -> list[bpy.types.Object]:
    """The imported cameras under ``root``, in dataset frame order."""
    cameras = [c for c in root.children if c.type == "CAMERA" and PROP_FRAME in c]
    return sorted(cameras, key=lambda c: int(c[PROP_FRAME]))


def _configure_camera(data: bpy.types.Camera, settings: BlenderCameraSettings, display_size: float) -> None:
    data.type = "PERSP"
    data.lens_unit = "MILLIMETERS"
    data.sensor_fit = settings.sensor_fit
    data.sensor_width = settings.sensor_width
    data.sensor_height = settings.sensor_height
    data.lens = settings.lens
    data.shift_x = settings.shift_x
    data.shift_y = settings.shift_y
    data.display_size = display_size
    data.clip_start = 0.01 * display_size
    data.clip_end = 1000.0 * display_size


def add_camera(collection: bpy.types.Collection, root: bpy.types.Object | None, name: str, data_name: str,
               intrinsics: Intrinsics, cam_to_data: np.ndarray, display_size: float) -> bpy.types.Object:
    """A camera object in ``collection`` with ``intrinsics``, parented to ``root`` at ``cam_to_data``: how every
    NeuralLabel camera (dataset or synthetic) is placed, so that moving the root moves them all."""
    data = bpy.data.cameras.new(data_name)
    _configure_camera(data, blender_camera_settings(intrinsics), display_size)
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    obj.parent = root
    obj.matrix_parent_inverse = Matrix.Identity(4)
    # transform_matrix is an OpenGL camera-to-world pose: exactly Blender's camera axes.
    obj.matrix_basis = Matrix([list(row) for row in cam_to_data])
    return obj


def _record_frame(obj: bpy.types.Object, frame: Frame) -> None:
    i = frame.intrinsics
    obj[PROP_FRAME] = int(frame.index)
    obj[PROP_IMAGE] = str(frame.image_path)
    obj[PROP_SPLIT] = frame.split
    obj[PROP_INTRINSICS] = [float(i.width), float(i.height), i.fx, i.fy, i.cx, i.cy]
    obj[PROP_MODEL] = i.model
    obj[PROP_DISTORTION] = [float(k) for k in i.distortion]


def _set_background(data: bpy.types.Camera, image_path: Path) -> bpy.types.Image:
    # Loading is lazy: Blender reads the pixels only when the camera view draws them.
    image = bpy.data.images.load(str(image_path), check_existing=True)
    data.show_background_images = True
    background = data.background_images.new()
    background.image = image
    background.frame_method = "STRETCH"  # the photo fills the camera frame exactly
    background.alpha = 1.0
    background.display_depth = "BACK"
    return image


def create_scene(context: bpy.types.Context, dataset: Dataset, name: str = ROOT_NAME) -> bpy.types.Object:
    """Create the root empty and one camera per frame in a new collection; returns the root.

    On any failure everything created so far is removed again, so the scene is left unchanged.
    """
    scene = context.scene
    positions = np.array([f.cam_to_data[:3, 3] for f in dataset.frames])
    extent = float(np.max(np.ptp(positions, axis=0))) if len(positions) > 1 else 1.0
    display_size = max(0.05 * extent, 1e-3)
    created_objects: list[bpy.types.Object] = []
    created_cameras: list[bpy.types.Camera] = []
    images_before = set(bpy.data.images)
    markers: list[bpy.types.TimelineMarker] = []
    collection = bpy.data.collections.new(name)
    try:
        scene.collection.children.link(collection)
        root = bpy.data.objects.new(name, None)
        created_objects.append(root)
        root.empty_display_type = "ARROWS"
        root.empty_display_size = 0.2 * max(extent, 1e-3)
        collection.objects.link(root)
        for frame in dataset.frames:
            obj = add_camera(collection, root, f"cam {frame.name}", f"{name} {frame.name}", frame.intrinsics,
                             frame.cam_to_data, display_size)
            created_objects.append(obj)
            created_cameras.append(obj.data)
            _record_frame(obj, frame)
            _set_background(obj.data, frame.image_path)
            marker = scene.timeline_markers.new(obj.name, frame=int(frame.index))
            marker.camera = obj  # scrubbing the timeline looks through each photo's camera
            markers.append(marker)
        first = dataset.frames[0]
        apply_render_settings(scene, blender_camera_settings(first.intrinsics))
        scene.camera = created_objects[1]
        props = scene.neurallabel
        props.dataset_path = str(dataset.path)
        props.root = root
        props.frame_start = 0
        props.frame_end = max(f.index for f in dataset.frames)
        return root
    except Exception:
        for marker in markers:
            scene.timeline_markers.remove(marker)
        for obj in created_objects:
            bpy.data.objects.remove(obj)
        for data in created_cameras:
            bpy.data.cameras.remove(data)
        for image in set(bpy.data.images) - images_before:
            bpy.data.images.remove(image)
        bpy.data.collections.remove(collection)
        raise


def frame_from_camera(obj: bpy.types.Object) -> tuple[int, np.ndarray, Intrinsics]:
    """(frame index, camera-to-world in Blender's world, intrinsics) of an imported camera."""
    m = np.array([list(row) for row in obj.matrix_world], dtype=np.float64)
    return int(obj[PROP_FRAME]), m, camera_intrinsics(obj)


def root_matrix(root: bpy.types.Object) -> np.ndarray:
    """``world_from_data``: the root empty's world matrix (a similarity the artist sets)."""
    return np.array([list(row) for row in root.matrix_world], dtype=np.float64)


def scene_root(scene: bpy.types.Scene) -> bpy.types.Object | None:
    """The root empty: the scene's ``root`` property, or the object named "NeuralLabel Scene"."""
    root = scene.neurallabel.root
    if root is None:
        root = bpy.data.objects.get(ROOT_NAME)
    return root


def world_from_data(scene: bpy.types.Scene) -> np.ndarray:
    """The root empty's world matrix (identity without a root)."""
    root = scene_root(scene)
    return root_matrix(root) if root is not None else np.eye(4)


def named_collection(scene: bpy.types.Scene, name: str,
                     parent: bpy.types.Collection | None = None) -> bpy.types.Collection:
    """The collection ``name`` of this scene, created and linked under ``parent`` (default: the scene's
    own collection) when missing."""
    collection = next((c for c in scene.collection.children_recursive if c.name == name), None)
    if collection is None:
        collection = bpy.data.collections.new(name)
        (parent or scene.collection).children.link(collection)
    return collection


def absolute_path(path: str) -> str:
    """A path property's value (``//`` is the .blend's folder) as an absolute path; "" stays ""."""
    return str(Path(bpy.path.abspath(path)).resolve()) if path else ""


# --- keeping the scene's resolution on the active camera's --------------------------------------------


def marker_camera(scene: bpy.types.Scene) -> bpy.types.Object | None:
    """The camera the timeline markers make active at the current frame (Blender's rule: the last
    camera marker at or before the frame, else the first one), or ``scene.camera`` without markers."""
    markers = sorted((m for m in scene.timeline_markers if m.camera is not None), key=lambda m: m.frame)
    if not markers:
        return scene.camera
    before = [m for m in markers if m.frame <= scene.frame_current]
    return (before[-1] if before else markers[0]).camera


def sync_render_to_camera(scene: bpy.types.Scene) -> bool:
    """Give the scene the active imported camera's resolution / pixel aspect; True when it changed.

    Blender has one resolution per scene, while photos may differ in size: without this, looking through
    a camera whose photo has another size would show the wrong frame.
    """
    # scene.frame_set() switches the marker camera only after frame_change_post: ask the markers.
    camera = marker_camera(scene)
    if camera is None or PROP_INTRINSICS not in camera:
        return False
    settings = camera_settings_of(camera)
    render = scene.render
    current = (render.resolution_x, render.resolution_y, render.resolution_percentage,
               render.pixel_aspect_x, render.pixel_aspect_y)
    wanted = (settings.resolution_x, settings.resolution_y, 100,
              settings.pixel_aspect_x, settings.pixel_aspect_y)
    if current[:3] == wanted[:3] and all(abs(a - b) < 1e-6 * b for a, b in zip(current[3:], wanted[3:])):
        return False
    apply_render_settings(scene, settings)
    return True


@bpy.app.handlers.persistent
def _sync_on_frame_change(scene: bpy.types.Scene, _depsgraph: bpy.types.Depsgraph | None = None) -> None:
    # Timeline markers switch scene.camera to each photo's camera as the frame changes.
    if scene is not None:
        sync_render_to_camera(scene)


def register() -> None:
    bpy.app.handlers.frame_change_post.append(_sync_on_frame_change)


def unregister() -> None:
    handlers = bpy.app.handlers.frame_change_post
    for h in [h for h in handlers if getattr(h, "__name__", "") == _sync_on_frame_change.__name__
              and getattr(h, "__module__", "") == _sync_on_frame_change.__module__]:
        handlers.remove(h)
