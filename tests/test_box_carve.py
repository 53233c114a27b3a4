"""Box objects' meshes carved by the views' labels (core/labels/carve.py): votes per point, and a torus whose field
holds a skirt of fog at its foot -- the skirt lies inside the box and above the floor, so only the views' labels
can take it away."""

from __future__ import annotations

import numpy as np
import trimesh

from neurallabel.core.geometry.box import Box
from neurallabel.core.geometry.projection import backproject
from neurallabel.core.labels import carve
from neurallabel.core.labels.box_mesh import chamfer_distance, extract_box_mesh
from neurallabel.core.labels.occlusion import box_up_axis
from neurallabel.core.scene.queries import DensityMarchQuery
from test_box_objects import INTR, R, look_at, r, surface_z, torus_sdf
from test_occlusion import INTR as FLAT_INTR, DENSE, soft, view

SKIRT = (R + r - 0.01, R + r + 0.02, 0.025)  # fog around the torus's foot: inner, outer radius, height at inner


def skirt_sdf(p: np.ndarray) -> np.ndarray:
    """A sloping ring (not a plane a support could be taken for): its top falls from ``height`` to the floor
    across the ring (a distance bound, good enough for a soft edge)."""
    rho = np.hypot(p[:, 0], p[:, 1])
    inner, outer, height = SKIRT
    top = height * (outer - rho) / (outer - inner)
    return np.max(np.stack([p[:, 2] - top, -p[:, 2], inner - rho, rho - outer]), axis=0)


def foggy_density(p: np.ndarray) -> np.ndarray:
    floor = soft(np.maximum(p[:, 2], -0.05 - p[:, 2]))
    return soft(torus_sdf(p)) + soft(skirt_sdf(p)) + floor


def labelled_truth(scene, cam) -> carve.LabelledView:
    """A view labelled as a perfect colour step would: the torus where the surface is the torus, nothing else."""
    v = view(cam, INTR)
    rows, cols = np.divmod(np.arange(INTR.width * INTR.height), INTR.width)
    z = surface_z(scene, v, rows, cols)
    points = backproject(INTR, cam, rows, cols, z)
    torus = ((torus_sdf(points) < 0.004) & (points[:, 2] > 0.004)).reshape(INTR.height, INTR.width)
    return carve.LabelledView(v, torus, ~torus, z.reshape(INTR.height, INTR.width))


