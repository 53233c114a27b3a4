"""Raw writer, everything under ``DIR/raw`` (NNNNNN = the frame's index in the dataset).

``depth/NNNNNN.npy`` float32 z-depth in world units (NaN = no surface); ``depth_mm/NNNNNN.png`` the same
depth as uint16 millimetres, round(depth * units_to_mm), 0 = no surface (NaN, or beyond 65.535 m); ``instance/NNNNNN.png`` and
``category/NNNNNN.png`` uint16 id maps (0 = background); ``binary/NNNNNN.png`` 0/255;
``full/NNNNNN_IIIIII.png`` each instance's full silhouette (I = instance_id), 0/255;
``confidence/NNNNNN.png`` uint8, 255 * the probability that the pixel's label is right (written only with a
field; docs/loading.md says how it is made); and ``labels.json``: per frame its camera and, per instance, boxes,
projected 3D box corners, pose, counts and the mean confidence of its visible pixels.
Pixel coordinates use the OpenCV convention (pixel centres at integers); poses are model->camera in OpenCV
camera axes, in world units.

``transforms.json`` makes the folder a nerfstudio dataset (``ns-train nerfacto --data DIR/raw``): the photos'
cameras in the world frame (OpenGL camera-to-world, the convention of the input dataset), the intrinsics as
transforms.json keys (top level when every frame shares them, else per frame), and per frame ``file_path``
(the photo, absolute: the bake does not copy photos), ``mask_path`` (``binary/NNNNNN.png``, relative:
nerfstudio ignores pixels where the mask is 0, so training on it fits the labelled objects alone) and
``depth_file_path`` (``depth_mm/NNNNNN.png``). ``depth_unit_scale_factor`` = 1 / units_to_mm turns the PNG's
values into world units (the poses' units; 1e-3 for a metric world); nerfstudio takes it as its dataparser's
``--depth-unit-scale-factor``. Synthetic views (no photo) are left out of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..data.colmap import transforms_camera_keys
from ..geometry.cameras import Intrinsics
from ..geometry.view import View
from ..io.atomic import json_bytes, npy_bytes
from ..labels.frame import bbox_coco
from .context import ExportContext
from .encoded import depth_mm, encode_with_masks, mask_png, visible_bbox_coco, world_to_camera

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels

ROOT = "raw"
MAX_DEPTH_MM = 65535  # uint16


def depth_mm_png(depth_mm: np.ndarray) -> np.ndarray:
    """z-depth in millimetres (float64 from the float32 depth the .npy holds, so the two files agree to the
    millimetre; NaN = none) as uint16 millimetres, rounded; 0 where there is none or it does not fit."""
    mm = np.rint(depth_mm)
    mm[~((mm > 0) & (mm <= MAX_DEPTH_MM))] = 0  # NaN compares False: no surface
    return mm.astype(np.uint16)


def _floats(values) -> list:
    return np.asarray(values, dtype=np.float64).tolist()


class RawWriter:
    """The raw writer (:class:`~.Writer`); a synthetic view's ``image`` in labels.json is its name."""

    name = "raw"
    title = "Raw"
    description = "Per-frame depth (.npy), instance and category id images"
    needs_depth = True
    needs_confidence = True

    def static_files(self, ctx: ExportContext) -> dict[str, bytes]:
        return {}

    def frame_files(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict[str, bytes]:
        n = f"{view.index:06d}"
        images = {f"{ROOT}/instance/{n}.png": np.asarray(labels.instance, np.uint16),
                  f"{ROOT}/category/{n}.png": np.asarray(labels.category, np.uint16),
                  f"{ROOT}/binary/{n}.png": np.multiply(labels.binary, 255, dtype=np.uint8),
                  f"{ROOT}/depth_mm/{n}.png": depth_mm_png(depth_mm(labels, ctx.units_to_mm))}
        if labels.confidence is not None:
            conf = np.nan_to_num(labels.confidence, nan=0.0)
            images[f"{ROOT}/confidence/{n}.png"] = np.round(np.clip(conf, 0, 1) * 255).astype(np.uint8)
        files = {f"{ROOT}/depth/{n}.npy": npy_bytes(labels.depth.astype(np.float32)),
                 **encode_with_masks(labels, images, labels.instances, visible=False)}
        for inst in labels.instances:
            files[f"{ROOT}/full/{n}_{inst.instance_id:06d}.png"] = mask_png(labels, inst, visible=False)
        return files

    def fragment(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict:
        instances = []
        for inst in labels.instances:
            instances.append({
                "instance_id": inst.instance_id, "category_id": inst.category_id, "name": inst.name,
                "bbox_visib": inst.bbox_visib, "bbox_obj": inst.bbox_obj,
                "bbox_visib_coco": visible_bbox_coco(inst) if inst.px_count_visib else None,
                "bbox_full_coco": bbox_coco(inst.full_mask) if inst.full_mask.any() else None,
                "corners_px": _floats(inst.corners_px), "corners_z": _floats(inst.corners_z),
                "R_m2c": _floats(inst.cam_R_m2c), "t_m2c": _floats(inst.cam_t_m2c),
                "px_count_all": inst.px_count_all, "px_count_valid": inst.px_count_valid,
                "px_count_visib": inst.px_count_visib, "visib_fract": inst.visib_fract,
                # the mean over its visible pixels of P(the pixel's label is right); null without a field
                "mean_confidence": None if inst.mean_confidence is None else round(inst.mean_confidence, 6),
                # a box object with a mesh: the share of its visible mask inside the mesh's silhouette; else null
                "outline_share": None if inst.outline_share is None else round(inst.outline_share, 6)})
        intr = view.intrinsics
        return {"index": view.index, "image": ctx.image_name(view), "width": intr.width, "height": intr.height,
                "K": _floats(intr.K_opencv), "model": intr.model, "distortion": list(intr.distortion),
                "cam_to_world": _floats(view.cam_to_world),
                "cam_from_world_opencv": _floats(world_to_camera(labels, view)),
                "instances": instances, **({"synthetic": True} if view.image_path is None else {})}

    def assemble(self, ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict[str, bytes]:
        labels = {"units_to_mm": ctx.units_to_mm,
                  "categories": {str(k): v for k, v in ctx.spec.categories().items()},
                  "objects": [{"name": o.name, "instance_id": o.instance_id, "category_id": o.category_id,
                               "kind": o.kind, "transparent": o.transparent, "pose": _floats(o.pose),
                               **({"size": _floats(o.size)} if o.kind == "box" else {})}
                              for o in sorted(ctx.spec.objects, key=lambda o: o.instance_id)],
                  "frames": [frag for _, frag in fragments]}
        return {f"{ROOT}/labels.json": json_bytes(labels, compact=True),
                f"{ROOT}/transforms.json": json_bytes(nerfstudio_transforms(ctx, [f for _, f in fragments]))}


def nerfstudio_transforms(ctx: ExportContext, frames: list[dict]) -> dict:
    """``raw/transforms.json`` from the raw fragments (their cameras); see the module docstring."""
    root = ctx.dataset_root()
    photos = [f for f in frames if not f.get("synthetic")]
    cameras = [transforms_camera_keys(_intrinsics(f)) for f in photos]
    shared = bool(cameras) and all(c == cameras[0] for c in cameras)
    out: dict = {**(cameras[0] if shared else {}),
                 "camera_model": cameras[0]["camera_model"] if cameras else "PINHOLE",
                 "depth_unit_scale_factor": 1.0 / ctx.units_to_mm, "frames": []}
    for f, camera in zip(photos, cameras):
        n = f"{f['index']:06d}"
        out["frames"].append({"file_path": (root / f["image"]).as_posix(), "mask_path": f"binary/{n}.png",
                              "depth_file_path": f"depth_mm/{n}.png", "transform_matrix": f["cam_to_world"],
                              **({} if shared else camera)})
    return out


def _intrinsics(frame: dict) -> Intrinsics:
    K = frame["K"]  # OpenCV pixel convention in labels.json; transforms.json puts pixel centres at +0.5
    return Intrinsics(frame["width"], frame["height"], K[0][0], K[1][1], K[0][2] + 0.5, K[1][2] + 0.5,
                      frame["model"], tuple(frame["distortion"]))


RAW = RawWriter()
