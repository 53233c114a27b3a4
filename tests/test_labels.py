"""Label math against Cycles ground truth: meshes at their true poses reproduce the true instance ids and depth;
unannotated clutter occludes; box objects take the pixels whose surface lies inside the box."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh

from neurallabel.core.labels.box_mesh import chamfer_distance, density_threshold, extract_box_mesh
from neurallabel.core.data.dataset import load_transforms
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View
from neurallabel.core.scene.queries import ScenePixels, TruthQuery, weight_near_surface
from neurallabel.core.labels.frame import FrameLabeler, LabelOptions, make_label_object
from neurallabel.core.labels.raycast import MeshCaster, world_mesh
from neurallabel.core.spec import LabelSpec, spec_from_scene
from neurallabel.core.data.truth import load_scene_truth


def labeler_for(spec: LabelSpec, scene, options: LabelOptions = LabelOptions()) -> FrameLabeler:
    meshes, objects = [], []
    for obj in spec.objects:
        index = None
        if obj.kind == "mesh":
            index = len(meshes)
            meshes.append(world_mesh(obj.mesh, obj.pose))
        objects.append(make_label_object(obj, obj.mesh, index))
    return FrameLabeler(objects, MeshCaster(meshes), scene, data_scale=spec.data_scale,
                        units_to_mm=spec.units_to_mm, options=options)


def view_of(spec: LabelSpec, frame) -> View:
    return View.from_frame(frame, Similarity(spec.world_from_data))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def per_object_iou(pred: np.ndarray, truth: np.ndarray, ids) -> list[float]:
    return [iou(pred == i, truth == i) for i in ids if (truth == i).any() or (pred == i).any()]


@pytest.mark.parametrize("with_depth", [True, False], ids=["true-depth", "mesh-only"])
def test_meshes_at_true_pose_reproduce_true_instance_ids(small_scene: Path, with_depth: bool) -> None:
    truth = load_scene_truth(small_scene)
    spec = spec_from_scene(small_scene)
    dataset = load_transforms(spec.data_path)
    labeler = labeler_for(spec, TruthQuery(small_scene) if with_depth else None)
    ids = [o.instance_id for o in truth.objects]
    ious, depth_errors = [], []
    for frame in dataset.frames:
        labels = labeler.label(view_of(spec, frame))
        true_ids = truth.instance_ids(frame.index)
        ious += per_object_iou(labels.instance, true_ids, ids)
        on_mesh = (labels.instance > 0) & (labels.instance == true_ids)
        true_z = truth.z_depth(frame.index).astype(np.float64)
        depth_errors.append(np.abs(labels.depth[on_mesh] - true_z[on_mesh]))
        # Category map and per-instance masks agree with the instance map.
        for inst in labels.instances:
            assert np.array_equal(inst.visible_mask, labels.instance == inst.instance_id)
            assert np.all(labels.category[inst.visible_mask] == inst.category_id)
            assert not np.any(inst.visible_mask & ~inst.full_mask)
            assert inst.px_count_visib <= inst.px_count_all
    assert np.mean(ious) >= 0.99 and min(ious) >= 0.95, ious
    errors_mm = np.concatenate(depth_errors) * 1000.0
    assert np.percentile(errors_mm, 99) <= 0.5, np.percentile(errors_mm, [50, 99, 100])


def test_unannotated_clutter_occludes_annotated_meshes(small_scene: Path) -> None:
    """Leave one object out of the spec: with the scene's depth, it still hides what is behind it."""
    truth = load_scene_truth(small_scene)
    dataset = load_transforms(truth.transforms_path)
    full = spec_from_scene(small_scene)
    mesh_only = labeler_for(full, None)
    # The object that hides most pixels of the others becomes the unannotated clutter.
    hidden_by = {}
    for frame in dataset.frames:
        labels = mesh_only.label(view_of(full, frame))
        true_ids = truth.instance_ids(frame.index)
        for inst in labels.instances:
            behind = inst.full_mask & (true_ids != inst.instance_id) & (true_ids > 0)
            for other in np.unique(true_ids[behind]):
                hidden_by[int(other)] = hidden_by.get(int(other), 0) + int(np.count_nonzero(
                    behind & (true_ids == other)))
    clutter_id = max(hidden_by, key=hidden_by.get)
    assert hidden_by[clutter_id] > 20, "the scene has no occlusion to test"
    spec = spec_from_scene(small_scene)
    spec.objects = [o for o in spec.objects if o.instance_id != clutter_id]
    with_depth = labeler_for(spec, TruthQuery(small_scene))
    without_depth = labeler_for(spec, None)
    wrong_with, wrong_without, ious = 0, 0, []
    for frame in dataset.frames:
        view = view_of(spec, frame)
        true_ids = truth.instance_ids(frame.index).copy()
        clutter = true_ids == clutter_id
        true_ids[clutter] = 0
        a = with_depth.label(view, full_depth=False, confidence=False)
        b = without_depth.label(view)
        wrong_with += int(np.count_nonzero(clutter & (a.instance > 0)))
        wrong_without += int(np.count_nonzero(clutter & (b.instance > 0)))
        ious += per_object_iou(a.instance, true_ids, [o.instance_id for o in spec.objects])
    assert wrong_without > 20  # mesh-only labels wrongly paint the clutter's pixels...
    assert wrong_with <= 0.02 * wrong_without  # ...the depth test leaves them alone
    assert np.mean(ious) >= 0.98


