"""Occlusion as a probability, and a confidence that finds the wrong pixels, on analytic fields: a volume density
set by hand (``DensityMarchQuery``) stands in for a trained field, so each case is exact and takes a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from neurallabel.core.data.dataset import Frame
from neurallabel.core.geometry.cameras import Intrinsics, camera_rays
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View
from neurallabel.core.labels.frame import FrameLabeler, LabelOptions, make_label_object
from neurallabel.core.labels.raycast import MeshCaster, world_mesh
from neurallabel.core.scene.queries import DensityMarchQuery, RayWeights, ScenePixels, samples_from_depth
from neurallabel.core.spec import SpecObject
from test_scene_queries import fog_field  # noqa: F401  (a hand-set field: fog in front of a wall)

INTR = Intrinsics(64, 48, 60.0, 60.0, 32.0, 24.0)
DENSE = 2000.0  # per metre: a 5 mm step through it keeps e^-10 of the light


def soft(sdf: np.ndarray, width: float = 0.001) -> np.ndarray:
    """Density of a solid given its signed distance (negative inside), edge blurred over ``width``."""
    return DENSE / (1.0 + np.exp(np.clip(sdf / width, -50, 50)))


def box_sdf(points: np.ndarray, centre, half) -> np.ndarray:
    q = np.abs(points - np.asarray(centre)) - np.asarray(half)
    return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


def sphere_sdf(points: np.ndarray, centre, radius: float) -> np.ndarray:
    return np.linalg.norm(points - np.asarray(centre), axis=1) - radius


def mesh_object(mesh, pose: np.ndarray, instance_id: int = 1, transparent: bool = False) -> SpecObject:
    return SpecObject(f"obj{instance_id}", "thing", instance_id, instance_id, "mesh", pose, Path("m.ply"), None,
                      transparent, mesh)


def labeler(objects: list[SpecObject], scene, options: LabelOptions = LabelOptions()) -> FrameLabeler:
    meshes, items = [], []
    for obj in objects:
        index = None
        if obj.mesh is not None:
            index = len(meshes)
            meshes.append(world_mesh(obj.mesh, obj.pose))
        items.append(make_label_object(obj, obj.mesh, index))
    return FrameLabeler(items, MeshCaster(meshes), scene, options=options)


def view(cam_to_world: np.ndarray = np.eye(4), intr: Intrinsics = INTR) -> View:
    return View.from_frame(Frame(0, Path("x.png"), cam_to_world, intr), Similarity(np.eye(4)))


def field(density, far: float = 2.1) -> DensityMarchQuery:
    return DensityMarchQuery(density, step=0.002, near=0.25, far=far)


def at(z: float) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = [0.0, 0.0, z]
    return pose


CUBE = trimesh.creation.box([0.4, 0.4, 0.4])  # at z = -1: its front face at z = -0.8 (camera looks down -z)


def test_ray_weights_transmittance_and_median() -> None:
    samples = RayWeights(np.array([0, 0, 0, 1]), np.array([1.0, 2.0, 3.0, 5.0]), np.array([0.5, 0.5, 1.0, 0.2]))
    assert samples.weights(3) == pytest.approx([0.5, 0.25, 0.25, 0.2])
    assert samples.transmittance(3, np.array([True, False, True, True])) == pytest.approx([0.0, 0.8, 1.0])
    assert samples.transmittance(3, np.array([True, True, False, False])) == pytest.approx([0.25, 1.0, 1.0])
    median = samples.median_z(3)
    assert median[0] == 1.0 and np.isnan(median[1:]).all()
    surface = samples_from_depth(np.array([np.nan, 2.0]))
    assert list(surface.ray) == [1] and surface.alpha[0] == 1.0


def test_fog_of_clutter_occludes_the_mesh_behind_it() -> None:
    """Unannotated clutter that is a thick, faint fog (its weight smeared over 20 cm: the old confidence gate let
    it occlude nothing) hides the mesh where it keeps most of the light from reaching it. The confidence of
    those pixels is low all the same: smeared weight is no surface (a half-trained field's fog looks like
    this), so the label may be wrong. A crisp plate of clutter is sure to hide it."""
    def density(p):
        cube = soft(box_sdf(p, [0, 0, -1.0], [0.2, 0.2, 0.2]))
        # a 20 cm slab of fog in front of the left half: transmittance e^-3 = 0.05 through it
        fog = np.where((p[:, 0] < 0) & (p[:, 2] < -0.3) & (p[:, 2] > -0.5), 15.0, 0.0)
        return cube + fog

    labels = labeler([mesh_object(CUBE, at(-1.0))], field(density)).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(CUBE, at(-1.0))], None).label(view()).instance == 1
    cols = np.arange(INTR.width)[None, :]
    left, right = mesh_only & (cols < 31), mesh_only & (cols > 32)
    assert left.sum() > 100 and right.sum() > 100
    assert not (labels.instance == 1)[left].any()  # hidden by the fog
    assert (labels.instance == 1)[right].all()
    assert labels.confidence[left].max() < 0.5
    assert labels.confidence[right].min() > 0.9


def test_the_fields_blurred_surface_does_not_occlude_its_own_object_at_the_silhouette() -> None:
    """The field's copy of an annotated sphere is 2 mm too big (as a trained field blurs a surface outward):
    rays at the silhouette graze that shell for centimetres before they hit the mesh. It belongs to the object
    (within the band) and occludes nothing; the old median-depth test hid the sphere's rim."""
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.2)
    def density(p):
        return soft(sphere_sdf(p, [0, 0, -1.0], 0.202), width=0.0005)

    labels = labeler([mesh_object(sphere, at(-1.0))], field(density)).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(sphere, at(-1.0))], None).label(view()).instance == 1
    assert mesh_only.sum() > 300
    assert np.array_equal(labels.instance == 1, mesh_only)
    assert labels.confidence[mesh_only].min() > 0.9


