"""Per-frame label math: masks, maps, boxes, poses, depth and confidence for every annotated object.

For one camera (:meth:`FrameLabeler.label`):
1. every object with a mesh (annotated meshes, and box objects' extracted meshes) is ray-cast through the pixel
   centres inside its projected bounding box -> its *full* silhouette and z-depth (also beyond the image
   border, so ``px_count_all`` and ``bbox_obj`` count the truncated part, as bop_toolkit does);
2. the nearest annotated mesh per pixel is the one with the smallest z;
3. the depth source (field or true depth) is asked only for the pixels a decision needs (pixels covered by a
   mesh, and pixels inside a box's projection) -- or for all pixels when depth/confidence maps are written;
4. a mesh pixel is *visible* unless the source's surface lies in front of the mesh by more than
   ``tolerance = abs + rel * z`` (unannotated clutter occludes annotated objects);
5. a pixel belongs to a *box* object where the source's surface along the ray lies inside the box (and no
   annotated mesh is visible there);
6. depth: the source's depth, replaced by the mesh's depth on visible mesh pixels (always for transparent
   objects, whose field depth is unusable; for every mesh with ``mesh_depth="all"``, the default).

Pixel coordinates in the outputs (2D boxes, projected corners) use the OpenCV/BOP convention: the centre of
pixel (col, row) is at (col, row). Poses are model->camera in OpenCV camera axes, in world units.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..geometry.cameras import OPENGL_TO_OPENCV, Intrinsics, camera_directions, distort
from ..data.dataset import Frame
from ..errors import NeuralLabelError
from ..spec import SpecObject

MESH_DEPTH_MODES = ("all", "transparent")


@dataclass(frozen=True)
class LabelOptions:
    #: a mesh pixel is occluded when the depth source's surface is nearer than the mesh by more than
    #: ``occlusion_abs_mm`` (converted with ``units_to_mm``) + ``occlusion_rel`` * depth.
    # Defaults from scripts/bench_labels.py's sweep (CPU-trained field, unannotated clutter in the scene):
    # visible-mask IoU 0.55 with no confidence gate, 0.88 at 0.3, 0.985 at 0.5 with 5 mm + 2 %.
    occlusion_abs_mm: float = 5.0
    occlusion_rel: float = 0.02
    #: a field surface occludes a mesh only where the field is at least this confident of it (see
    #: ``depth_source.CONFIDENCE_WINDOW``): floaters of a half-trained field -- weight smeared along the ray --
    #: do not hide an annotated object. Their pixels keep a low value in the confidence map. 0 = off.
    occlusion_min_confidence: float = 0.5
    mesh_depth: str = "all"  # "all": mesh depth on every visible mesh pixel; "transparent": only on glass
    truncated: bool = True  # count the silhouette beyond the image border (BOP px_count_all, bbox_obj)

    def __post_init__(self) -> None:
        if self.mesh_depth not in MESH_DEPTH_MODES:
            raise NeuralLabelError(f"mesh_depth must be one of {', '.join(MESH_DEPTH_MODES)}, got "
                                   f"{self.mesh_depth!r}")
        if self.occlusion_abs_mm < 0 or self.occlusion_rel < 0:
            raise NeuralLabelError("occlusion tolerances must be >= 0")
        if not 0.0 <= self.occlusion_min_confidence <= 1.0:
            raise NeuralLabelError(f"occlusion_min_confidence must be in [0, 1], got "
                                   f"{self.occlusion_min_confidence}")

    def to_json(self) -> dict:
        return {"occlusion_abs_mm": self.occlusion_abs_mm, "occlusion_rel": self.occlusion_rel,
                "occlusion_min_confidence": self.occlusion_min_confidence, "mesh_depth": self.mesh_depth,
                "truncated": self.truncated}


@dataclass
class LabelObject:
    """An annotated object ready for labelling: its spec entry plus what the label math needs."""

    spec: SpecObject
    model: Any  # trimesh.Trimesh in the object's own frame (world units); None for a box without a model
    cast_index: Optional[int]  # index of its world-space mesh in the MeshCaster; None without a model
    corners: np.ndarray  # (8, 3) corners of its 3D box in the object's own frame
    bound_points: np.ndarray  # (M, 3) world points whose projection bounds its silhouette

    @property
    def is_mesh(self) -> bool:
        return self.spec.kind == "mesh"


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corners of an axis-aligned box, x slowest: (lo,lo,lo), (lo,lo,hi), ..., (hi,hi,hi)."""
    return np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)


