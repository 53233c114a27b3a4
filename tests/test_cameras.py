"""Camera conventions: lens models against OpenCV, pixel-centre convention, rays and projection round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from neurallabel.core.geometry.cameras import (Intrinsics,
    camera_rays,
    distort,
    pixel_centers,
    project_points,
    undistort,
    world_to_camera_opencv)
from neurallabel.core.errors import NeuralLabelError

# The fox camera of ../shared/data/fox/transforms.json (instant-ngp's sample; OPENCV lens).
FOX = Intrinsics(1080, 1920, 1375.52, 1374.49, 554.558, 965.268, "OPENCV",
                 (0.0578421, -0.0805099, -0.000980296, 0.00015575))
FOX_K3 = Intrinsics(1080, 1920, 1375.52, 1374.49, 554.558, 965.268, "OPENCV",
                    (0.0578421, -0.0805099, -0.000980296, 0.00015575, 0.0123))
FISHEYE = Intrinsics(1280, 960, 600.0, 601.5, 641.2, 478.9, "OPENCV_FISHEYE", (0.031, -0.012, 0.004, -0.0007))


def random_pose(rng: np.random.Generator) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    pose[:3, 3] = rng.normal(size=3)
    return pose


def points_in_view(intrinsics: Intrinsics, pose: np.ndarray, rng: np.random.Generator, n: int = 500,
                   margin: float = 0.0) -> np.ndarray:
    """World points that project inside the image (through the distorted camera), at depths 0.5..5."""
    pixels = np.stack([rng.uniform(margin, intrinsics.width - margin, n),
                       rng.uniform(margin, intrinsics.height - margin, n)], axis=-1)
    origins, directions, z_per_distance = camera_rays(intrinsics, pose, pixels)
    z = rng.uniform(0.5, 5.0, n)
    return origins + directions * (z / z_per_distance)[:, None], pixels, z


def opencv_formula(xy: np.ndarray, k1, k2, p1, p2, k3=0.0) -> np.ndarray:
    """OpenCV's projectPoints lens model, written out (docs: camera calibration and 3D reconstruction)."""
    x, y = xy[:, 0], xy[:, 1]
    r2 = x ** 2 + y ** 2
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    x_d = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x ** 2)
    y_d = y * radial + p1 * (r2 + 2 * y ** 2) + 2 * p2 * x * y
    return np.stack([x_d, y_d], axis=-1)


def fisheye_formula(xy: np.ndarray, k1, k2, k3, k4) -> np.ndarray:
    """OpenCV's fisheye (equidistant, Kannala-Brandt) model, written out."""
    r = np.hypot(xy[:, 0], xy[:, 1])
    theta = np.arctan(r)
    theta_d = theta * (1 + k1 * theta ** 2 + k2 * theta ** 4 + k3 * theta ** 6 + k4 * theta ** 8)
    return xy * (theta_d / r)[:, None]


@pytest.mark.parametrize("intrinsics", [FOX, FOX_K3], ids=["k1k2p1p2", "with_k3"])
def test_opencv_distortion_matches_written_formula_and_cv2(intrinsics):
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.6, 0.6, size=(1000, 2))
    ours = distort(intrinsics, xy)
    np.testing.assert_allclose(ours, opencv_formula(xy, *intrinsics.distortion), atol=1e-13)

    # cv2.projectPoints in OpenCV's pixel convention = ours shifted by half a pixel.
    pose = random_pose(rng)
    world, _, _ = points_in_view(intrinsics, pose, rng)
    cam_from_world = world_to_camera_opencv(pose)
    rvec, _ = cv2.Rodrigues(cam_from_world[:3, :3])
    cv_pixels, _ = cv2.projectPoints(world, rvec, cam_from_world[:3, 3], intrinsics.K_opencv,
                                     np.array(list(intrinsics.distortion) + [0.0] * (5 - len(intrinsics.distortion))))
    ours_pixels, z = project_points(intrinsics, pose, world)
    assert np.all(z > 0)
    np.testing.assert_allclose(ours_pixels, cv_pixels[:, 0, :] + 0.5, atol=1e-6)


def test_fisheye_distortion_matches_written_formula_and_cv2():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-1.2, 1.2, size=(1000, 2))
    np.testing.assert_allclose(distort(FISHEYE, xy), fisheye_formula(xy, *FISHEYE.distortion), atol=1e-13)

    pose = random_pose(rng)
    world, _, _ = points_in_view(FISHEYE, pose, rng)
    cam_from_world = world_to_camera_opencv(pose)
    rvec, _ = cv2.Rodrigues(cam_from_world[:3, :3])
    cv_pixels, _ = cv2.fisheye.projectPoints(world[:, None, :], rvec, cam_from_world[:3, 3],
                                             FISHEYE.K_opencv, np.array(FISHEYE.distortion))
    ours_pixels, _ = project_points(FISHEYE, pose, world)
    np.testing.assert_allclose(ours_pixels, cv_pixels[:, 0, :] + 0.5, atol=1e-6)


