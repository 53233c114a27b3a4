"""Per-frame label math: masks, maps, boxes, poses, depth and confidence for every annotated object.

For one camera (:meth:`FrameLabeler.label`):
1. every object with a mesh (annotated meshes, and box objects' extracted meshes) is ray-cast through the pixel
   centres inside its projected bounding box -> its *full* silhouette and z-depth (also beyond the image
   border, so ``px_count_all`` and ``bbox_obj`` count the truncated part, as bop_toolkit does);
2. the nearest annotated mesh per pixel is the one with the smallest z;
3. the scene (:class:`~..scene.queries.SceneQuery`: a field or true depth) is rendered once, only for the
   pixels a decision needs (pixels covered by a mesh, and pixels inside a box's projection) -- or for all
   pixels when a depth map is written -- with its samples along the rays of the decision pixels (a depth map's
   surface is one opaque sample);
4. a mesh pixel is visible with the probability that its ray reaches the mesh: the transmittance up to the
   mesh's depth, not counting samples within a 3D band around any annotated mesh's surface (the field's
   blurred copy of an annotated object belongs to it and hides nothing); density elsewhere (unannotated
   clutter) occludes. Visible where that probability is at least 1/2 (``occlusion_min_confidence``), or where
   the visible label is at least as likely right as the occluded one (6.: a fog's smeared weight in front
   of the mesh is no occluding surface);
5. a pixel belongs to a *box* object with the probability that its ray stops on the object: the share of its
   weight inside the box (with the surface on the faces the camera sees from outside: a tight box's faces carry
   the object's surface) or near the box's extracted mesh, but not on the support surface under the box (the
   table, found per frame by a plane fit) -- where that is at least 1/2 and no annotated mesh is visible;
   overlapping boxes: the smaller box takes the pixel; with a field, the photo's colours then settle each box
   mask's outline (:mod:`.colour`: the field's blur puts a skirt of fog at an object's foot);
6. confidence: per pixel, the probability that its label is right (the visibility or box probability of the
   label it got, or one minus it for the label it did not get; 1 where no annotated object can be);
7. depth: the scene's depth, replaced by the mesh's depth on visible mesh pixels (always for transparent
   objects, whose field depth is unusable; for every mesh with ``mesh_depth="all"``, the default);
8. per-instance records: counts, 2D boxes, model->camera pose, projected 3D box corners, mean confidence.

Meshes are cast from the view's rigid world pose (``cam_to_world``); the scene is asked with the view itself
and answers in the dataset's frame (``cam_to_data``), scaled to world units by ``data_scale``.

Pixel coordinates in the outputs (2D boxes, projected corners) use the OpenCV/BOP convention: the centre of
pixel (col, row) is at (col, row). Poses are model->camera in OpenCV camera axes, in world units.
"""

from __future__ import annotations

import math
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.box import Box, box_corners
from ..geometry.cameras import camera_directions
from ..geometry.projection import Region, backproject, opencv_from_pose, project, projected_region, region_pixels
from ..geometry.transforms import apply_directions, apply_points
from ..geometry.view import View
from ..scene.queries import SURFACE_OPACITY, RayWeights, SceneQuery, concentrated_weight, samples_from_depth
from ..spec import SpecObject
from .footprint import footprint
from .occlusion import SurfaceBand, bottom_zone, box_up_axis, lateral_span, support_plane

MESH_DEPTH_MODES = ("all", "transparent")


#: the certain background kept around a box's silhouette for its colours (:meth:`FrameLabeler.colour_edges`),
#: a share of the picture's longer side: 10 pixels at 640 x 480
COLOUR_MARGIN = 0.015


#: a box object's visible mask counts as inside its mesh's silhouette within this share of the picture's longer
#: side (3 pixels at 640 x 480): the silhouette of a mesh carved at a box's voxel size is no sharper
OUTLINE_TOLERANCE = 0.005