def make_label_object(obj: SpecObject, model, cast_index: Optional[int]) -> LabelObject:
    """Corners and bounding points of ``obj``: its mesh's bounds (mesh objects) or the box (box objects)."""
    if obj.kind == "mesh":
        vertices = np.asarray(model.vertices, dtype=np.float64)
        corners = box_corners(vertices.min(axis=0), vertices.max(axis=0))
        try:
            hull = np.asarray(model.convex_hull.vertices, dtype=np.float64)
        except Exception:  # a flat mesh has no 3D hull; its own vertices bound it as well
            hull = vertices
    else:
        corners = box_corners(-obj.size / 2, obj.size / 2)
        hull = corners
        if model is not None:
            hull = np.concatenate([hull, np.asarray(model.vertices, dtype=np.float64)])
    bound_points = hull @ obj.pose[:3, :3].T + obj.pose[:3, 3]
    return LabelObject(obj, model, cast_index, corners, bound_points)


@dataclass
class InstanceLabels:
    instance_id: int
    category_id: int
    name: str
    visible_mask: np.ndarray  # (H, W) bool
    full_mask: np.ndarray  # (H, W) bool, the whole silhouette inside the image
    px_count_all: int  # whole silhouette, including the part beyond the image border
    px_count_valid: int  # silhouette pixels (in the image) with a valid depth
    px_count_visib: int
    visib_fract: float
    bbox_obj: list[int]  # BOP [x, y, w, h], w = xmax - xmin, of the whole silhouette; [-1]*4 if empty
    bbox_visib: list[int]  # BOP convention, visible mask
    cam_R_m2c: np.ndarray  # (3, 3) model -> camera rotation, OpenCV camera axes
    cam_t_m2c: np.ndarray  # (3,) translation, world units
    corners_px: np.ndarray  # (8, 2) projected 3D box corners, OpenCV pixel convention
    corners_z: np.ndarray  # (8,) their z-depth


@dataclass
class FrameLabels:
    index: int
    instance: np.ndarray  # (H, W) uint16 instance ids (0 = nothing annotated visible)
    category: np.ndarray  # (H, W) uint16 category ids
    depth: np.ndarray  # (H, W) float32 z-depth in world units, NaN = no surface (or not computed)
    confidence: Optional[np.ndarray]  # (H, W) float32 in [0, 1], the field's certainty; None without a field
    instances: list[InstanceLabels] = field(default_factory=list)
    source_depth: Optional[np.ndarray] = None  # (H, W) the depth source's own z-depth (NaN: not asked / none)

    @property
    def binary(self) -> np.ndarray:
        return self.instance > 0


def bbox_bop(rows: np.ndarray, cols: np.ndarray) -> list[int]:
    """BOP 2D box [x, y, w, h] of pixel indices with w = xmax - xmin (bop_toolkit's calc_2d_bbox)."""
    if len(rows) == 0:
        return [-1, -1, -1, -1]
    x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())
    return [x0, y0, x1 - x0, y1 - y0]


