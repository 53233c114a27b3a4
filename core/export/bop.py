"""BOP scenewise writer (bop_toolkit conventions), everything under ``DIR/bop``.

``camera.json``; ``models/obj_XXXXXX.ply`` in mm with ``models_info.json``; one scene ``train/000000`` with
``rgb/``, ``depth/`` (uint16 PNG, ``depth * depth_scale`` = mm), ``mask/`` and ``mask_visib/``
(``{im_id:06d}_{gt_id:06d}.png``, 0/255), ``scene_camera.json``, ``scene_gt.json``, ``scene_gt_info.json`` and
``scene_gt_coco.json`` (COCO as bop_toolkit's calc_gt_coco writes it: RLE of ``mask_visib``, amodal ``bbox_obj``,
``ignore`` where visib_fract < 0.1, image ids = im_ids); ``models_eval/`` repeats ``models/`` (vertex normals).
``im_id`` = the frame's index in the dataset; ``gt_id`` = the instance's position in the frame's ``scene_gt``
list (sorted by instance_id, which is also stored); ``obj_id`` (:func:`object_ids`): a mesh object's category_id
(BOP has one model per obj_id: its category's lowest instance's mesh); a box object with its own extracted mesh
gets its own obj_id, after every category_id: ``max(category_id) + k`` for the spec's k-th box object by
instance_id (k from 1), so an obj_id depends on the spec alone; a box object without a mesh keeps its
category_id. ``scene_gt_coco.json`` uses the obj_ids as its category ids (a box object's category is named
after the object, with its category as ``supercategory``).
Poses are model->camera in OpenCV camera axes, translations in mm; ``cam_K`` uses the OpenCV pixel
convention (top-left pixel centre at 0, 0). A synthetic view (no photo) gets no ``rgb/`` file; an ``rgb/`` file
is ``.jpg`` (a JPEG photo, copied) or ``.png`` (a PNG copied, anything else re-encoded).

BOP is a pinhole format: for a camera with lens distortion, ``cam_K`` is a new pinhole matrix (OpenCV's optimal
new camera matrix, :mod:`.undistort`) and ``depth``, ``mask``, ``mask_visib``, ``scene_gt_info`` and
``scene_gt_coco`` are the labels of that pinhole camera, computed in it directly (its rays cast, the field asked
along them: no resampling, so every model vertex projected with ``cam_K`` lands in its mask within a pixel);
only ``rgb`` is the photo resampled (bilinear). Poses stay (same rotation and optical axis). An object that the
pinhole camera's narrower view misses is absent from that frame's BOP lists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..geometry.view import View
from ..errors import NeuralLabelError
from ..io.atomic import json_bytes, png_bytes
from .context import ExportContext
from .encoded import depth_mm, encode_with_masks, mask_png, visible_rle, world_to_camera
from .undistort import PinholeMaps, pinhole_maps, pinhole_view, remap

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels

ROOT = "bop"
#: candidate depth scales (mm per stored unit), finest first: each frame takes the finest one that holds its
#: farthest depth in uint16, so a depth map can never overflow.
#: BOP's models and its evaluation models (the same meshes here: no resampling).
MODEL_FOLDERS = ("models", "models_eval")
#: bop_toolkit's calc_gt_coco: an instance less visible than this is marked ``ignore``.
COCO_IGNORE_VISIB_FRACT = 0.1
DEPTH_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0, 10000.0)


def depth_scale_for(max_depth_mm: float) -> float:
    for scale in DEPTH_SCALES:
        if max_depth_mm / scale <= 65535 - 1:
            return scale
    return float(np.ceil(max_depth_mm / 65534.0))


def depth_png(depth_mm: np.ndarray, scale: float) -> np.ndarray:
    """uint16 depth image: ``round(depth_mm / scale)``, 0 where there is no depth (NaN)."""
    stored = np.divide(depth_mm, scale)
    np.rint(stored, out=stored)
    stored[~np.isfinite(depth_mm)] = 0.0
    return np.clip(stored, 0, 65535, out=stored).astype(np.uint16)


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values).ravel()]


def model_info(mesh_mm) -> dict:
    """models_info.json entry: diameter (largest vertex distance) and the axis-aligned bounds, in mm."""
    from scipy.spatial.distance import pdist

    vertices = np.asarray(mesh_mm.vertices, dtype=np.float64)
    try:
        hull = np.asarray(mesh_mm.convex_hull.vertices, dtype=np.float64)
    except Exception:
        hull = vertices
    diameter = float(pdist(hull).max()) if len(hull) > 1 else 0.0
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    return {"diameter": diameter, "min_x": float(lo[0]), "min_y": float(lo[1]), "min_z": float(lo[2]),
            "size_x": float(hi[0] - lo[0]), "size_y": float(hi[1] - lo[1]), "size_z": float(hi[2] - lo[2])}


#: BOP reads rgb/ images as .png or .jpg: a JPEG keeps its bytes under .jpg, anything else becomes a PNG.
JPEG_SUFFIXES = (".jpg", ".jpeg")


def rgb_suffix(image_suffix: str) -> str:
    return ".jpg" if image_suffix.lower() in JPEG_SUFFIXES else ".png"


def _read_photo(path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # keeps 16-bit and alpha; BGR in, BGR out
    if image is None:
        raise NeuralLabelError(f"{path}: not a readable image", field="image")
    return image


def rgb_file(image_path, maps: "PinholeMaps | None") -> tuple[str, bytes]:
    """(suffix, bytes) of a view's ``rgb/`` file: the photo's own bytes where BOP reads them as they are."""
    import cv2

    suffix = rgb_suffix(image_path.suffix)
    if maps is None and image_path.suffix.lower() in JPEG_SUFFIXES + (".png",):
        return suffix, image_path.read_bytes()
    image = _read_photo(image_path)
    if maps is not None:
        image = remap(image, maps, nearest=False)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix == ".jpg" else []
    ok, encoded = cv2.imencode(suffix, image, params)
    if not ok:
        raise NeuralLabelError(f"{image_path}: could not encode as {suffix}", field="image")
    return suffix, encoded.tobytes()


class _PinholeFrame:
    """A frame's BOP labels for the pinhole ``K``: for a camera with distortion, the labels of its pinhole
    camera (:func:`.undistort.pinhole_view`), computed there directly rather than resampled."""

    def __init__(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> None:
        self.maps = pinhole_maps(view.intrinsics) if view.intrinsics.has_distortion else None
        self.K = view.intrinsics.K_opencv if self.maps is None else self.maps.K
        if self.maps is not None:
            if ctx.label_view is None:
                raise NeuralLabelError(f"frame {view.index}: its camera has lens distortion and BOP needs the "
                                       f"labels of its pinhole camera, which this export cannot compute",
                                       field="formats")
            labels = ctx.label_view(pinhole_view(view, self.maps))
        self.labels = labels
        mm, self.depth_scale = _depth_mm_and_scale(labels, ctx.units_to_mm)
        self.depth = depth_png(mm, self.depth_scale)  # 0 = no depth

    def gt_info(self, gt_id: int) -> dict:
        inst = self.labels.instances[gt_id]
        return {"bbox_obj": inst.bbox_obj, "bbox_visib": inst.bbox_visib, "px_count_all": inst.px_count_all,
                "px_count_valid": inst.px_count_valid, "px_count_visib": inst.px_count_visib,
                "visib_fract": inst.visib_fract}


def _depth_mm_and_scale(labels: "FrameLabels", units_to_mm: float) -> tuple[np.ndarray, float]:
    mm = depth_mm(labels, units_to_mm)
    return mm, depth_scale_for(float(np.nanmax(mm)) if np.isfinite(mm).any() else 0.0)


class BopWriter:
    """The BOP writer (:class:`~.Writer`)."""

    name = "bop"
    title = "BOP"
    description = "BOP scenewise dataset: poses, masks, depth, models in mm"
    needs_depth = True
    needs_confidence = False
    #: (view, labels, _PinholeFrame) of the last view: the bake asks for a view's files, then its fragment,
    #: and both need the same pinhole labels (labelled once). Held by identity, so a stale entry is never reused.
    _last: tuple = (None, None, None)

    def _frame(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> "_PinholeFrame":
        last_view, last_labels, frame = self._last
        if last_view is not view or last_labels is not labels:
            frame = _PinholeFrame(ctx, view, labels)
            self._last = (view, labels, frame)
        return frame

    def static_files(self, ctx: ExportContext) -> dict[str, bytes]:
        import trimesh

        files: dict[str, bytes] = {}
        info = {}
        models = object_models(ctx.spec, ctx.models)
        for obj_id in sorted(models):
            model = models[obj_id]
            mesh_mm = trimesh.Trimesh(np.asarray(model.vertices, dtype=np.float64) * ctx.units_to_mm,
                                      np.asarray(model.faces), process=False)
            ply = trimesh.exchange.ply.export_ply(mesh_mm, encoding="binary", vertex_normal=True,
                                                  include_attributes=False)
            info[str(obj_id)] = model_info(mesh_mm)
            for folder in MODEL_FOLDERS:
                files[f"{ROOT}/{folder}/obj_{obj_id:06d}.ply"] = ply
        for folder in MODEL_FOLDERS:
            files[f"{ROOT}/{folder}/models_info.json"] = json_bytes(info)
        return files

    def frame_files(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        im = view.index
        frame = self._frame(ctx, view, labels)
        scene = ctx.bop_scene_dir()
        if view.image_path is not None:
            suffix, data = rgb_file(view.image_path, frame.maps)
            files[f"{scene}/rgb/{im:06d}{suffix}"] = data
        elif ctx.rendered_rgb is not None:  # a synthetic view: its render (pinhole, so no remap)
            files[f"{scene}/rgb/{im:06d}.png"] = png_bytes(ctx.rendered_rgb(view))
        files.update(encode_with_masks(frame.labels, {f"{scene}/depth/{im:06d}.png": frame.depth},
                                       frame.labels.instances, visible=True))
        for gt_id, inst in enumerate(frame.labels.instances):
            files[f"{scene}/mask/{im:06d}_{gt_id:06d}.png"] = mask_png(frame.labels, inst, visible=False)
            files[f"{scene}/mask_visib/{im:06d}_{gt_id:06d}.png"] = mask_png(frame.labels, inst, visible=True)
        return files

    def fragment(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict:
        frame = self._frame(ctx, view, labels)
        w2c = world_to_camera(labels, view)
        camera = {"cam_K": _floats(frame.K), "depth_scale": frame.depth_scale,
                  "cam_R_w2c": _floats(w2c[:3, :3]), "cam_t_w2c": _floats(w2c[:3, 3] * ctx.units_to_mm)}
        gt, gt_info, coco = [], [], []
        obj_ids = object_ids(ctx.spec, ctx.models)
        for gt_id, inst in enumerate(frame.labels.instances):
            obj_id = obj_ids.get(inst.instance_id, inst.category_id)
            gt.append({"cam_R_m2c": _floats(inst.cam_R_m2c),
                       "cam_t_m2c": _floats(inst.cam_t_m2c * ctx.units_to_mm),
                       "obj_id": obj_id, "instance_id": inst.instance_id})
            info = frame.gt_info(gt_id)
            gt_info.append(info)
            coco.append({"image_id": view.index, "category_id": obj_id, "iscrowd": 0,
                         "area": info["px_count_visib"], "bbox": info["bbox_obj"],
                         "segmentation": visible_rle(frame.labels, inst), "width": view.width,
                         "height": view.height, "ignore": bool(info["visib_fract"] < COCO_IGNORE_VISIB_FRACT)})
        image = {"id": view.index, "width": view.width, "height": view.height,
                 "file_name": _rgb_name(ctx, view)}
        return {"camera": camera, "gt": gt, "gt_info": gt_info, "coco": {"image": image, "annotations": coco}}

    def assemble(self, ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict[str, bytes]:
        first = ctx.dataset.frames[0].intrinsics  # camera.json: the dataset's first camera (per-image K below)
        scales = [frag["camera"]["depth_scale"] for _, frag in fragments]
        camera = {"cx": first.cx - 0.5, "cy": first.cy - 0.5, "depth_scale": max(scales) if scales else 1.0,
                  "fx": first.fx, "fy": first.fy, "height": first.height, "width": first.width}
        scene = ctx.bop_scene_dir()
        return {f"{ROOT}/camera.json": json_bytes(camera),
                f"{scene}/scene_camera.json": json_bytes({str(i): f["camera"] for i, f in fragments}, compact=True),
                f"{scene}/scene_gt.json": json_bytes({str(i): f["gt"] for i, f in fragments}, compact=True),
                f"{scene}/scene_gt_info.json": json_bytes({str(i): f["gt_info"] for i, f in fragments}, compact=True),
                f"{scene}/scene_gt_coco.json": json_bytes(scene_gt_coco(ctx, fragments), compact=True)}


def object_ids(spec, models: dict) -> dict[int, int]:
    """instance_id -> BOP obj_id of every object of ``spec``; ``models``: instance_id -> model (the ones that
    have one). See the module's docstring."""
    ids = {o.instance_id: o.category_id for o in spec.objects}
    first_free = max(o.category_id for o in spec.objects) + 1
    boxes = sorted((o for o in spec.objects if o.kind == "box"), key=lambda o: o.instance_id)
    for rank, obj in enumerate(boxes):
        if obj.instance_id in models:
            ids[obj.instance_id] = first_free + rank
    return ids