def test_clutter_just_outside_the_band_occludes() -> None:
    """A thin plate of clutter 5 cm in front of the cube's face occludes (outside the band: 5 mm + 2 % of the
    depth, 21 mm here)."""
    def density(p):
        plate = soft(box_sdf(p, [0.1, 0, -0.75], [0.1, 0.3, 0.002]))
        return soft(box_sdf(p, [0, 0, -1.0], [0.2, 0.2, 0.2])) + plate

    labels = labeler([mesh_object(CUBE, at(-1.0))], field(density)).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(CUBE, at(-1.0))], None).label(view()).instance == 1
    origins, dirs, _ = camera_rays(INTR, np.eye(4))
    x_at_plate = (origins + dirs * (0.75 / -dirs[:, 2:3]))[:, 0].reshape(48, 64)
    behind = mesh_only & (x_at_plate > 0.005) & (x_at_plate < 0.195)
    clear = mesh_only & ((x_at_plate < -0.005) | (x_at_plate > 0.205))
    assert behind.sum() > 50 and clear.sum() > 50
    assert not (labels.instance == 1)[behind].any() and (labels.instance == 1)[clear].all()
    assert labels.confidence[behind].min() > 0.9 and labels.confidence[clear].min() > 0.9


def test_confidence_flags_the_wrong_pixels() -> None:
    """The annotated cube is 4 cm wider than the real one (the field's): its rim is labelled but wrong. The
    confidence -- the ray reaches the mesh and the field sees the object there -- is low on those pixels and
    high on the right ones; the old one (weight near the median depth) was high on both (the wall behind is
    crisp)."""
    def density(p):
        wall = soft(p[:, 2] + 2.0)  # z < -2
        return soft(box_sdf(p, [0, 0, -1.0], [0.18, 0.18, 0.2])) + wall

    scene = field(density)
    labels = labeler([mesh_object(CUBE, at(-1.0))], scene).label(view(), full_depth=False)
    rows, cols = np.divmod(np.arange(INTR.width * INTR.height), INTR.width)
    truth_z = scene.at_pixels(view(), rows, cols).z_depth.reshape(48, 64)
    truth = truth_z < 1.5  # the real cube, not the wall
    labelled = labels.instance == 1
    wrong, right = labelled != truth, labelled == truth
    assert wrong.sum() > 20
    assert np.mean(labels.confidence[wrong] < 0.5) >= 0.9
    assert np.mean(labels.confidence[right] < 0.5) <= 0.1


def test_a_transparent_object_is_visible_through_its_faint_field() -> None:
    """A glass the field barely sees (faint density) is visible and confident: nothing occludes it."""
    def density(p):
        return 0.05 * soft(box_sdf(p, [0, 0, -1.0], [0.2, 0.2, 0.2]))

    labels = labeler([mesh_object(CUBE, at(-1.0), transparent=True)], field(density)).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(CUBE, at(-1.0))], None).label(view()).instance == 1
    assert np.array_equal(labels.instance == 1, mesh_only)
    assert labels.confidence[mesh_only].min() > 0.9