def test_box_objects_take_the_surface_inside_their_box(small_scene: Path) -> None:
    truth = load_scene_truth(small_scene)
    dataset = load_transforms(truth.transforms_path)
    names = tuple(o.name for o in truth.objects)
    spec = spec_from_scene(small_scene, box_objects=names, box_margin=0.003)
    # Raise each box's floor above the table so that the table top is not inside it (the user's box rests on
    # the object, the object on the table).
    for obj in spec.objects:
        lift = 0.006
        obj.size = obj.size - [0.0, 0.0, lift]
        obj.pose = obj.pose.copy()
        obj.pose[:3, 3] += obj.pose[:3, 2] * lift / 2
    labeler = labeler_for(spec, TruthQuery(small_scene))
    ious = []
    for frame in dataset.frames:
        labels = labeler.label(view_of(spec, frame), full_depth=False)
        ious += per_object_iou(labels.instance, truth.instance_ids(frame.index), [o.instance_id for o in spec.objects])
    assert np.mean(ious) >= 0.90, ious


def test_embree_distances_match_the_analytic_sphere() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    pose = np.eye(4)
    pose[:3, 3] = [0.05, -0.02, -1.0]
    placed = world_mesh(mesh, pose)
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(1000, 3)) * 0.25
    directions[:, 2] = -1.0
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    origins = np.zeros_like(directions)
    hit_e, dist_e = MeshCaster([placed], backend="embree").cast(0, origins, directions)
    assert 200 < hit_e.sum() < 950
    # Against the analytic sphere: the icosphere's flat faces lie inside it (hits are never nearer), and away
    # from the grazing rim within its sagitta (~1% of the radius).
    centre = pose[:3, 3]
    b = directions[hit_e] @ centre
    disc = b * b - (centre @ centre - 0.3 ** 2)
    analytic = b - np.sqrt(disc)
    assert np.all(dist_e[hit_e] >= analytic - 1e-9)
    central = disc > 0.3 ** 2 - (0.3 * 0.7) ** 2  # rays passing within 0.7 r of the centre
    assert central.sum() > 100 and np.all(dist_e[hit_e][central] - analytic[central] < 0.01 * 0.3)


def test_box_mesh_from_density_is_the_largest_surface() -> None:
    centre = np.array([0.3, 0.2, 0.1])
    radius = 0.05
    floater = np.array([0.35, 0.26, 0.15])  # a small blob in the corner of the box, to be dropped

    def density(points: np.ndarray) -> np.ndarray:
        inside = np.linalg.norm(points - centre, axis=1) < radius
        speck = np.linalg.norm(points - floater, axis=1) < 0.006
        return np.where(inside | speck, 500.0, 0.0)

    pose = np.eye(4)
    pose[:3, 3] = centre + [0.01, 0.0, 0.0]
    size = np.array([0.14, 0.13, 0.13])
    mesh = extract_box_mesh(density, pose, size, np.eye(4), resolution=64)
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    sphere.apply_translation(centre - pose[:3, 3])  # the mesh is in the box's frame
    assert chamfer_distance(mesh, sphere) <= 0.02 * np.linalg.norm(size)
    assert np.allclose(mesh.bounds.mean(axis=0), centre - pose[:3, 3], atol=0.003)
    # The threshold follows the voxel size: a density below ln2/voxel yields no surface.
    voxel = size.max() / 64
    weak = extract_box_mesh(lambda p: np.where(np.linalg.norm(p - centre, axis=1) < radius,
                                                0.9 * density_threshold(voxel), 0.0),
                            pose, size, np.eye(4), resolution=64)
    assert weak is None


