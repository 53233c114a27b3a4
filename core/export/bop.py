"""BOP scenewise writer (bop_toolkit conventions), everything under ``DIR/bop``.

``camera.json``; ``models/obj_XXXXXX.ply`` in mm with ``models_info.json``; one scene ``train/000000`` with
``rgb/``, ``depth/`` (uint16 PNG, ``depth * depth_scale`` = mm), ``mask/`` and ``mask_visib/``
(``{im_id:06d}_{gt_id:06d}.png``, 0/255), ``scene_camera.json``, ``scene_gt.json``, ``scene_gt_info.json``.
``im_id`` = the frame's index in the dataset; ``obj_id`` = the object's category_id; ``gt_id`` = the
instance's position in the frame's ``scene_gt`` list (sorted by instance_id, which is also stored).
Poses are model->camera in OpenCV camera axes, translations in mm; ``cam_K`` uses the OpenCV pixel
convention (top-left pixel centre at 0, 0). A synthetic view (no photo) gets no ``rgb/`` file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..geometry.cameras import world_to_camera_opencv
from ..geometry.view import View
from ..io.atomic import json_bytes, png_bytes
from .context import ExportContext

if TYPE_CHECKING:
    from ..labels.frame import FrameLabels

ROOT = "bop"
SCENE = f"{ROOT}/train/000000"
#: candidate depth scales (mm per stored unit), finest first: each frame takes the finest one that holds its
#: farthest depth in uint16, so a depth map can never overflow.
DEPTH_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0, 10000.0)


def depth_scale_for(max_depth_mm: float) -> float:
    for scale in DEPTH_SCALES:
        if max_depth_mm / scale <= 65535 - 1:
            return scale
    return float(np.ceil(max_depth_mm / 65534.0))


def depth_png(depth_mm: np.ndarray, scale: float) -> np.ndarray:
    """uint16 depth image: ``round(depth_mm / scale)``, 0 where there is no depth (NaN)."""
    stored = np.where(np.isfinite(depth_mm), np.round(depth_mm / scale), 0.0)
    return np.clip(stored, 0, 65535).astype(np.uint16)


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


def _depth_mm_and_scale(labels: "FrameLabels", units_to_mm: float) -> tuple[np.ndarray, float]:
    depth_mm = labels.depth.astype(np.float64) * units_to_mm
    return depth_mm, depth_scale_for(float(np.nanmax(depth_mm)) if np.isfinite(depth_mm).any() else 0.0)


class BopWriter:
    """The BOP writer (:class:`~.Writer`)."""

    name = "bop"
    title = "BOP"
    description = "BOP scenewise dataset: poses, masks, depth, models in mm"
    needs_depth = True
    needs_confidence = False

    def static_files(self, ctx: ExportContext) -> dict[str, bytes]:
        import trimesh

        files: dict[str, bytes] = {}
        info = {}
        for category_id in sorted(ctx.models):
            model = ctx.models[category_id]
            mesh_mm = trimesh.Trimesh(np.asarray(model.vertices, dtype=np.float64) * ctx.units_to_mm,
                                      np.asarray(model.faces), process=False)
            files[f"{ROOT}/models/obj_{category_id:06d}.ply"] = trimesh.exchange.ply.export_ply(
                mesh_mm, encoding="binary", include_attributes=False)
            info[str(category_id)] = model_info(mesh_mm)
        files[f"{ROOT}/models/models_info.json"] = json_bytes(info)
        return files

    def frame_files(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        im = view.index
        if view.image_path is not None:  # a synthetic view has no photo to copy
            files[f"{SCENE}/rgb/{im:06d}{view.image_path.suffix.lower()}"] = view.image_path.read_bytes()
        depth_mm, scale = _depth_mm_and_scale(labels, ctx.units_to_mm)
        files[f"{SCENE}/depth/{im:06d}.png"] = png_bytes(depth_png(depth_mm, scale))
        for gt_id, inst in enumerate(labels.instances):
            files[f"{SCENE}/mask/{im:06d}_{gt_id:06d}.png"] = png_bytes(inst.full_mask.astype(np.uint8) * 255)
            files[f"{SCENE}/mask_visib/{im:06d}_{gt_id:06d}.png"] = png_bytes(
                inst.visible_mask.astype(np.uint8) * 255)
        return files

    def fragment(self, ctx: ExportContext, view: View, labels: "FrameLabels") -> dict:
        _, scale = _depth_mm_and_scale(labels, ctx.units_to_mm)
        w2c = world_to_camera_opencv(view.cam_to_world)
        camera = {"cam_K": _floats(view.intrinsics.K_opencv), "depth_scale": scale,
                  "cam_R_w2c": _floats(w2c[:3, :3]), "cam_t_w2c": _floats(w2c[:3, 3] * ctx.units_to_mm)}
        gt, gt_info = [], []
        for inst in labels.instances:
            gt.append({"cam_R_m2c": _floats(inst.cam_R_m2c),
                       "cam_t_m2c": _floats(inst.cam_t_m2c * ctx.units_to_mm),
                       "obj_id": inst.category_id, "instance_id": inst.instance_id})
            gt_info.append({"bbox_obj": inst.bbox_obj, "bbox_visib": inst.bbox_visib,
                            "px_count_all": inst.px_count_all, "px_count_valid": inst.px_count_valid,
                            "px_count_visib": inst.px_count_visib, "visib_fract": inst.visib_fract})
        return {"camera": camera, "gt": gt, "gt_info": gt_info}

    def assemble(self, ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict[str, bytes]:
        first = ctx.dataset.frames[0].intrinsics  # camera.json: the dataset's first camera (per-image K below)
        scales = [frag["camera"]["depth_scale"] for _, frag in fragments]
        camera = {"cx": first.cx - 0.5, "cy": first.cy - 0.5, "depth_scale": max(scales) if scales else 1.0,
                  "fx": first.fx, "fy": first.fy, "height": first.height, "width": first.width}
        return {f"{ROOT}/camera.json": json_bytes(camera),
                f"{SCENE}/scene_camera.json": json_bytes({str(i): f["camera"] for i, f in fragments}),
                f"{SCENE}/scene_gt.json": json_bytes({str(i): f["gt"] for i, f in fragments}),
                f"{SCENE}/scene_gt_info.json": json_bytes({str(i): f["gt_info"] for i, f in fragments})}


BOP = BopWriter()