def test_depth_map_scenes_occlude_outside_the_band_only() -> None:
    """A depth map's surface (no samples) occludes a mesh when it lies outside the band around it."""
    class Plane:  # an opaque surface at z = 0.85 (5 cm in front of the face) on the left, 0.801 on the right
        name = "plane"
        measures_confidence = False

        def at_pixels(self, view, rows, cols, *, confidence=False):
            return ScenePixels(np.where(cols < 32, 0.75, 0.798))

    labels = labeler([mesh_object(CUBE, at(-1.0))], Plane()).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(CUBE, at(-1.0))], None).label(view()).instance == 1
    cols = np.arange(64)[None, :]
    assert not (labels.instance == 1)[mesh_only & (cols < 32)].any()
    assert (labels.instance == 1)[mesh_only & (cols >= 32)].all()
    assert labels.confidence is None  # true depth measures no confidence


def test_a_fields_samples_give_its_transmittance(fog_field) -> None:
    """FieldQuery's samples (opacity per sample, from the renderer's weights): the fog slab passes 60 % of the
    light, the wall stops the rest, and the weights rebuilt from them sum to the rendered opacity."""
    from neurallabel.core.scene.queries import FieldQuery
    from test_scene_queries import WALL_Z

    query = FieldQuery(fog_field)
    intr = Intrinsics(16, 12, 20.0, 20.0, 8.0, 6.0)
    rows, cols = np.divmod(np.arange(16 * 12), 16)
    answer = query.at_pixels(view(np.eye(4), intr), rows, cols, samples_for=np.ones(len(rows), bool))
    s = answer.samples
    in_fog = s.z < -WALL_Z - 0.05  # everything in front of the wall
    passed = s.transmittance(len(rows), in_fog)
    assert passed == pytest.approx(0.6, abs=0.05)  # the slab's 40 % opacity (longer paths at the corners)
    weights = s.weights(len(rows))
    # the weights rebuilt from the samples' opacities put the median where the renderer does
    assert s.median_z(len(rows)) == pytest.approx(answer.z_depth, abs=0.02)
    assert weights.sum() / len(rows) == pytest.approx(1.0, abs=0.02)
    assert np.all(np.abs(answer.z_depth + WALL_Z) < 0.05)


def test_a_field_whose_surface_sits_inside_the_mesh_still_sees_the_object() -> None:
    """The field's copy of the cube has its front face 3 cm behind the mesh's (as a trained field's surfaces sink),
    past the band (21 mm here). That weight is inside the closed mesh: it is the object's, so the labels are
    sure; it occludes nothing either (it lies behind the mesh's surface)."""
    def density(p):
        return soft(box_sdf(p, [0, 0, -1.015], [0.21, 0.21, 0.185]))

    labels = labeler([mesh_object(CUBE, at(-1.0))], field(density)).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(CUBE, at(-1.0))], None).label(view()).instance == 1
    assert mesh_only.sum() > 300
    assert np.array_equal(labels.instance == 1, mesh_only)
    assert labels.confidence[mesh_only].min() > 0.9


def test_the_inside_of_a_closed_mesh_is_known_and_an_open_mesh_claims_none() -> None:
    from neurallabel.core.labels.occlusion import SurfaceBand

    band = SurfaceBand([CUBE], 0.01)
    points = np.array([[0.0, 0.0, 0.0], [0.15, 0.1, -0.1], [0.0, 0.0, 0.3], [0.0, 0.0, 0.199], [0.5, 0.5, 0.5]])
    assert band.inside(points).tolist() == [True, True, False, False, False]
    assert band.within(points).tolist() == [False, False, False, True, False]
    open_box = CUBE.copy()
    open_box.update_faces(np.abs(open_box.face_normals[:, 2] - 1.0) > 1e-6)  # no top: the fill leaks out
    assert not SurfaceBand([open_box], 0.01).inside(points).any()