def test_confidence_is_the_weight_near_the_surface() -> None:
    import torch

    # Ray 0: all weight at the surface; ray 1: weight split between 1.0 and 2.0 (a glass and the wall behind).
    out = {"ray_indices": torch.tensor([0, 0, 1, 1]), "t_starts": torch.tensor([0.995, 1.4, 0.995, 1.995]),
           "t_ends": torch.tensor([1.005, 1.41, 1.005, 2.005]), "weights": torch.tensor([0.97, 0.01, 0.5, 0.45])}
    conf = weight_near_surface(out, torch.tensor([1.0, 1.0], dtype=torch.float64), 2).numpy()
    assert conf == pytest.approx([0.97, 0.5])


def test_world_from_data_similarity_gives_the_same_labels_in_metric_units(small_scene: Path) -> None:
    """Cameras in a data frame scaled by 1/2 and turned: world poses and meshes stay metric, labels agree."""
    truth = load_scene_truth(small_scene)
    dataset = load_transforms(truth.transforms_path)
    plain = spec_from_scene(small_scene)
    scaled = spec_from_scene(small_scene)
    # The data frame is the true world at half scale (what an SfM reconstruction might give); the spec's world
    # is the true world turned and shifted: world = turn @ (2 * data).
    turn = np.eye(4)
    turn[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    turn[:3, 3] = [0.3, -0.1, 0.2]
    scaled.world_from_data = turn @ np.diag([2.0, 2.0, 2.0, 1.0])
    for obj in scaled.objects:
        obj.pose = turn @ obj.pose
    depth = TruthQuery(small_scene)

    class HalfDepth:  # the true depth in data units (half the metres)
        name = "half"
        measures_confidence = False

        def at_pixels(self, view, rows, cols, *, confidence=False):
            return ScenePixels(depth.at_pixels(view, rows, cols).z_depth / 2.0)

    a, b = labeler_for(plain, depth), labeler_for(scaled, HalfDepth())
    assert b.data_scale == pytest.approx(2.0)
    for frame in dataset.frames[:4]:
        la = a.label(view_of(plain, frame))
        cam_data = frame.cam_to_data.copy()
        cam_data[:3, 3] /= 2.0  # a rigid camera pose in the half-scale data frame
        data_frame = replace(frame, cam_to_data=cam_data)
        view = view_of(scaled, data_frame)
        assert np.allclose(view.cam_to_world, turn @ frame.cam_to_data)
        lb = b.label(view)
        assert np.array_equal(la.instance, lb.instance)
        assert np.allclose(la.depth, lb.depth, equal_nan=True, atol=1e-6)
        for x, y in zip(la.instances, lb.instances):
            assert np.allclose(x.cam_t_m2c, y.cam_t_m2c, atol=1e-9) and np.allclose(x.cam_R_m2c, y.cam_R_m2c)


def test_distorted_camera_labels_sit_on_pixel_centres() -> None:
    """With lens distortion, every labelled pixel's 3D point projects back (through the lens) onto its centre."""
    from neurallabel.core.geometry.cameras import Intrinsics, camera_directions, project_points
    from neurallabel.core.data.dataset import Frame
    from neurallabel.core.spec import SpecObject

    intr = Intrinsics(96, 72, 80.0, 80.0, 47.0, 37.0, "OPENCV", (-0.25, 0.06, 0.001, -0.002))
    cube = trimesh.creation.box([0.3, 0.3, 0.3])
    pose = np.eye(4)
    pose[:3, 3] = [0.12, -0.05, -0.9]
    spec = LabelSpec(None, Path("."), None, objects=[SpecObject("cube", "cube", 1, 1, "mesh", pose,
                                                                 Path("cube.ply"), None, False, cube)])
    view = view_of(spec, Frame(0, Path("x.png"), np.eye(4), intr))
    labels = labeler_for(spec, None).label(view)
    rows, cols = np.nonzero(labels.instance == 1)
    assert len(rows) > 300
    z = labels.depth[rows, cols].astype(np.float64)
    points = camera_directions(intr, np.stack([cols + 0.5, rows + 0.5], axis=-1)) * z[:, None]
    local = points - pose[:3, 3]
    assert np.allclose(np.abs(local).max(axis=1), 0.15, atol=1e-5)  # on the cube's surface
    pixels, _ = project_points(intr, np.eye(4), points)
    assert np.allclose(pixels, np.stack([cols + 0.5, rows + 0.5], axis=-1), atol=1e-4)


def test_a_surface_in_front_hides_the_mesh_and_the_same_light_smeared_as_fog_does_not() -> None:
    """A sheet in front of a cube stops 70 % of the light on one surface: occluded at the default
    occlusion_min_confidence (0.5) and at 0, visible when occlusion must be 80 % sure. The same 70 % smeared over
    a 20 cm fog (a field trained for minutes leaves such fog in front of cameras it was not trained from) is no
    surface: the visible label is more likely right than the occluded one (0.3 against the fog's concentrated
    share), so the cube stays visible at every setting, with confidence 0.3."""
    from neurallabel.core.geometry.cameras import Intrinsics
    from neurallabel.core.data.dataset import Frame
    from neurallabel.core.scene.queries import DensityMarchQuery
    from neurallabel.core.spec import SpecObject

    intr = Intrinsics(40, 30, 40.0, 40.0, 20.0, 15.0)
    cube = trimesh.creation.box([0.4, 0.4, 0.4])
    pose = np.eye(4)
    pose[:3, 3] = [0.0, 0.0, -1.0]
    spec = LabelSpec(None, Path("."), None, objects=[SpecObject("cube", "cube", 1, 1, "mesh", pose,
                                                                 Path("cube.ply"), None, False, cube)])
    optical_depth = -np.log(0.3)

    def field(near_z, far_z):
        def density(p):
            inside = np.all(np.abs(p - [0, 0, -1.0]) <= 0.2, axis=1)
            layer = (p[:, 2] > near_z) & (p[:, 2] < far_z)
            return np.where(inside, 1e4, 0.0) + np.where(layer, optical_depth / (far_z - near_z), 0.0)
        return DensityMarchQuery(density, step=0.001, near=0.1, far=1.5)

    view = view_of(spec, Frame(0, Path("x.png"), np.eye(4), intr))
    mesh_pixels = labeler_for(spec, None).label(view).instance == 1
    assert mesh_pixels.sum() > 100
    sheet, fog = field(-0.508, -0.492), field(-0.6, -0.4)
    cases = [(sheet, 0.5, False), (sheet, 0.8, True), (sheet, 0.0, False),
             (fog, 0.5, True), (fog, 0.8, True), (fog, 0.0, True)]
    for scene, min_conf, visible in cases:
        labels = labeler_for(spec, scene, LabelOptions(occlusion_min_confidence=min_conf)).label(
            view, full_depth=False)
        assert np.array_equal(labels.instance == 1, mesh_pixels if visible else np.zeros_like(mesh_pixels)), \
            (scene is fog, min_conf)
        # the confidence of the label given: visible, 0.3 of the light reaches the cube; occluded, 0.7 stopped
        # on the sheet
        conf = labels.confidence[mesh_pixels]
        assert conf == pytest.approx(0.3 if visible else 0.7, abs=0.03), \
            (scene is fog, min_conf, conf.min(), conf.max())


def test_a_mesh_outside_every_camera_warns_and_gets_no_label(small_scene: Path, tmp_path: Path) -> None:
    import json

    from neurallabel.core.labels.frame import LabelWarning
    from neurallabel.core.pipeline.bake import bake

    spec = spec_from_scene(small_scene)
    lost = spec.objects[0]
    lost.pose = lost.pose.copy()
    lost.pose[0, 3] += 1000.0
    with pytest.warns(LabelWarning, match=f"'{lost.name}' is outside every camera"):
        bake(spec, tmp_path / "out", frames="0:2", formats=("raw",), depth_source=TruthQuery(small_scene))
    frames = json.loads((tmp_path / "out" / "raw" / "labels.json").read_text())["frames"]
    ids = {inst["instance_id"] for frame in frames for inst in frame["instances"]}
    assert ids and lost.instance_id not in ids


def test_coco_ignores_instances_more_likely_wrong_than_right() -> None:
    """COCO: ``ignore`` 1 for an instance whose mean confidence is under 1/2 (iscrowd stays 0), unless it is a box
    object whose mask lies inside its mesh's silhouette; raw keeps the mean confidence and that share per
    instance."""
    from neurallabel.core.data.dataset import Frame
    from neurallabel.core.export.coco import COCO
    from neurallabel.core.export.raw import RAW
    from neurallabel.core.geometry.cameras import Intrinsics
    from neurallabel.core.labels.frame import FrameLabels, InstanceLabels

    view = view_of(LabelSpec(None, Path("."), None, objects=[]),
                   Frame(0, Path("x.png"), np.eye(4), Intrinsics(8, 6, 8.0, 8.0, 4.0, 3.0)))
    records = []
    for instance_id, conf, share in ((1, 0.9, None), (2, 0.3, None), (3, None, None), (4, 0.3, 0.9),
                                     (5, 0.3, 0.2)):
        mask = np.zeros((6, 8), bool)
        mask[instance_id, 1:4] = True
        records.append(InstanceLabels(instance_id, 1, f"o{instance_id}", mask, mask, 3, 3, 3, 1.0, [1, 1, 2, 0],
                                      [1, 1, 2, 0], np.eye(3), np.zeros(3), np.zeros((8, 2)), np.ones(8),
                                      mean_confidence=conf, outline_share=share))
    labels = FrameLabels(0, np.zeros((6, 8), np.uint16), np.zeros((6, 8), np.uint16), np.zeros((6, 8), np.float32),
                         None, records)

    class Ctx:
        coco_masks = "rle"

        def image_name(self, view):
            return "x.png"

    anns = {a["instance_id"]: a for a in COCO.fragment(Ctx(), view, labels)["annotations"]}
    assert "ignore" not in anns[1] and anns[2]["ignore"] == 1 and "ignore" not in anns[3]
    # a box object: kept where its mask lies in its mesh's silhouette, ignored where it does not
    assert "ignore" not in anns[4] and anns[5]["ignore"] == 1
    assert all(a["iscrowd"] == 0 for a in anns.values())
    raw = RAW.fragment(Ctx(), view, labels)
    assert [i["mean_confidence"] for i in raw["instances"]] == [0.9, 0.3, None, 0.3, 0.3]
    assert [i["outline_share"] for i in raw["instances"]] == [None, None, None, 0.9, 0.2]


def test_objects_cast_on_several_threads_give_the_same_labels_as_one(small_scene: Path) -> None:
    """Each object's cast runs on its own thread (Embree releases Python's lock): the labels are the same, bit
    for bit, as casting the objects one after another."""
    spec = spec_from_scene(small_scene)
    frames = load_transforms(spec.data_path).frames[:3]
    one, many = labeler_for(spec, None), labeler_for(spec, None)
    one.cast_threads, many.cast_threads = 1, 4
    assert len([o for o in spec.objects if o.kind == "mesh"]) >= 2
    for frame in frames:
        a, b = one.label(view_of(spec, frame)), many.label(view_of(spec, frame))
        assert np.array_equal(a.instance, b.instance) and np.array_equal(a.depth, b.depth, equal_nan=True)
        assert [(x.instance_id, x.px_count_all, x.px_count_visib, x.bbox_obj, x.bbox_visib) for x in a.instances] \
            == [(x.instance_id, x.px_count_all, x.px_count_visib, x.bbox_obj, x.bbox_visib) for x in b.instances]
        for x, y in zip(a.instances, b.instances):
            assert np.array_equal(x.full_mask, y.full_mask) and np.array_equal(x.visible_mask, y.visible_mask)