@pytest.mark.parametrize("intrinsics", [FOX, FOX_K3, FISHEYE], ids=["fox", "fox_k3", "fisheye"])
def test_undistort_inverts_distort_over_the_whole_image_including_corners(intrinsics):
    w, h = intrinsics.width, intrinsics.height
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64)
    grid = np.stack(np.meshgrid(np.linspace(0, w, 61), np.linspace(0, h, 81)), axis=-1).reshape(-1, 2)
    pixels = np.concatenate([corners, grid])
    xy_d = (pixels - [intrinsics.cx, intrinsics.cy]) / [intrinsics.fx, intrinsics.fy]
    xy = undistort(intrinsics, xy_d)
    back = distort(intrinsics, xy) * [intrinsics.fx, intrinsics.fy] + [intrinsics.cx, intrinsics.cy]
    assert np.max(np.abs(back - pixels)) < 1e-6  # pixels


def test_undistort_matches_cv2_undistort_points():
    pixels = np.array([[0.5, 0.5], [1079.5, 1919.5], [540.0, 960.0], [0.0, 1920.0], [1080.0, 0.0], [300.2, 1700.9]])
    ours = undistort(FOX, (pixels - [FOX.cx, FOX.cy]) / [FOX.fx, FOX.fy])
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14)
    theirs = cv2.undistortPointsIter((pixels - 0.5)[:, None, :], FOX.K_opencv, np.array(FOX.distortion),
                                     None, None, criteria)[:, 0, :]
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_ignoring_the_lens_is_off_by_pixels_near_the_border():
    """A loader that dropped k1..p2 would put the fox's corner rays several pixels away."""
    rng = np.random.default_rng(2)
    pose = random_pose(rng)
    corners = np.array([[0.5, 0.5], [1079.5, 0.5], [0.5, 1919.5], [1079.5, 1919.5]])
    origins, directions, z_per_distance = camera_rays(FOX, pose, corners)
    world = origins + directions * (2.0 / z_per_distance)[:, None]
    with_lens, _ = project_points(FOX, pose, world)
    without_lens, _ = project_points(FOX, pose, world, apply_distortion=False)
    np.testing.assert_allclose(with_lens, corners, atol=1e-6)
    offsets = np.linalg.norm(without_lens - corners, axis=1)
    # Measured: 6.2, 7.3, 1.9 and 3.2 px at the four corners (tangential terms make them unequal).
    assert offsets.max() > 5.0 and offsets.mean() > 4.0 and offsets.min() > 1.5, offsets
    centre_ray = camera_rays(FOX, pose, np.array([[FOX.cx, FOX.cy]]))[1]
    np.testing.assert_allclose(centre_ray[0], -pose[:3, 2], atol=1e-12)  # the optical axis is undistorted


def test_scaled_intrinsics_follow_the_pixel_centre_convention():
    small = FOX.scaled(0.25)
    assert (small.width, small.height) == (270, 480)
    assert small.fx == pytest.approx(FOX.fx / 4) and small.cx == pytest.approx(FOX.cx / 4)
    assert small.distortion == FOX.distortion and small.model == FOX.model
    rng = np.random.default_rng(3)
    pose = random_pose(rng)
    world, pixels, _ = points_in_view(FOX, pose, rng)
    small_pixels, _ = project_points(small, pose, world)
    # Pixel (col, row) spans [col, col+1): the image edges map onto each other, so u' = u * 270/1080.
    np.testing.assert_allclose(small_pixels, pixels * [270 / 1080, 480 / 1920], atol=1e-8)
    # A non-integer factor rounds the size and scales x and y by the size ratio actually used.
    odd = FOX.scaled(1 / 3.3)
    assert (odd.width, odd.height) == (round(1080 / 3.3), round(1920 / 3.3))
    assert odd.fx == pytest.approx(FOX.fx * odd.width / 1080) and odd.cy == pytest.approx(FOX.cy * odd.height / 1920)


def test_k_opencv_moves_the_principal_point_half_a_pixel():
    np.testing.assert_allclose(FOX.K_opencv - FOX.K, [[0, 0, -0.5], [0, 0, -0.5], [0, 0, 0]])
    assert FOX.K[0, 2] == FOX.cx  # the property returns a fresh matrix each time