def test_a_box_takes_the_pixels_where_its_object_is_the_first_surface_though_the_field_leaks_through_it() -> None:
    """A box around an object the field sees only faintly (a half-trained field's objects let light through).
    The light behind the object does not count against it: where the box holds more of the ray's weight than
    lies in front of it, and at least half of SURFACE_OPACITY, the pixel is the box's, whether the rest leaks
    past the scene or lands on a wall behind. It stays unsure: under half of the light surely stops on it.
    A haze in front that holds more than the object, or an object fainter still, leaves the pixel unlabelled,
    and unsure too where the field places little light anywhere."""
    from neurallabel.core.spec import SpecObject

    box = SpecObject("box", "box", 1, 1, "box", at(-1.0), None, np.full(3, 0.44), False, None)

    def cube(stops):  # density in the 0.4 m cube at z = -1 that stops ``stops`` of the light reaching it
        return lambda p: -np.log(1 - stops) / 0.4 * (box_sdf(p, [0, 0, -1.0], [0.2, 0.2, 0.2]) < 0)

    def wall(p):
        return soft(p[:, 2] + 2.0)

    def haze(p):  # stops 45 % of the light between the camera and the box
        return np.where((p[:, 2] < -0.3) & (p[:, 2] > -0.7), -np.log(0.55) / 0.4, 0.0)

    cols, rows = np.meshgrid(np.arange(INTR.width), np.arange(INTR.height))
    centre = (np.abs(cols - 31.5) < 8) & (np.abs(rows - 23.5) < 8)  # well inside the cube's projection
    cases = (  # density, the box's, confidence range
        (cube(0.4), True, (0.35, 0.45)),  # 40 % on the object, the rest leaks: its pixel, unsure
        (lambda p: cube(0.4)(p) + wall(p), True, (0.35, 0.45)),  # the 60 % that leaks lands on a wall
        (lambda p: cube(0.4)(p) + haze(p), False, (0.4, 0.5)),  # 45 % in front, 22 % on the object: not its
        (cube(0.2), False, (0.0, 0.05)),  # 20 %: too faint to be a surface; the rest is no evidence either way
    )
    for density, taken, (low, high) in cases:
        labels = labeler([box], field(density, far=2.5)).label(view(), full_depth=False)
        assert (labels.instance == 1)[centre].all() if taken else not (labels.instance == 1)[centre].any()
        assert low <= labels.confidence[centre].min() and labels.confidence[centre].max() <= high


def test_a_mesh_seen_through_a_field_that_leaks_is_sure_where_the_field_sees_nothing_else() -> None:
    """The field stops only 60 % of the light in the cube and nothing behind it (a half-trained field's
    objects let some light through). What it places on the ray lies on the object, so the visible pixels are
    sure; the light that leaks says nothing against the mesh."""
    def density(p):
        return -np.log(0.4) / 0.4 * (box_sdf(p, [0, 0, -1.0], [0.2, 0.2, 0.2]) < 0)

    labels = labeler([mesh_object(CUBE, at(-1.0))], field(density)).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(CUBE, at(-1.0))], None).label(view()).instance == 1
    assert np.array_equal(labels.instance == 1, mesh_only)
    assert labels.confidence[mesh_only].min() > 0.9


def test_a_mesh_the_field_sees_faintly_in_front_of_a_wall_is_sure_where_the_field_sees_nothing_in_front() -> None:
    """The field stops only 35 % of the light in the cube and the wall behind stops the rest (a half-trained
    field's objects let light through onto what lies behind). That light behind says nothing against the mesh:
    the ray stops on the object first (``stop_probability``: 0.35 / 0.5), so the visible pixels are sure where
    the ray crosses the whole cube. Of all the light placed, only a third lies on the object: the share that the
    confidence took before flagged every one of these right pixels."""
    def density(p):
        cube = -np.log(0.65) / 0.4 * (box_sdf(p, [0, 0, -1.0], [0.2, 0.2, 0.2]) < 0)
        return cube + soft(p[:, 2] + 2.0)  # a wall at z = -2

    labels = labeler([mesh_object(CUBE, at(-1.0))], field(density)).label(view(), full_depth=False)
    mesh_only = labeler([mesh_object(CUBE, at(-1.0))], None).label(view()).instance == 1
    assert np.array_equal(labels.instance == 1, mesh_only)
    origins, dirs, _ = camera_rays(INTR, np.eye(4))
    at_back = (origins + dirs * (1.2 / -dirs[:, 2:3]))[:, :2].reshape(48, 64, 2)
    core = mesh_only & np.all(np.abs(at_back) < 0.2, axis=-1)  # rays that cross the whole cube: 35 % stopped
    assert core.sum() > 100
    assert labels.confidence[core].min() > 0.6


def test_stop_probability_counts_the_light_stopped_as_at_least_half_or_all_the_ray_places() -> None:
    from neurallabel.core.labels.frame import stop_probability

    on, front = np.array([0.3, 0.3, 0.1, 0.1, 0.0]), np.array([0.0, 0.3, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(stop_probability(on, front), [0.6, 0.5, 0.2, 0.2, 0.0])
    placed = np.array([0.9, 0.9, 0.9, 0.1, 0.0])  # the fourth ray places little light, all on the object
    np.testing.assert_allclose(stop_probability(on, front, placed), [0.6, 0.5, 0.2, 1.0, 0.0])