def object_models(spec, models: dict) -> dict[int, object]:
    """obj_id -> model: each obj_id's lowest instance with a model (a mesh category's model, or a box's own)."""
    ids = object_ids(spec, models)
    out: dict[int, object] = {}
    for obj in sorted(spec.objects, key=lambda o: o.instance_id):
        if obj.instance_id in models:
            out.setdefault(ids[obj.instance_id], models[obj.instance_id])
    return out


def _rgb_name(ctx: ExportContext, view: View):
    """The view's ``rgb/`` file in its scene folder; None for a synthetic view with no render."""
    if view.image_path is not None:
        return f"rgb/{view.index:06d}{rgb_suffix(view.image_path.suffix)}"
    return f"rgb/{view.index:06d}.png" if ctx.rendered_rgb is not None else None


def scene_gt_coco(ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict:
    """The scene's COCO ground truth from the frames' fragments; annotation ids count up from 1."""
    annotations = []
    for index, frag in fragments:
        if "coco" not in frag:
            raise NeuralLabelError(f"frame {index} was baked before BOP had scene_gt_coco.json: bake it again "
                                   f"into a new folder", field="out")
        for ann in frag["coco"]["annotations"]:
            annotations.append({"id": len(annotations) + 1, **ann})
    categories = [{"id": cid, "name": name, "supercategory": "neurallabel"}
                  for cid, name in ctx.spec.categories().items()]
    obj_ids = object_ids(ctx.spec, ctx.models)
    categories += [{"id": obj_ids[o.instance_id], "name": o.name, "supercategory": o.category}
                   for o in sorted(ctx.spec.objects, key=lambda o: o.instance_id)
                   if obj_ids[o.instance_id] != o.category_id]
    return {"info": {"description": f"NeuralLabel bake, BOP scene {ctx.bop_scene:06d}", "version": "1.0"}, "licenses": [],
            "images": [frag["coco"]["image"] for _, frag in fragments], "annotations": annotations,
            "categories": categories}


BOP = BopWriter()