def test_pixel_centers_are_row_major_at_half_pixels():
    centres = pixel_centers(4, 3)
    assert centres.shape == (12, 2)
    np.testing.assert_allclose(centres[0], [0.5, 0.5])
    np.testing.assert_allclose(centres[1], [1.5, 0.5])
    np.testing.assert_allclose(centres[4], [0.5, 1.5])
    np.testing.assert_allclose(centres[-1], [3.5, 2.5])


@pytest.mark.parametrize("intrinsics", [Intrinsics(64, 48, 50.0, 52.0, 31.0, 25.0), FOX, FISHEYE],
                         ids=["pinhole", "fox", "fisheye"])
def test_rays_and_projection_round_trip(intrinsics):
    rng = np.random.default_rng(4)
    pose = random_pose(rng)
    centres = pixel_centers(intrinsics.width, intrinsics.height)
    pixels = centres[rng.choice(len(centres), 400, replace=False)]
    origins, directions, z_per_distance = camera_rays(intrinsics, pose, pixels)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(origins, np.broadcast_to(pose[:3, 3], origins.shape))
    distance = rng.uniform(0.3, 7.0, len(pixels))
    world = origins + directions * distance[:, None]
    back, z_depth = project_points(intrinsics, pose, world)
    np.testing.assert_allclose(back, pixels, atol=1e-6)
    # z_per_distance turns a distance along the ray into z-depth along the optical axis (-z of the pose).
    np.testing.assert_allclose(z_depth, distance * z_per_distance, rtol=1e-10)
    np.testing.assert_allclose(z_depth, (world - pose[:3, 3]) @ -pose[:3, 2], rtol=1e-10)
    # Default pixels: every pixel centre, row-major.
    all_origins, all_dirs, _ = camera_rays(intrinsics, pose)
    assert all_dirs.shape == (intrinsics.width * intrinsics.height, 3)
    np.testing.assert_allclose(all_dirs[1], camera_rays(intrinsics, pose, centres[1:2])[1][0])


def test_bad_intrinsics_are_refused():
    with pytest.raises(NeuralLabelError, match="not supported"):
        Intrinsics(10, 10, 5.0, 5.0, 5.0, 5.0, "FOV")
    with pytest.raises(NeuralLabelError, match="at most 4"):
        Intrinsics(10, 10, 5.0, 5.0, 5.0, 5.0, "OPENCV_FISHEYE", (0.1, 0.1, 0.1, 0.1, 0.1))
    with pytest.raises(NeuralLabelError, match="positive"):
        Intrinsics(0, 10, 5.0, 5.0, 5.0, 5.0)


def test_projected_region_holds_the_projection_and_handles_the_camera_plane():
    """The one projection: ``project`` from a rigid pose equals ``project_points``; a region covers the
    projected pixels, is None behind the camera and the whole extent when points straddle the camera plane."""
    from neurallabel.core.geometry.projection import (backproject, opencv_from_pose, project, projected_region,
                                                      region_pixels)

    rng = np.random.default_rng(5)
    pose = random_pose(rng)
    intr = FOX.scaled(0.1)
    cols = rng.uniform(0, intr.width, 50)
    rows = rng.uniform(0, intr.height, 50)
    z = rng.uniform(0.5, 3.0, 50)
    points = backproject(intr, pose, rows - 0.5, cols - 0.5, z)  # pixel centres at (cols, rows)
    pixels, depth = project(intr, opencv_from_pose(pose), points)
    ref_pixels, ref_depth = project_points(intr, pose, points)
    assert np.allclose(pixels, ref_pixels, atol=1e-9) and np.allclose(depth, ref_depth)
    assert np.allclose(pixels, np.stack([cols, rows], axis=-1), atol=1e-4) and np.allclose(depth, z)

    extent = (0, 0, intr.width, intr.height)
    c0, r0, c1, r1 = projected_region(intr, pose, points, extent, pad=0)
    assert (c0, r0) == (int(np.floor(cols.min())), int(np.floor(rows.min())))
    assert (c1, r1) == (int(np.ceil(cols.max())), int(np.ceil(rows.max())))
    r, c = region_pixels((c0, r0, c1, r1))
    assert len(r) == (c1 - c0) * (r1 - r0) and (r[0], c[0], r[-1], c[-1]) == (r0, c0, r1 - 1, c1 - 1)
    behind = backproject(intr, pose, rows, cols, -z)
    assert projected_region(intr, pose, behind, extent) is None
    assert projected_region(intr, pose, np.concatenate([points, behind]), extent) == extent