def test_votes_count_what_each_view_sees() -> None:
    v = view(np.eye(4), FLAT_INTR)  # at the origin, looking down -z; the surface is the plane z = -1
    H, W = FLAT_INTR.height, FLAT_INTR.width
    mask = np.zeros((H, W), bool)
    mask[:, :W // 2] = True  # the object: the left half
    other = np.zeros((H, W), bool)
    other[:H // 4, W // 2:] = True  # another label: the top right
    lv = carve.LabelledView(v, mask, ~mask & ~other, np.ones((H, W)))
    x_left, x_right = -0.2, 0.2  # at depth 1: columns 20 and 44 of 64
    points = np.array([
        [x_left * 0.5, 0.0, -0.5],  # on the object's mask: an object vote
        [x_right * 0.5, 0.0, -0.5],  # free pixel, in front of the surface: a free vote
        [x_right, 0.0, -1.04],  # free pixel, 4 cm behind the surface, within the band: a free vote
        [x_right * 1.5, 0.0, -1.5],  # free pixel, 50 cm behind the surface: hidden, no vote
        [x_right * 0.5, 0.35 * 0.5, -0.5],  # another label's pixel (row 3): no vote
        [0.0, 0.0, 0.5],  # behind the camera: no vote
    ])
    on_object, free = carve.votes(points, [lv], band=0.05)
    assert on_object.tolist() == [1, 0, 0, 0, 0, 0]
    assert free.tolist() == [0, 1, 1, 0, 0, 0]
    # one view never carves (MIN_FREE_VOTES); three views that see through a point do
    assert not carve.carved(on_object, free).any()
    on_object, free = carve.votes(points, [lv] * 3, band=0.05)
    assert carve.carved(on_object, free).tolist() == [False, True, True, False, False, False]
    # a point most views see on the object stays, though two see through it
    assert not carve.carved(np.array([9]), np.array([2]))[0]


def test_carving_takes_the_skirt_of_fog_off_a_box_mesh() -> None:
    scene = DensityMarchQuery(foggy_density, step=0.002, near=0.3, far=1.2)
    pose = np.eye(4)
    pose[:3, 3] = [0.0, 0.0, r - 0.004]
    size = np.array([2 * (R + r) + 0.06, 2 * (R + r) + 0.06, 2 * r + 0.016])  # the skirt lies inside the box
    cameras = [look_at([0.5 * np.cos(a), 0.5 * np.sin(a), 0.35]) for a in np.linspace(0, 2 * np.pi, 8,
                                                                                        endpoint=False)]
    cameras += [look_at([0.0, -0.25, 0.55])]
    labelled = [labelled_truth(scene, cam) for cam in cameras]
    assert carve.voting_views([lv.view for lv in labelled], Box(pose, size)) == [lv.view for lv in labelled]

    true_torus = trimesh.creation.torus(R, r)
    true_torus.apply_translation([0.0, 0.0, r - pose[2, 3]])
    diagonal = float(np.linalg.norm(size))

    def outside_torus(mesh) -> float:
        """Share of the mesh's vertices in the skirt's ring, beyond the torus."""
        rho = np.hypot(*np.asarray(mesh.vertices)[:, :2].T)
        return float(np.mean(rho > R + r + 0.004))

    fogged = extract_box_mesh(scene.density, pose, size, np.eye(4), resolution=96, threshold=DENSE / 2)
    assert outside_torus(fogged) > 0.05  # the field alone keeps the skirt: it is dense, in the box, off the floor
    voxel = float(size.max()) / 96
    carved = extract_box_mesh(scene.density, pose, size, np.eye(4), resolution=96, threshold=DENSE / 2,
                              carve=carve.carver(labelled, carve.BAND_VOXELS * voxel),
                              support_points=lambda up: carve.unlabelled_surface(labelled, pose, size, up))
    assert outside_torus(carved) < 0.01
    cd_carved, cd_fogged = chamfer_distance(carved, true_torus), chamfer_distance(fogged, true_torus)
    assert cd_carved <= 0.02 * diagonal and cd_carved <= 0.85 * cd_fogged
    # the floor the views see past the torus is its support: nothing of it is left
    assert (np.asarray(carved.vertices)[:, 2] + pose[2, 3]).min() > 0.0
    assert len(carve.unlabelled_surface(labelled, pose, size, box_up_axis(pose[:3, :3]))) > 100


def test_voting_views_are_training_views_that_see_the_box() -> None:
    import dataclasses

    cams = [look_at([0.5 * np.cos(a), 0.5 * np.sin(a), 0.35]) for a in np.linspace(0, 2 * np.pi, 40, endpoint=False)]
    views = [dataclasses.replace(view(cam, INTR), index=n, split="test" if n % 4 == 0 else "train")
             for n, cam in enumerate(cams)]
    away = dataclasses.replace(view(look_at([0.5, 0.0, 0.35], target=(2.0, 0.0, 0.35)), INTR), index=99)
    box = Box(np.eye(4), np.array([0.2, 0.2, 0.1]))
    chosen = carve.voting_views(views + [away], box, count=12)
    assert len(chosen) == 12 and all(v.split == "train" for v in chosen) and away not in chosen
    indices = [v.index for v in chosen]
    assert indices == sorted(indices) and indices[0] == 1 and indices[-1] == 39  # spread over all of them
    assert carve.voting_views([away], box) == []