def _mask_extent(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """(xmin, ymin, xmax, ymax) of a mask's pixels (inclusive), None when empty."""
    any_col = mask.any(axis=0)
    if not any_col.any():
        return None
    any_row = mask.any(axis=1)
    cols, rows = np.flatnonzero(any_col), np.flatnonzero(any_row)
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def bbox_bop_mask(mask: np.ndarray) -> list[int]:
    """BOP 2D box of a mask (w = xmax - xmin); [-1, -1, -1, -1] when empty."""
    extent = _mask_extent(mask)
    if extent is None:
        return [-1, -1, -1, -1]
    x0, y0, x1, y1 = extent
    return [x0, y0, x1 - x0, y1 - y0]


def bbox_coco(mask: np.ndarray) -> list[int]:
    """COCO 2D box [x, y, w, h] of a mask with w = xmax - xmin + 1 (as pycocotools' toBbox)."""
    extent = _mask_extent(mask)
    if extent is None:
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = extent
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def rigid_inverse(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (R^T, -R^T t), without a general matrix inverse."""
    inv = np.eye(4)
    inv[:3, :3] = pose[:3, :3].T
    inv[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return inv


def project(intrinsics: Intrinsics, cam_from_world: np.ndarray, points: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`~.cameras.project_points`, from an OpenCV ``cam_from_world``: (pixels (N, 2), z (N,))."""
    p_cam = points @ cam_from_world[:3, :3].T + cam_from_world[:3, 3]
    z = p_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = distort(intrinsics, p_cam[:, :2] / z[:, None])
    pixels = np.stack([xy[:, 0] * intrinsics.fx + intrinsics.cx, xy[:, 1] * intrinsics.fy + intrinsics.cy], axis=-1)
    return pixels, z


def projected_region(intrinsics: Intrinsics, cam_to_world: np.ndarray, points: np.ndarray,
                     extent: tuple[int, int, int, int], pad: int = 2) -> Optional[tuple[int, int, int, int]]:
    """Pixel rectangle (c0, r0, c1, r1), half-open, that holds the projection of ``points``, within ``extent``.

    None when every point is behind the camera; the whole extent when some but not all are (the projection of
    an object that straddles the camera plane is unbounded).
    """
    pixels, z = project(intrinsics, OPENGL_TO_OPENCV @ rigid_inverse(cam_to_world), points)
    if np.all(z <= 0):
        return None
    if np.any(z <= 1e-9) or not np.all(np.isfinite(pixels)):
        return extent
    c0 = int(np.floor(pixels[:, 0].min())) - pad
    r0 = int(np.floor(pixels[:, 1].min())) - pad
    c1 = int(np.ceil(pixels[:, 0].max())) + pad
    r1 = int(np.ceil(pixels[:, 1].max())) + pad
    c0, r0 = max(c0, extent[0]), max(r0, extent[1])
    c1, r1 = min(c1, extent[2]), min(r1, extent[3])
    if c0 >= c1 or r0 >= r1:
        return None
    return c0, r0, c1, r1


def _region_pixels(region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    c0, r0, c1, r1 = region
    cols, rows = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    return rows.ravel(), cols.ravel()


@dataclass
class _Silhouette:
    """One object's cast inside the image: z-depth over ``region`` (inf where missed) and its counts."""

    region: tuple[int, int, int, int]  # (c0, r0, c1, r1) inside the image
    z: np.ndarray  # (r1 - r0, c1 - c0)
    count_all: int  # hits including beyond the image border
    bbox_all: list[int]

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, bool)
        c0, r0, c1, r1 = self.region
        mask[r0:r1, c0:c1] = np.isfinite(self.z)
        return mask


class FrameLabeler:
    """Labels frames for a fixed set of objects.

    ``caster`` holds the world-space meshes (``LabelObject.cast_index``); ``depth_source`` gives z-depth in data
    units for pixels of a *data-frame* camera (:mod:`.depth_source`), or None for mesh-only labels;
    ``data_scale`` is world units per data unit.
    """

    def __init__(self, objects: list[LabelObject], caster, depth_source=None, *, data_scale: float = 1.0,
                 units_to_mm: float = 1000.0, options: LabelOptions = LabelOptions()) -> None:
        self.objects = objects
        self.caster = caster
        self.depth_source = depth_source
        self.data_scale = float(data_scale)
        self.units_to_mm = float(units_to_mm)
        self.options = options

    def label(self, frame: Frame, cam_to_world: np.ndarray, *, full_depth: bool = True,
              confidence: bool = True) -> FrameLabels:
        """Labels of ``frame`` (data-frame camera) seen from ``cam_to_world`` (its rigid world pose).

        ``full_depth``: evaluate the depth source at every pixel (for depth maps); otherwise only where a
        visibility or box decision needs it. ``confidence``: also the per-pixel confidence (field only).
        """
        intr = frame.intrinsics
        H, W = intr.height, intr.width
        image = (0, 0, W, H)
        extent = (-W, -H, 2 * W, 2 * H) if self.options.truncated else image
        source = self.depth_source
        cam_from_world = OPENGL_TO_OPENCV @ rigid_inverse(cam_to_world)

        # 1. full silhouettes and mesh depth, per object with a model (cast only inside its projection).
        silhouettes: dict[int, _Silhouette] = {}
        for i, obj in enumerate(self.objects):
            if obj.cast_index is None:
                continue
            region = projected_region(intr, cam_to_world, obj.bound_points, extent)
            if region is None:
                continue
            rows, cols = _region_pixels(region)
            z = self._cast(obj.cast_index, intr, cam_to_world, rows, cols)
            hit = np.isfinite(z)
            if not hit.any():
                continue
            c0, r0, c1, r1 = region
            inner = (max(c0, 0), max(r0, 0), min(c1, W), min(r1, H))
            z_region = z.reshape(r1 - r0, c1 - c0)
            if inner[0] < inner[2] and inner[1] < inner[3]:
                z_inner = z_region[inner[1] - r0:inner[3] - r0, inner[0] - c0:inner[2] - c0]
            else:
                inner, z_inner = (0, 0, 0, 0), np.zeros((0, 0))
            silhouettes[i] = _Silhouette(inner, z_inner, int(hit.sum()), bbox_bop(rows[hit], cols[hit]))

        # 2. the nearest annotated mesh per pixel (box objects' extracted meshes take no part: the field
        #    decides their pixels).
        mesh_ids = [i for i in silhouettes if self.objects[i].is_mesh]
        nearest = np.full((H, W), -1, dtype=np.int16)
        nearest_z = np.full((H, W), np.inf, dtype=np.float32)  # float32: ~0.1 um at metres
        for i in mesh_ids:
            c0, r0, c1, r1 = silhouettes[i].region
            window_z = nearest_z[r0:r1, c0:c1]
            closer = silhouettes[i].z < window_z
            window_z[closer] = silhouettes[i].z[closer]
            nearest[r0:r1, c0:c1][closer] = i
        covered = nearest >= 0

        # 3. the source's depth where needed.
        box_ids = [i for i, o in enumerate(self.objects) if not o.is_mesh]
        box_regions = {i: projected_region(intr, cam_to_world, box_corners(-o.spec.size / 2, o.spec.size / 2)
                                           @ o.spec.pose[:3, :3].T + o.spec.pose[:3, 3], image)
                       for i, o in ((i, self.objects[i]) for i in box_ids)}
        source_z = None
        conf_map = None
        if source is not None:
            source_z = np.full((H, W), np.nan)
            has_conf = getattr(source, "has_density", False)  # a field: its weights give a confidence
            gate = has_conf and self.options.occlusion_min_confidence > 0
            want_conf = has_conf and (confidence or gate)
            if full_depth or (confidence and has_conf):
                rows, cols = np.divmod(np.arange(H * W), W)
            else:
                need = covered.copy()
                for region in box_regions.values():
                    if region is not None:
                        c0, r0, c1, r1 = region
                        need[r0:r1, c0:c1] = True
                rows, cols = np.nonzero(need)
            z, conf = source.z_depth(frame, rows, cols, with_confidence=want_conf)
            source_z[rows, cols] = z * self.data_scale
            if conf is not None:
                conf_map = np.full((H, W), np.nan, dtype=np.float32)
                conf_map[rows, cols] = conf
        elif box_ids:
            raise NeuralLabelError("box objects need a depth source (a field): their pixels are where the "
                                   "field's surface lies inside the box")

        # 4. visibility of the nearest mesh against the source's surface.
        if source_z is not None:
            tol = self.options.occlusion_abs_mm / self.units_to_mm + self.options.occlusion_rel * source_z
            with np.errstate(invalid="ignore"):
                occluded = covered & (nearest_z > source_z + tol)  # NaN (no surface) never occludes
                if conf_map is not None and self.options.occlusion_min_confidence > 0:
                    occluded &= conf_map >= self.options.occlusion_min_confidence
            mesh_visible = covered & ~occluded
        else:
            mesh_visible = covered

        instance = np.zeros((H, W), np.uint16)
        category = np.zeros((H, W), np.uint16)
        visible: dict[int, np.ndarray] = {}
        for i in mesh_ids:  # within each object's region only: the rest of the frame cannot hold it
            c0, r0, c1, r1 = silhouettes[i].region
            visible[i] = np.zeros((H, W), bool)
            visible[i][r0:r1, c0:c1] = mesh_visible[r0:r1, c0:c1] & (nearest[r0:r1, c0:c1] == i)

        # 5. box objects: the source's surface inside the box, where no annotated mesh is visible.
        if box_ids:
            box_owner = np.full((H, W), -1, dtype=np.int64)
            owner_volume = np.full((H, W), np.inf)
            for i in box_ids:
                region = box_regions[i]
                if region is None:
                    continue
                rows, cols = _region_pixels(region)
                z = source_z[rows, cols]
                ok = np.isfinite(z) & ~mesh_visible[rows, cols]
                rows, cols, z = rows[ok], cols[ok], z[ok]
                points = self._points(intr, cam_to_world, rows, cols, z)
                obj = self.objects[i].spec
                local = (points - obj.pose[:3, 3]) @ obj.pose[:3, :3]
                inside = np.all(np.abs(local) <= obj.size / 2, axis=1)
                volume = float(np.prod(obj.size))
                # Overlapping boxes: the smaller box takes the pixel (deterministic, usually the right one).
                take = inside & (volume < owner_volume[rows, cols])
                box_owner[rows[take], cols[take]] = i
                owner_volume[rows[take], cols[take]] = volume
            for i in box_ids:
                visible[i] = box_owner == i

        for i, mask in visible.items():
            instance[mask] = self.objects[i].spec.instance_id
            category[mask] = self.objects[i].spec.category_id

        # 6. depth: the source's, with the mesh's where a mesh is visible.
        if source_z is None:
            depth = np.where(mesh_visible, nearest_z, np.nan)
        else:
            depth = source_z.copy()
            for i in mesh_ids:
                if self.options.mesh_depth == "all" or self.objects[i].spec.transparent:
                    depth[visible[i]] = nearest_z[visible[i]]
        depth = depth.astype(np.float32)
        has_depth = np.isfinite(depth)

        # Per-instance labels.
        instances: list[InstanceLabels] = []
        for i, obj in enumerate(self.objects):
            vis = visible.get(i)
            sil = silhouettes.get(i)
            if sil is None and (vis is None or not vis.any()):
                continue
            if vis is None:
                vis = np.zeros((H, W), bool)
            if sil is not None and obj.is_mesh:
                full = sil.full_mask((H, W))  # holds the visible mask: visible pixels are nearest hits
                px_all, bbox_obj = sil.count_all, sil.bbox_all
            elif sil is not None:
                model_mask = sil.full_mask((H, W))
                full = model_mask | vis
                extra = int(np.count_nonzero(vis & ~model_mask))
                px_all = sil.count_all + extra  # box pixels beyond its extracted model count too
                bbox_obj = sil.bbox_all if extra == 0 else _union_bbox(sil.bbox_all, vis)
            else:
                full = vis
                px_all = int(np.count_nonzero(full))
                bbox_obj = bbox_bop_mask(full)
            px_visib = int(np.count_nonzero(vis))
            m2c = cam_from_world @ obj.spec.pose
            corners_world = obj.corners @ obj.spec.pose[:3, :3].T + obj.spec.pose[:3, 3]
            corners_px, corners_z = project(intr, cam_from_world, corners_world)
            instances.append(InstanceLabels(
                instance_id=obj.spec.instance_id, category_id=obj.spec.category_id, name=obj.spec.name,
                visible_mask=vis, full_mask=full, px_count_all=px_all,
                px_count_valid=int(np.count_nonzero(full & has_depth)), px_count_visib=px_visib,
                visib_fract=float(px_visib / px_all) if px_all > 0 else 0.0,
                bbox_obj=bbox_obj, bbox_visib=bbox_bop_mask(vis),
                cam_R_m2c=m2c[:3, :3].copy(), cam_t_m2c=m2c[:3, 3].copy(),
                corners_px=corners_px - 0.5, corners_z=corners_z))
        instances.sort(key=lambda x: x.instance_id)
        return FrameLabels(frame.index, instance, category, depth, conf_map, instances, source_depth=source_z)

    # --- helpers -----------------------------------------------------------------------------------------

    def _cast(self, cast_index: int, intr: Intrinsics, cam_to_world: np.ndarray, rows: np.ndarray,
              cols: np.ndarray) -> np.ndarray:
        """z-depth of mesh ``cast_index`` through pixel centres (rows, cols); inf where missed."""
        dirs_cam = camera_directions(intr, np.stack([cols + 0.5, rows + 0.5], axis=-1))  # z = -1
        norms = np.sqrt(np.einsum("ij,ij->i", dirs_cam, dirs_cam))
        dirs = (dirs_cam / norms[:, None]) @ cam_to_world[:3, :3].T
        origins = np.broadcast_to(cam_to_world[:3, 3], dirs.shape)
        hit, distance = self.caster.cast(cast_index, origins, dirs)
        return np.where(hit, distance / norms, np.inf)  # distance -> z-depth (unit z per |dir_cam|)

    @staticmethod
    def _points(intr: Intrinsics, cam_to_world: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                z: np.ndarray) -> np.ndarray:
        """World points at z-depth ``z`` through pixel centres (rows, cols)."""
        dirs_cam = camera_directions(intr, np.stack([cols + 0.5, rows + 0.5], axis=-1))  # z = -1
        points_cam = dirs_cam * z[:, None]
        return points_cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]


def _union_bbox(bbox: list[int], mask: np.ndarray) -> list[int]:
    """BOP box of the union of a BOP box and a (non-empty) mask."""
    mx0, my0, mx1, my1 = _mask_extent(mask)
    if bbox[2] == -1:
        return [mx0, my0, mx1 - mx0, my1 - my0]
    x0, y0 = min(bbox[0], mx0), min(bbox[1], my0)
    x1, y1 = max(bbox[0] + bbox[2], mx1), max(bbox[1] + bbox[3], my1)
    return [x0, y0, x1 - x0, y1 - y0]