def outline_share(mask: np.ndarray, silhouette: np.ndarray, view: View) -> float:
    """The share of a box object's visible ``mask`` that lies inside its extracted mesh's ``silhouette`` grown
    by ``OUTLINE_TOLERANCE``: two views of the object -- the field's weight and colours in this view, the
    mesh carved from many views -- that agree where it is."""
    import cv2

    grow = max(1, int(round(OUTLINE_TOLERANCE * max(view.width, view.height))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    grown = cv2.dilate(silhouette.astype(np.uint8), kernel).astype(bool)
    return float(np.count_nonzero(mask & grown) / max(np.count_nonzero(mask), 1))


class LabelWarning(UserWarning):
    """Something in the spec gives no label where the user surely expected one (the bake goes on)."""


#: a box object's colour step takes as certain object only the pixels whose ray puts at least this share of
#: the mask's usual (90th percentile) weight on the object: a foggy field fills a torus's hole, where the mask's
#: core would otherwise keep the table seen through it
SURE_SHARE = 0.75

#: the light stopped in front of a mesh within this share of its median depth is one occluding surface: a field
#: trained for minutes blurs real clutter over centimetres, and spreads its fog over decimetres
OCCLUDER_WINDOW = 0.05


@dataclass(frozen=True)
class LabelOptions:
    #: the band around every annotated mesh's surface whose density belongs to that object and occludes
    #: nothing: ``occlusion_abs_mm`` (converted with ``units_to_mm``) + ``occlusion_rel`` * z-depth. It must
    #: cover how far a trained field blurs a surface in front of it (the field's step and its smoothing), and
    #: stay under the gap between an object and clutter just in front of it; scripts/bench_labels.py reports
    #: the visible-mask IoU against Cycles for a range of bands (its ``band_curve``).
    # Measured so far: a 2 mm blurred shell needs >= 4 mm at grazing rays (tests/test_occlusion.py); on a
    # 233-step CPU field of the seed-2 test scene the mesh IoU kept rising with the band (0.63 at 0 mm, 0.73 at
    # 5, 0.85 at 20: a half-trained field's fog hugs the surfaces), while clutter 2 cm in front must still
    # occlude. 5 mm + 2 % of the depth (15 mm at 0.5 m) lies between, and is the CLI's and the add-on's
    # default; set it from the band curve of a 10-minute field.
    occlusion_abs_mm: float = 5.0
    occlusion_rel: float = 0.02
    #: a mesh pixel is occluded when the probability that its ray does not reach the mesh (1 - transmittance)
    #: exceeds this (1 = nothing occludes) and the occluded label is more likely right than the visible one
    #: (the light is stopped by one surface, not smeared as fog)
    occlusion_min_confidence: float = 0.5
    #: surface this close above (or anywhere below) the plane a box object stands on is that support, not the
    #: object (the field's table surface is blurred by a few millimetres)
    support_mm: float = 3.0
    mesh_depth: str = "all"  # "all": mesh depth on every visible mesh pixel; "transparent": only on glass
    truncated: bool = True  # count the silhouette beyond the image border (BOP px_count_all, bbox_obj)
    #: a box object's outline decided by the photo's colours (:mod:`.colour`) where the scene is a field
    colour_edges: bool = True

    def __post_init__(self) -> None:
        if self.mesh_depth not in MESH_DEPTH_MODES:
            raise NeuralLabelError(f"mesh_depth must be one of {', '.join(MESH_DEPTH_MODES)}, got "
                                   f"{self.mesh_depth!r}")
        # NaN passes every comparison below (and NaN != NaN: a manifest holding one never equals its re-run's)
        for name in ("occlusion_abs_mm", "occlusion_rel", "occlusion_min_confidence", "support_mm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise NeuralLabelError(f"{name} must be a finite number, got {value!r}")
        if self.occlusion_abs_mm < 0 or self.occlusion_rel < 0 or self.support_mm < 0:
            raise NeuralLabelError("occlusion band and support thickness must be >= 0")
        if not isinstance(self.colour_edges, bool):
            raise NeuralLabelError(f"colour_edges must be true or false, got {self.colour_edges!r}")
        if not 0.0 <= self.occlusion_min_confidence <= 1.0:
            raise NeuralLabelError(f"occlusion_min_confidence must be in [0, 1], got "
                                   f"{self.occlusion_min_confidence}")

    def to_json(self) -> dict:
        return {"occlusion_abs_mm": self.occlusion_abs_mm, "occlusion_rel": self.occlusion_rel,
                "occlusion_min_confidence": self.occlusion_min_confidence, "support_mm": self.support_mm,
                "mesh_depth": self.mesh_depth, "truncated": self.truncated, "colour_edges": self.colour_edges}


@dataclass
class LabelObject:
    """An annotated object ready for labelling: its spec entry plus what the label math needs."""

    spec: SpecObject
    model: Any  # trimesh.Trimesh in the object's own frame (world units); None for a box without a model
    cast_index: Optional[int]  # index of its world-space mesh in the MeshCaster; None without a model
    # (8, 3) corners of its 3D bounding box in the object's own frame (box_corners order). Kept as corners,
    # not a centred Box: a mesh's bounds are not centred, and lo/hi taken as centre +- half lose an ulp.
    local_corners: np.ndarray
    bound_points: np.ndarray  # (M, 3) world points whose projection bounds its silhouette

    @property
    def is_mesh(self) -> bool:
        return self.spec.kind == "mesh"

    @property
    def box(self) -> Box:
        """A box object's box in the world (box-to-world pose, edge lengths)."""
        return Box(self.spec.pose, self.spec.size)


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
        corners = Box(np.eye(4), obj.size).local_corners()
        hull = corners
        if model is not None:
            hull = np.concatenate([hull, np.asarray(model.vertices, dtype=np.float64)])
    return LabelObject(obj, model, cast_index, corners, apply_points(obj.pose, hull))


def box_precision(box: Box) -> float:
    """How far (world units) a surface that lies on ``box``'s face, or on a plane, may land off it by the
    precision of the depth and of the pose alone: 0.2 % of the box's diagonal (the demo's exact depth lands 4 um
    either side of its 5 cm cube's faces)."""
    return 0.002 * float(np.linalg.norm(box.size))


def box_holds(box: Box, eye: np.ndarray, local: np.ndarray) -> np.ndarray:
    """(N,) bool: which box-frame points ``local`` (N, 3) are the box's object, seen from ``eye`` (world).

    A box drawn from the object's own bounds (the demo's, a spec made from a scene) has faces *on* the object's
    surface, and exact depth lands either side of them by :func:`box_precision`. The object's surface on a face
    faces out of the box, so only a face the camera sees from outside can show it: a point within the precision
    of such a face is the object's. What lies on a face seen only from inside faces into the box: it is beyond
    the object (the table its bottom face stands on, a wall behind it), not the object."""
    half = np.asarray(box.size, dtype=np.float64) / 2
    eps = box_precision(box)
    local_eye = (np.asarray(eye, dtype=np.float64) - box.pose[:3, 3]) @ box.pose[:3, :3]
    near_hi, near_lo = local >= half - eps, local <= -half + eps
    seen_hi, seen_lo = local_eye > half, local_eye < -half
    on_seen = np.any((near_hi & seen_hi) | (near_lo & seen_lo), axis=1)
    on_unseen = np.any((near_hi & ~seen_hi) | (near_lo & ~seen_lo), axis=1)
    return np.all(np.abs(local) <= half + eps, axis=1) & (on_seen | ~on_unseen)


def inside_rigid_box(box: Box, points: np.ndarray) -> np.ndarray:
    """Which ``points`` (N, 3) lie inside ``box`` with a rigid pose (the label math's exact test: no scale
    to divide out, unlike :meth:`Box.contains`, whose similarity handling moves the boundary by an ulp)."""
    local = (points - box.pose[:3, 3]) @ box.pose[:3, :3]
    return np.all(np.abs(local) <= box.size / 2, axis=1)


def box_entry_z(box: Box, eye: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(N,) the z-depth at which rays from ``eye`` along ``directions`` (N, 3) (world, scaled to unit z-depth)
    enter ``box`` (grown by :func:`box_precision`); 0 for an eye inside it, inf for a ray that misses it."""
    half = np.asarray(box.size, dtype=np.float64) / 2 + box_precision(box)
    origin = (np.asarray(eye, dtype=np.float64) - box.pose[:3, 3]) @ box.pose[:3, :3]
    local = np.asarray(directions, dtype=np.float64) @ box.pose[:3, :3]
    # as render.march.ray_box (which is torch's: mesh-only labels need none): a direction parallel to a slab
    # becomes a tiny one, whose slab distances are huge, of one sign outside the slab and of both inside
    local = np.where(np.abs(local) < 1e-12, 1e-12, local)
    t1, t2 = (-half - origin) / local, (half - origin) / local
    near = np.maximum(np.minimum(t1, t2).max(axis=1), 0.0)
    far = np.maximum(t1, t2).min(axis=1)
    return np.where(far >= near, near, np.inf)


def stop_probability(on_object: np.ndarray, in_front: np.ndarray, placed: Optional[np.ndarray] = None
                     ) -> np.ndarray:
    """(N,) float32: the probability that a ray stops on an object first, from the weight it places on the
    object (``on_object``) and in front of it (``in_front``): their ratio, with the light stopped counted as at
    least ``SURFACE_OPACITY`` -- or as all the ray places (``placed``, when given) where that is less. The
    weight behind the object does not count against it: a field lets some light through an object it has not
    made fully opaque, and that light lands on whatever lies behind. Without ``placed`` it is at least 1/2
    exactly where the object holds at least as much weight as lies in front of it, and at least half of
    ``SURFACE_OPACITY``: the object's own weight is the evidence (box objects). With it, a ray that places
    little light, all of it on the object, is sure: nothing else is seen there (a mesh's thin edge)."""
    floor = SURFACE_OPACITY if placed is None else np.minimum(placed, SURFACE_OPACITY)
    stopped = np.maximum(on_object + in_front, floor)
    p = np.divide(on_object, stopped, out=np.zeros(np.shape(stopped)), where=stopped > 0)
    return np.clip(p, 0.0, 1.0).astype(np.float32)


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
    mean_confidence: Optional[float] = None  # mean confidence over the visible mask; None: no confidence map
    #: a box object with a mesh: the share of its visible mask inside the mesh's silhouette (:func:`outline_share`)
    outline_share: Optional[float] = None


@dataclass
class FrameLabels:
    index: int
    instance: np.ndarray  # (H, W) uint16 instance ids (0 = nothing annotated visible)
    category: np.ndarray  # (H, W) uint16 category ids
    depth: np.ndarray  # (H, W) float32 z-depth in world units, NaN = no surface (or not computed)
    confidence: Optional[np.ndarray]  # (H, W) float32 in [0, 1], P(the pixel's label is right); None without a field
    instances: list[InstanceLabels] = field(default_factory=list)
    source_depth: Optional[np.ndarray] = None  # (H, W) the depth source's own z-depth (NaN: not asked / none)
    #: encoded files of these labels, shared by the writers of the frame (:mod:`...export.encoded`)
    encoded: dict = field(default_factory=dict, repr=False, compare=False)

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


@dataclass
class _Silhouette:
    """One object's cast inside the image: z-depth over ``region`` (inf where missed) and its counts."""

    region: Region  # (c0, r0, c1, r1) inside the image
    z: np.ndarray  # (r1 - r0, c1 - c0)
    count_all: int  # hits including beyond the image border
    bbox_all: list[int]

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, bool)
        c0, r0, c1, r1 = self.region
        mask[r0:r1, c0:c1] = np.isfinite(self.z)
        return mask


@dataclass
class _SceneAnswer:
    """The scene for one view, in world units: its surface as an (H, W) map, NaN where not asked (or no surface),
    and the samples along the rays of the decision pixels."""

    z_depth: np.ndarray  # float64
    rows: np.ndarray  # (N,) the pixels asked, in the order of the samples' ray index
    cols: np.ndarray
    ray_of: np.ndarray  # (H, W) int64: the ray index of a pixel, -1 where not asked
    samples: RayWeights  # z in world units
    measured: bool  # the scene measures how sure it is (a field): the label math writes a confidence map
    _weights: Optional[np.ndarray] = None
    _placed: Optional[np.ndarray] = None

    @property
    def n_rays(self) -> int:
        return len(self.rows)

    def weights(self) -> np.ndarray:
        if self._weights is None:
            self._weights = self.samples.weights(self.n_rays)
        return self._weights

    def placed(self) -> np.ndarray:
        """(n_rays,) float64: the weight each ray places in the scene, its opacity (a ray may leak through a
        half-transparent object: the rest is placed nowhere)."""
        if self._placed is None:
            self._placed = np.bincount(self.samples.ray, weights=self.weights(),
                                       minlength=self.n_rays).astype(np.float64)
        return self._placed


@dataclass(frozen=True)
class RenderedView:
    """A view's stages 1-3 (:meth:`FrameLabeler.render`): the casts, the scene's answer and the picture."""

    view: View
    silhouettes: dict[int, _Silhouette]
    mesh_ids: list[int]
    nearest: np.ndarray  # (H, W) int: the nearest annotated mesh's object index, -1: none
    nearest_z: np.ndarray  # (H, W) its z-depth (world units)
    box_regions: dict[int, Optional[Region]]
    scene: Optional[_SceneAnswer]
    image: Optional[np.ndarray]  # the picture for box objects' edges; None: none needed, or none readable


class FrameLabeler:
    """Labels views for a fixed set of objects.

    ``caster`` holds the world-space meshes (``LabelObject.cast_index``); ``scene`` answers z-depth in data
    units at pixels of a view (:class:`~..scene.queries.SceneQuery`), or None for mesh-only labels;
    ``data_scale`` is world units per data unit; ``cast_threads`` how many objects are cast at once (Embree
    releases Python's lock; default: up to 4, no more than the CPUs).
    """

    def __init__(self, objects: list[LabelObject], caster, scene: Optional[SceneQuery] = None, *,
                 data_scale: float = 1.0, units_to_mm: float = 1000.0, options: LabelOptions = LabelOptions(),
                 cast_threads: Optional[int] = None) -> None:
        self.objects = objects
        self.caster = caster
        self.scene = scene
        self.data_scale = float(data_scale)
        self.units_to_mm = float(units_to_mm)
        self.options = options
        self.cast_threads = max(1, int(cast_threads if cast_threads is not None else min(4, os.cpu_count() or 1)))
        self.box_ids = [i for i, o in enumerate(objects) if not o.is_mesh]
        self._annotated_band: Optional[SurfaceBand] = None  # built on first use (mesh-only labels need none)
        self._model_bands: dict[int, Optional[SurfaceBand]] = {}
        self._mesh_reach: Optional[float] = None
        if scene is None and self.box_ids:
            raise NeuralLabelError("box objects need a depth source (a field): their pixels are where the "
                                   "field's surface lies inside the box")

    def label(self, view: View, *, full_depth: bool = True, confidence: bool = True,
              image: Optional[np.ndarray] = None) -> FrameLabels:
        """Labels of ``view``: meshes cast from its ``cam_to_world``, the scene asked through its ``cam_to_data``
        (:meth:`render`, then :meth:`finish`).

        ``full_depth``: ask the scene at every pixel (for depth maps); otherwise only where a visibility or
        box decision needs it. ``confidence``: also the per-pixel confidence (a scene that measures one).
        ``image``: the view's picture (uint8 RGB, H x W) for box objects' edges; by default its photo, read
        when a box object needs it.
        """
        return self.finish(self.render(view, full_depth=full_depth, image=image), confidence=confidence)

    def render(self, view: View, *, full_depth: bool = True, image: Optional[np.ndarray] = None) -> RenderedView:
        """Stages 1-3 of :meth:`label`: the meshes' casts, the scene's render, and the photo that box objects'
        edges need. The label math (:meth:`finish`) reads nothing else, so a bake renders the next view while
        it finishes this one (the casts and the render release Python's lock). Uses none of the state that
        :meth:`finish` builds."""
        shape = (view.height, view.width)
        silhouettes = self.cast_silhouettes(view)  # 1
        mesh_ids = [i for i in silhouettes if self.objects[i].is_mesh]
        nearest, nearest_z = nearest_mesh(silhouettes, mesh_ids, shape)  # 2
        box_regions = {i: projected_region(view.intrinsics, view.cam_to_world, self.objects[i].box.corners(),
                                           (0, 0, view.width, view.height)) for i in self.box_ids}
        scene = self.query_scene(view, nearest >= 0, box_regions, full_depth)  # 3
        if (image is None and scene is not None and scene.measured and self.options.colour_edges
                and any(region is not None for region in box_regions.values())):
            from ..io.images import read_photo_rgb8

            image = read_photo_rgb8(view.image_path, view.width, view.height)
        return RenderedView(view, silhouettes, mesh_ids, nearest, nearest_z, box_regions, scene, image)

    def finish(self, rendered: RenderedView, *, confidence: bool = True) -> FrameLabels:
        """Stages 4-8 of :meth:`label`, the label math, on a view from :meth:`render`. It builds and keeps the
        labeler's surface bands: one call at a time."""
        view, silhouettes, mesh_ids = rendered.view, rendered.silhouettes, rendered.mesh_ids
        nearest, nearest_z, box_regions = rendered.nearest, rendered.nearest_z, rendered.box_regions
        scene = rendered.scene
        shape = (view.height, view.width)
        covered = nearest >= 0
        p_visible, p_on_mesh, p_occluder = self.mesh_visibility(view, covered, nearest_z, scene)  # 4
        # a transparent object's field density is too faint to show it: the ray reaching it is all there is
        transparent = np.isin(nearest, [i for i in mesh_ids if self.objects[i].spec.transparent])
        p_right_visible = np.where(transparent, p_visible, np.minimum(p_visible, p_on_mesh))
        p_right_hidden = np.minimum(1.0 - p_visible, p_occluder)
        if scene is None:  # every covered pixel is visible (p_visible is 1 there)
            mesh_visible = covered
        else:
            mesh_visible = covered & ((1.0 - p_visible <= self.options.occlusion_min_confidence)
                                      | (p_right_visible >= p_right_hidden))
        visible = mesh_masks(silhouettes, mesh_ids, nearest, mesh_visible)
        box_visible, p_box, p_elsewhere = self.box_masks(view, box_regions, scene, mesh_visible)  # 5
        if scene is not None and scene.measured and self.options.colour_edges:
            box_visible = self.colour_edges(view, box_visible, mesh_visible, rendered.image, p_box)
        visible.update(box_visible)
        conf = None
        if scene is not None and scene.measured and confidence:
            p_right = np.where(mesh_visible, p_right_visible, p_right_hidden)
            conf = confidence_map(covered, mesh_visible, p_right, box_regions, box_visible, p_box,  # 6
                                  p_elsewhere)
        windows = {i: silhouettes[i].region for i in mesh_ids}
        windows.update((i, region) for i, region in box_regions.items() if region is not None)
        instance, category = self.id_maps(visible, shape, windows)
        depth = self.depth_map(mesh_ids, visible, nearest_z, mesh_visible, scene)  # 7
        instances = self.instance_records(view, silhouettes, visible, np.isfinite(depth), box_regions, conf,  # 8
                                          windows)
        return FrameLabels(view.index, instance, category, depth, conf, instances,
                           source_depth=None if scene is None else scene.z_depth)

    # --- stages ------------------------------------------------------------------------------------------

    def cast_silhouettes(self, view: View) -> dict[int, _Silhouette]:
        """1. Full silhouette and mesh z-depth of every object with a model, cast only through the pixels of its
        convex hull's projection (:func:`.footprint.footprint`; within the border's extent when
        ``truncated``)."""
        W, H = view.width, view.height
        extent = (-W, -H, 2 * W, 2 * H) if self.options.truncated else (0, 0, W, H)
        cam_from_world = opencv_from_pose(view.cam_to_world)
        cast = [i for i, obj in enumerate(self.objects) if obj.cast_index is not None]

        def silhouette(i: int) -> Optional[_Silhouette]:
            obj = self.objects[i]
            found = footprint(view.intrinsics, cam_from_world, obj.bound_points, extent)
            if found is None:
                return None
            region, window = found
            c0, r0, c1, r1 = region
            if window is None:
                rows, cols = region_pixels(region)
            else:
                rows, cols = np.nonzero(window)
                rows, cols = rows + r0, cols + c0
            z = self.cast_z_depth(obj.cast_index, view, rows, cols)
            hit = np.isfinite(z)
            if not hit.any():
                return None
            inner = (max(c0, 0), max(r0, 0), min(c1, W), min(r1, H))
            z_region = np.full((r1 - r0, c1 - c0), np.inf)
            z_region[rows - r0, cols - c0] = z
            if inner[0] < inner[2] and inner[1] < inner[3]:
                z_inner = z_region[inner[1] - r0:inner[3] - r0, inner[0] - c0:inner[2] - c0]
            else:
                inner, z_inner = (0, 0, 0, 0), np.zeros((0, 0))
            return _Silhouette(inner, z_inner, int(hit.sum()), bbox_bop(rows[hit], cols[hit]))

        threads = min(self.cast_threads, len(cast))
        if threads > 1:  # each object's own mesh and arrays: the casts do not share anything they write
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cast") as pool:
                found = list(pool.map(silhouette, cast))
        else:
            found = [silhouette(i) for i in cast]
        return {i: s for i, s in zip(cast, found) if s is not None}

    def query_scene(self, view: View, covered: np.ndarray, box_regions: dict[int, Optional[Region]],
                    full_depth: bool) -> Optional[_SceneAnswer]:
        """3. One render of the scene (world units): every pixel for a depth map, otherwise the mesh-covered
        pixels and those inside a box's projection; samples along the rays of those decision pixels. None
        without a scene."""
        if self.scene is None:
            return None
        H, W = covered.shape
        need = covered.copy()
        for region in box_regions.values():
            if region is not None:
                c0, r0, c1, r1 = region
                need[r0:r1, c0:c1] = True
        if full_depth:
            rows, cols = np.divmod(np.arange(H * W), W)
        else:
            rows, cols = np.nonzero(need)
        decide = need[rows, cols]
        if getattr(self.scene, "gives_samples", False):
            answer = self.scene.at_pixels(view, rows, cols, samples_for=decide)
            samples = answer.samples
        else:
            answer = self.scene.at_pixels(view, rows, cols)
            surface = samples_from_depth(answer.z_depth)
            samples = surface.select(decide[surface.ray])
        z_depth = np.full((H, W), np.nan)
        z_depth[rows, cols] = answer.z_depth * self.data_scale
        ray_of = np.full((H, W), -1, dtype=np.int64)
        ray_of[rows, cols] = np.arange(len(rows))
        samples = RayWeights(samples.ray, samples.z * self.data_scale, samples.alpha)
        return _SceneAnswer(z_depth, rows, cols, ray_of, samples, bool(self.scene.measures_confidence))

    def mesh_visibility(self, view: View, covered: np.ndarray, nearest_z: np.ndarray,
                        scene: Optional[_SceneAnswer]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """4. Per pixel (float32 maps, 0 where no mesh is): the probability that the nearest mesh is visible --
        the transmittance from the camera up to the mesh, not counting samples within the band of any annotated
        mesh's surface --, the probability that the ray stops on an annotated object first
        (:func:`stop_probability` of the weight it places within that band or inside a closed mesh, against
        the weight in front of the mesh: the field sees the object there), and
        that it stops on one occluding surface (the occluding weight within ``OCCLUDER_WINDOW`` of its own
        median depth: a fog's smeared weight is no surface). All 1 on every covered pixel without a scene."""
        if scene is None:
            return (covered.astype(np.float32),) * 3
        rows, cols = np.nonzero(covered)
        rays = scene.ray_of[rows, cols]
        mesh_z = np.full(scene.n_rays, -np.inf)
        mesh_z[rays] = nearest_z[rows, cols]
        s = scene.samples
        weights = scene.weights()
        band = self.band(s.z)
        # Only samples with some opacity, up to just behind the mesh, matter; their 3D distance to the annotated
        # surfaces decides whose they are.
        idx = np.flatnonzero((s.z < mesh_z[s.ray] + 2 * band) & (s.alpha > 1e-4))
        own = np.zeros(len(s.z), bool)
        if len(idx):
            points = backproject(view.intrinsics, view.cam_to_world, scene.rows[s.ray[idx]],
                                 scene.cols[s.ray[idx]], s.z[idx])
            own[idx] = self.annotated_band().within(points, band[idx])
        counted = (s.z < mesh_z[s.ray]) & ~own
        transmittance = s.transmittance(scene.n_rays, counted)
        # The object's weight also lies past the first band test's reach: inside the mesh (where the field's
        # surface sits behind the true one), or near a side face the ray runs along. It occludes nothing (it
        # is behind the mesh's surface), but it is the object's.
        deeper = np.flatnonzero((s.z >= mesh_z[s.ray]) & (s.z <= mesh_z[s.ray] + self.mesh_depth_reach()) & ~own
                                & np.isfinite(mesh_z[s.ray]) & (s.alpha > 1e-4))
        if len(deeper):
            points = backproject(view.intrinsics, view.cam_to_world, scene.rows[s.ray[deeper]],
                                 scene.cols[s.ray[deeper]], s.z[deeper])
            surfaces = self.annotated_band()
            own[deeper] = surfaces.inside(points) | surfaces.within(points, band[deeper])
        # a field that lets some light through the object (onto the table behind, or nowhere) still sees it
        on_mesh = stop_probability(np.bincount(s.ray[own], weights=weights[own], minlength=scene.n_rays),
                                   1.0 - transmittance, scene.placed())
        occluding = np.flatnonzero(counted)
        occluder = concentrated_weight(s.ray[occluding], s.z[occluding], weights[occluding], scene.n_rays,
                                       window=OCCLUDER_WINDOW)
        maps = [np.zeros(covered.shape, np.float32) for _ in range(3)]
        for out, per_ray in zip(maps, (transmittance, on_mesh, occluder)):
            out[rows, cols] = np.clip(per_ray[rays], 0.0, 1.0)
        return tuple(maps)

    def box_masks(self, view: View, box_regions: dict[int, Optional[Region]], scene: Optional[_SceneAnswer],
                  mesh_visible: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray],
                                                     dict[int, np.ndarray]]:
        """5. Box objects' visible masks; per box, maps (0 outside its region) of the weight each pixel's ray
        places on the object, and of the weight it places elsewhere. The object's weight is the ray's weight inside
        the box (its faces seen from outside hold the surface on them, those seen from inside do not:
        :func:`box_holds`) or within the band of the box's extracted mesh, and above the support plane (found
        in this frame's surface points near the box's bottom). A pixel is the box's where the probability that its
        ray stops on the object first (:func:`stop_probability`) is at least 1/2 and no annotated mesh is visible
        there.
        Overlapping boxes: the smaller box takes the pixel (an object inside a bigger box is usually the one
        the small box was drawn for)."""
        if not self.box_ids:
            return {}, {}, {}
        shape = mesh_visible.shape
        box_owner = np.full(shape, -1, dtype=np.int64)
        owner_volume = np.full(shape, np.inf)
        p_box: dict[int, np.ndarray] = {}
        p_elsewhere: dict[int, np.ndarray] = {}
        s = scene.samples
        weights = scene.weights()
        support = self.options.support_mm / self.units_to_mm
        threshold = 1.0 - self.options.occlusion_min_confidence
        eye = view.cam_to_world[:3, 3]
        for i in self.box_ids:
            region = box_regions[i]
            p_box[i] = np.zeros(shape, np.float32)
            p_elsewhere[i] = np.zeros(shape, np.float32)
            if region is None:
                continue
            box = self.objects[i].box
            rotation, centre = box.pose[:3, :3], box.pose[:3, 3]
            rows, cols = region_pixels(region)
            rays = scene.ray_of[rows, cols]
            plane = self.support(view, box, rows, cols, scene.z_depth[rows, cols], support)
            entry = np.full(scene.n_rays, np.inf)
            entry[rays] = box_entry_z(box, eye, backproject(view.intrinsics, view.cam_to_world, rows, cols,
                                                            np.ones(len(rows))) - eye)
            # The weight of each ray's samples on the object, and in front of the box.
            in_region = np.zeros(scene.n_rays, bool)
            in_region[rays] = True
            idx = np.flatnonzero(in_region[s.ray] & (weights > 1e-6))
            points = backproject(view.intrinsics, view.cam_to_world, scene.rows[s.ray[idx]],
                                 scene.cols[s.ray[idx]], s.z[idx])
            local = (points - centre) @ rotation
            owned = box_holds(box, eye, local)
            model_band = self.model_band(i)
            if model_band is not None:  # asked only of the samples the box does not hold already
                rest = np.flatnonzero(~owned)
                owned[rest] = model_band.within(points[rest], self.band(s.z[idx[rest]]))
            if plane is not None:
                owned &= plane.height(local) > support
            before = ~owned & (s.z[idx] < entry[s.ray[idx]])
            on_box = np.bincount(s.ray[idx], weights=weights[idx] * owned, minlength=scene.n_rays)[rays]
            in_front = np.bincount(s.ray[idx], weights=weights[idx] * before, minlength=scene.n_rays)[rays]
            p_box[i][rows, cols] = np.clip(on_box, 0.0, 1.0)
            p_elsewhere[i][rows, cols] = np.clip(scene.placed()[rays] - on_box, 0.0, 1.0)
            take = (stop_probability(on_box, in_front) >= threshold) & ~mesh_visible[rows, cols]
            volume = float(np.prod(box.size))
            take &= volume < owner_volume[rows, cols]
            box_owner[rows[take], cols[take]] = i
            owner_volume[rows[take], cols[take]] = volume
        return {i: box_owner == i for i in self.box_ids}, p_box, p_elsewhere

    def colour_edges(self, view: View, box_visible: dict[int, np.ndarray], mesh_visible: np.ndarray,
                     image: Optional[np.ndarray], p_box: Optional[dict[int, np.ndarray]] = None
                     ) -> dict[int, np.ndarray]:
        """5b. Box objects' outlines from the picture's colours (:func:`.colour.refine_mask`), inside each box's
        silhouette and off every other label; smaller boxes first, as they win overlaps. With ``p_box`` (5.),
        the mask's core is certain object only where the field is sure of it (``SURE_SHARE``). ``image``: the
        picture :meth:`render` found; unchanged without one (a synthetic view, a photo that cannot be read)."""
        from .colour import refine_mask

        if not any(mask.any() for mask in box_visible.values()):
            return box_visible
        if image is None or image.shape[:2] != (view.height, view.width):
            return box_visible
        refined = dict(box_visible)
        taken = mesh_visible.copy()
        for mask in box_visible.values():
            taken |= mask
        extent = (0, 0, view.width, view.height)
        for i in sorted(self.box_ids, key=lambda k: float(np.prod(self.objects[k].box.size))):
            mask = box_visible[i]
            seen = footprint(view.intrinsics, opencv_from_pose(view.cam_to_world), self.objects[i].box.corners(),
                             extent) if mask.any() else None
            if seen is None:
                continue
            (c0, r0, c1, r1), window = seen
            # a margin of certain background around the silhouette for the background's colours
            pad = max(2, int(round(COLOUR_MARGIN * max(view.width, view.height))))
            R0, C0 = max(r0 - pad, 0), max(c0 - pad, 0)
            R1, C1 = min(r1 + pad, view.height), min(c1 + pad, view.width)
            allowed = np.zeros((R1 - R0, C1 - C0), bool)
            allowed[r0 - R0:r1 - R0, c0 - C0:c1 - C0] = True if window is None else window
            crop = (slice(R0, R1), slice(C0, C1))
            inside = mask[crop]
            sure = None
            if p_box is not None and inside.any():
                p = p_box[i][crop]
                sure = p >= SURE_SHARE * np.percentile(p[inside], 90)
            new = refine_mask(image[crop], inside, allowed, taken[crop] & ~inside, sure=sure)
            out = np.zeros_like(mask)
            out[crop] = new
            taken[crop] = (taken[crop] & ~inside) | new
            refined[i] = out
        return refined

    def support(self, view: View, box: Box, rows: np.ndarray, cols: np.ndarray, z: np.ndarray,
                thickness: float):
        """The plane a box object stands on, in the box's frame: the dominant plane among this frame's surface
        points (``z``, world units, at pixels rows/cols) around the box's bottom; None when there is none."""
        rotation, centre = box.pose[:3, :3], box.pose[:3, 3]
        up = box_up_axis(rotation)
        ok = np.isfinite(z)
        local = (backproject(view.intrinsics, view.cam_to_world, rows[ok], cols[ok], z[ok]) - centre) @ rotation
        # the plane fit's tolerance: the support thickness, and never under the box's precision (a depth map's
        # exact table still scatters by its float precision)
        tolerance = max(thickness, box_precision(box))
        return support_plane(local[bottom_zone(local, box.size, up)], up, tolerance,
                             span=lateral_span(box.size, up), seed=view.index)

    def id_maps(self, visible: dict[int, np.ndarray], shape: tuple[int, int],
                windows: Optional[dict[int, Region]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Instance and category id maps (uint16, 0 = nothing annotated visible) of the visible masks;
        ``windows``: the region outside which an object's mask is empty (default: the whole view)."""
        instance = np.zeros(shape, np.uint16)
        category = np.zeros(shape, np.uint16)
        windows = windows or {}
        whole = (0, 0, shape[1], shape[0])
        for i, mask in visible.items():
            c0, r0, c1, r1 = windows.get(i, whole)
            window = (slice(r0, r1), slice(c0, c1))
            mine = mask[window]
            instance[window][mine] = self.objects[i].spec.instance_id
            category[window][mine] = self.objects[i].spec.category_id
        return instance, category

    def depth_map(self, mesh_ids: list[int], visible: dict[int, np.ndarray], nearest_z: np.ndarray,
                  mesh_visible: np.ndarray, scene: Optional[_SceneAnswer]) -> np.ndarray:
        """6. z-depth (float32, world units): the scene's, with the mesh's where a mesh is visible."""
        if scene is None:
            depth = np.where(mesh_visible, nearest_z, np.float32(np.nan))
        else:
            depth = scene.z_depth.copy()
            for i in mesh_ids:
                if self.options.mesh_depth == "all" or self.objects[i].spec.transparent:
                    depth[visible[i]] = nearest_z[visible[i]]
        return depth.astype(np.float32, copy=False)

    def instance_records(self, view: View, silhouettes: dict[int, _Silhouette], visible: dict[int, np.ndarray],
                         has_depth: np.ndarray, box_regions: Optional[dict[int, Optional[Region]]] = None,
                         confidence: Optional[np.ndarray] = None, windows: Optional[dict[int, Region]] = None
                         ) -> list[InstanceLabels]:
        """8. One record per object seen (silhouette or visible pixels; a box object also when its box is in
        view, with 0 visible pixels where the scene holds nothing of it), sorted by instance id. ``windows``:
        the region outside which an object's visible mask is empty (default: the whole view)."""
        cam_from_world = opencv_from_pose(view.cam_to_world)
        instances = []
        box_regions = box_regions or {}
        windows = windows or {}
        for i, obj in enumerate(self.objects):
            record = instance_record(view, obj, silhouettes.get(i), visible.get(i), cam_from_world, has_depth,
                                     in_view=box_regions.get(i) is not None, window=windows.get(i))
            if record is not None:
                mask = record.visible_mask
                if confidence is not None:
                    record.mean_confidence = float(confidence[mask].mean()) if mask.any() else 0.0
                if not obj.is_mesh and i in silhouettes and mask.any():
                    record.outline_share = outline_share(mask, silhouettes[i].full_mask(mask.shape), view)
                instances.append(record)
        instances.sort(key=lambda x: x.instance_id)
        return instances

    # --- helpers -----------------------------------------------------------------------------------------

    def band(self, z: np.ndarray) -> np.ndarray:
        """The occlusion band (world units) at z-depths ``z`` (capped at the band the surfaces were built for)."""
        return np.minimum(self.options.occlusion_abs_mm / self.units_to_mm + self.options.occlusion_rel * z,
                          self.max_band())

    def max_band(self) -> float:
        """The widest band asked for: the relative part at the objects' distance from the origin, plus 4 m
        of reach (cameras stand around the objects)."""
        reach = max((float(np.abs(o.bound_points).max(initial=0.0)) for o in self.objects), default=0.0)
        return self.options.occlusion_abs_mm / self.units_to_mm + self.options.occlusion_rel * (2 * reach + 4.0)

    def mesh_depth_reach(self) -> float:
        """How far behind a mesh's front a ray can still be inside an annotated mesh: the largest mesh's
        diagonal (world units)."""
        if self._mesh_reach is None:
            spans = [np.ptp(o.bound_points, axis=0) for o in self.objects if o.is_mesh and len(o.bound_points)]
            self._mesh_reach = max((float(np.linalg.norm(x)) for x in spans), default=0.0)
        return self._mesh_reach

    def annotated_band(self) -> SurfaceBand:
        """The surfaces of the annotated meshes (world), built on first use."""
        if self._annotated_band is None:
            meshes = [world_object_mesh(o) for o in self.objects if o.is_mesh and o.model is not None]
            self._annotated_band = SurfaceBand(meshes, self.max_band(), spacing=self.band_spacing())
        return self._annotated_band

    def model_band(self, i: int) -> Optional[SurfaceBand]:
        """The surface of box object ``i``'s extracted mesh (world), built on first use; None without one."""
        if i not in self._model_bands:
            obj = self.objects[i]
            self._model_bands[i] = None if obj.model is None else SurfaceBand(
                [world_object_mesh(obj)], self.max_band(), spacing=self.band_spacing())
        return self._model_bands[i]

    def band_spacing(self) -> float:
        """Surface samples every third of the band (a distance is then known to ~1/6 band), never under 0.5 mm
        (memory)."""
        return max(self.options.occlusion_abs_mm / 3.0, 0.5) / self.units_to_mm


    def cast_z_depth(self, cast_index: int, view: View, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """z-depth of mesh ``cast_index`` through pixel centres (rows, cols) of ``view``; inf where missed."""
        dirs_cam = camera_directions(view.intrinsics, np.stack([cols + 0.5, rows + 0.5], axis=-1))  # z = -1
        norms = np.sqrt(np.einsum("ij,ij->i", dirs_cam, dirs_cam))
        dirs = apply_directions(view.cam_to_world, dirs_cam / norms[:, None])
        hit, distance = self.caster.cast(cast_index, view.cam_to_world[:3, 3], dirs)
        return np.where(hit, distance / norms, np.inf)  # distance -> z-depth (unit z per |dir_cam|)


def nearest_mesh(silhouettes: dict[int, _Silhouette], mesh_ids: list[int], shape: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """2. Per pixel, the annotated mesh with the smallest z (-1: none) and that z (inf: none). Box objects'
    extracted meshes take no part: the scene decides their pixels."""
    nearest = np.full(shape, -1, dtype=np.int16)
    nearest_z = np.full(shape, np.inf, dtype=np.float32)  # float32: ~0.1 um at metres
    for i in mesh_ids:
        c0, r0, c1, r1 = silhouettes[i].region
        window_z = nearest_z[r0:r1, c0:c1]
        closer = silhouettes[i].z < window_z
        window_z[closer] = silhouettes[i].z[closer]
        nearest[r0:r1, c0:c1][closer] = i
    return nearest, nearest_z


def mesh_masks(silhouettes: dict[int, _Silhouette], mesh_ids: list[int], nearest: np.ndarray,
               mesh_visible: np.ndarray) -> dict[int, np.ndarray]:
    """Each annotated mesh's visible mask: visible pixels where it is the nearest mesh (looked for within its
    own region only: the rest of the view cannot hold it)."""
    visible = {}
    for i in mesh_ids:
        c0, r0, c1, r1 = silhouettes[i].region
        visible[i] = np.zeros(nearest.shape, bool)
        visible[i][r0:r1, c0:c1] = mesh_visible[r0:r1, c0:c1] & (nearest[r0:r1, c0:c1] == i)
    return visible


def instance_record(view: View, obj: LabelObject, silhouette: Optional[_Silhouette], visible: Optional[np.ndarray],
                    cam_from_world: np.ndarray, has_depth: np.ndarray, in_view: bool = False,
                    window: Optional[Region] = None) -> Optional[InstanceLabels]:
    """Counts, 2D boxes, pose and projected corners of one object; None when the view does not see it (for a
    box object ``in_view``: its box projects into the view). ``window``: the region outside which ``visible``
    is empty (default: the whole view); the counts look only there and in the silhouette's region."""
    shape = (view.height, view.width)
    if silhouette is None and (visible is None or not visible.any()) and not in_view:
        return None
    if visible is None:
        visible = np.zeros(shape, bool)
    if silhouette is not None and obj.is_mesh:
        full = silhouette.full_mask(shape)  # holds the visible mask: visible pixels are nearest hits
        px_all, bbox_obj = silhouette.count_all, silhouette.bbox_all
    elif silhouette is not None:
        model_mask = silhouette.full_mask(shape)
        full = model_mask | visible
        extra = int(np.count_nonzero(visible & ~model_mask))
        px_all = silhouette.count_all + extra  # box pixels beyond its extracted model count too
        bbox_obj = silhouette.bbox_all if extra == 0 else _union_bbox(silhouette.bbox_all, visible)
    else:
        full = visible
    # where the masks can be non-zero: the visible mask's window and the silhouette's region
    c0, r0, c1, r1 = (0, 0, view.width, view.height) if window is None else window
    if silhouette is not None:
        s0, t0, s1, t1 = silhouette.region
        c0, r0, c1, r1 = min(c0, s0), min(r0, t0), max(c1, s1), max(r1, t1)
    inside = (slice(r0, r1), slice(c0, c1))
    if silhouette is None:
        px_all = int(np.count_nonzero(full[inside]))
        bbox_obj = _shifted(bbox_bop_mask(full[inside]), c0, r0)
    px_visib = int(np.count_nonzero(visible[inside]))
    m2c = cam_from_world @ obj.spec.pose
    corners_px, corners_z = project(view.intrinsics, cam_from_world, apply_points(obj.spec.pose, obj.local_corners))
    return InstanceLabels(
        instance_id=obj.spec.instance_id, category_id=obj.spec.category_id, name=obj.spec.name,
        visible_mask=visible, full_mask=full, px_count_all=px_all,
        px_count_valid=int(np.count_nonzero(full[inside] & has_depth[inside])), px_count_visib=px_visib,
        visib_fract=float(px_visib / px_all) if px_all > 0 else 0.0,
        bbox_obj=bbox_obj, bbox_visib=_shifted(bbox_bop_mask(visible[inside]), c0, r0),
        cam_R_m2c=m2c[:3, :3].copy(), cam_t_m2c=m2c[:3, 3].copy(),
        corners_px=corners_px - 0.5, corners_z=corners_z)


def world_object_mesh(obj: LabelObject):
    """An object's model placed at its pose (world)."""
    from .raycast import world_mesh

    return world_mesh(obj.model, obj.spec.pose)


def confidence_map(covered: np.ndarray, mesh_visible: np.ndarray, p_mesh_right: np.ndarray,
                   box_regions: dict[int, Optional[Region]], box_visible: dict[int, np.ndarray],
                   p_box: dict[int, np.ndarray], p_elsewhere: dict[int, np.ndarray]) -> np.ndarray:
    """6. Per pixel, the probability (float32) that its label is right: on a mesh's silhouette
    ``p_mesh_right`` (visible: the ray reaches the mesh and the field sees the object there; occluded: it does
    not reach it, stopped by one surface); a box pixel, its box probability; a pixel labelled nothing, for each
    box it did not get, the weight its ray puts on something other than that box (``p_elsewhere``; the
    lowest counts). Weight the field puts nowhere (a ray that leaks through a half-transparent object) is
    evidence for neither: a pixel whose ray mostly leaks is unsure. 1 where no annotated object can be
    (outside every silhouette and box)."""
    conf = np.ones(covered.shape, np.float32)
    conf[covered] = p_mesh_right[covered]
    boxed = np.zeros(covered.shape, bool)
    for mask in box_visible.values():
        boxed |= mask
    for i, region in box_regions.items():
        if region is None:
            continue
        c0, r0, c1, r1 = region
        window = (slice(r0, r1), slice(c0, c1))
        mine, p, elsewhere = box_visible[i][window], p_box[i][window], p_elsewhere[i][window]
        unlabelled = ~boxed[window] & ~mesh_visible[window]
        c = conf[window]
        c[mine] = np.minimum(c[mine], p[mine])
        c[unlabelled] = np.minimum(c[unlabelled], elsewhere[unlabelled])
    return np.clip(conf, 0.0, 1.0)


def _shifted(bbox: list[int], dx: int, dy: int) -> list[int]:
    """A BOP box of a window's mask in the view's pixels (the window's corner at dx, dy); empty stays empty."""
    return bbox if bbox[2] == -1 else [bbox[0] + dx, bbox[1] + dy, bbox[2], bbox[3]]


def _union_bbox(bbox: list[int], mask: np.ndarray) -> list[int]:
    """BOP box of the union of a BOP box and a (non-empty) mask."""
    mx0, my0, mx1, my1 = _mask_extent(mask)
    if bbox[2] == -1:
        return [mx0, my0, mx1 - mx0, my1 - my0]
    x0, y0 = min(bbox[0], mx0), min(bbox[1], my0)
    x1, y1 = max(bbox[0] + bbox[2], mx1), max(bbox[1] + bbox[3], my1)
    return [x0, y0, x1 - x0, y1 - y0]
