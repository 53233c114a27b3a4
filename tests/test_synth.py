"""Synthetic views (issue 17): poses from bins around the training cameras, Gumbel-softmax draws that replay,
rendered and baked views, the trust gate, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.synth.distribution import (Bins, histogram_logits, load_weights, logits_from_weights,
                                                 probabilities, replay, sample, total_variation)
from neurallabel.core.synth.poses import (Range, azimuth_arc, clamp_to_hull, orbit_pose, parse_range,
                                          spherical, training_orbit)

RADIUS = 0.2
W, H, F = 48, 36, 44.0


ORBIT = tuple((float(a), 20.0 + 20 * (i % 2), 1.0 + 0.05 * i) for i, a in enumerate(range(0, 360, 45)))


def write_orbit_scene(folder: Path, cameras=ORBIT) -> Path:
    """``folder``: a sphere field (radius RADIUS at the origin, no training), an orbit of cameras around it
    (world = data, z up) and a spec with the sphere as a mesh object; returns the spec's path."""
    import trimesh
    from PIL import Image

    from neurallabel.core.field.checkpoint import save_checkpoint
    from test_bake import sphere_field

    save_checkpoint(folder / "field.pt", sphere_field(RADIUS))
    (folder / "images").mkdir()
    frames = []
    for i, (az, el, dist) in enumerate(cameras):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "images" / f"{i:06d}.png")
        frames.append({"file_path": f"images/{i:06d}.png",
                       "transform_matrix": orbit_pose(np.zeros(3), az, el, dist).tolist()})
    (folder / "transforms.json").write_text(json.dumps(
        {"w": W, "h": H, "fl_x": F, "fl_y": F, "cx": W / 2, "cy": H / 2, "frames": frames}))
    trimesh.creation.icosphere(subdivisions=3, radius=RADIUS).export(folder / "ball.ply")
    spec = {"neurallabel_spec": 1, "data": "transforms.json", "field": "field.pt", "objects": [
        {"name": "ball", "category": "ball", "category_id": 1, "instance_id": 1, "kind": "mesh",
         "mesh": "ball.ply", "pose": np.eye(4).tolist()}]}
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


# --- poses ------------------------------------------------------------------------------------------------


def test_orbit_pose_looks_at_the_centre_from_its_spherical_coordinates() -> None:
    centre = np.array([0.1, -0.2, 0.05])
    pose = orbit_pose(centre, 30.0, 40.0, 2.0)
    assert np.allclose(spherical(centre, pose[None, :3, 3]), [[30.0, 40.0, 2.0]])
    forward = -pose[:3, 2]  # OpenGL: the camera looks down -z
    assert np.allclose(forward, (centre - pose[:3, 3]) / 2.0)
    assert abs(pose[2, 0]) < 1e-12  # no roll: x stays horizontal
    assert np.allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3))


def test_azimuth_arc_is_the_smallest_arc_holding_every_camera() -> None:
    assert azimuth_arc(np.arange(0, 360, 45.0)) == (-180.0, 180.0)  # a full orbit
    assert azimuth_arc(np.array([10.0, 40.0, 70.0])) == (10.0, 70.0)
    low, high = azimuth_arc(np.array([170.0, -170.0, 175.0]))  # across the +-180 seam
    assert (low, high) == (170.0, 190.0)


def test_training_orbit_is_the_hull_of_the_cameras_and_ranges_are_clamped_to_it(tmp_path: Path) -> None:
    from neurallabel.core.data.dataset import load_dataset

    write_orbit_scene(tmp_path)
    orbit = training_orbit(load_dataset(tmp_path / "transforms.json").frames, Similarity.identity())
    assert np.allclose(orbit.centre, 0.0, atol=1e-9)
    assert orbit.azimuth == (-180.0, 180.0)
    assert np.allclose(orbit.elevation, (20.0, 40.0)) and np.allclose(orbit.distance, (1.0, 1.35))
    ranges, cut = clamp_to_hull((Range(0, 90, 2), Range(0, 80, 2), Range(1.1, 1.2, 1)), orbit)
    assert np.allclose([ranges[1].low, ranges[1].high], [20.0, 40.0]) and ranges[1].count == 2
    assert ranges[0] == Range(0, 90, 2) and ranges[2] == Range(1.1, 1.2, 1)
    assert cut == ["elevation 0:80 -> 20:40"]


def test_forward_facing_cameras_have_no_orbit_centre(tmp_path: Path) -> None:
    from neurallabel.core.data.dataset import load_dataset

    write_orbit_scene(tmp_path, [(a, 10.0, 1.0) for a in (0.0, 2.0, 4.0, 6.0)])
    with pytest.raises(NeuralLabelError, match="no orbit centre"):
        training_orbit(load_dataset(tmp_path / "transforms.json").frames, Similarity.identity())


@pytest.mark.parametrize("value, message", [("0:360", "LOW:HIGH:BINS"), ("0:360:0", "empty bins"),
                                            ("90:10:2", "empty bins"), ("a:b:c", "LOW:HIGH:BINS")])
def test_bad_ranges_name_the_axis(value: str, message: str) -> None:
    with pytest.raises(NeuralLabelError, match=message) as info:
        parse_range(value, "azimuth")
    assert info.value.field == "azimuth"


# --- the distribution ---------------------------------------------------------------------------------------


BINS = Bins((Range(0, 360, 4), Range(20, 40, 2), Range(1.0, 2.0, 2)))


def test_draws_replay_exactly_from_their_noise_and_stay_in_their_bins() -> None:
    logits = np.log(np.arange(1, 17, dtype=float))
    draws = sample(logits, BINS, 200, np.random.default_rng(3), tau=0.1)
    again = replay(logits, BINS, draws.gumbel_uniform, draws.offsets, tau=0.1)
    assert np.array_equal(again.bins, draws.bins) and np.array_equal(again.coords, draws.coords)
    for b, (az, el, d) in zip(draws.bins, draws.coords):
        (a0, a1), (e0, e1), (d0, d1) = BINS.bounds(int(b))
        assert a0 <= az <= a1 and e0 <= el <= e1 and d0 <= d <= d1
    assert np.array_equal(BINS.locate(draws.coords), draws.bins)


def test_gumbel_argmax_samples_the_softmax_of_the_logits() -> None:
    p = np.zeros(16)
    p[[1, 6, 11]] = [0.6, 0.3, 0.1]
    logits = logits_from_weights(p, 16)
    assert np.all(np.isfinite(logits))  # a zero weight is a finite logit, never log 0
    draws = sample(logits, BINS, 4000, np.random.default_rng(0))
    freq = np.bincount(draws.bins, minlength=16) / 4000
    assert total_variation(freq, p) < 0.03


def test_bad_tau_and_weights_are_refused() -> None:
    with pytest.raises(NeuralLabelError, match="tau") as info:
        sample(np.zeros(16), BINS, 1, np.random.default_rng(0), tau=0.0)
    assert info.value.field == "tau"
    with pytest.raises(NeuralLabelError, match="not all 0"):
        logits_from_weights(np.zeros(16), 16)
    with pytest.raises(NeuralLabelError, match="3 values for 16 bins"):
        logits_from_weights([1, 2, 3], 16)


def test_weights_from_a_psi_json_and_the_pose_histogram(tmp_path: Path) -> None:
    coords = np.array([[10.0, 25.0, 1.2], [100.0, 35.0, 1.8], [15.0, 22.0, 1.1]])
    logits = histogram_logits(coords, BINS)
    p = probabilities(logits)
    assert p[BINS.locate(coords[:1])[0]] == pytest.approx(2 / 3, abs=1e-6)
    (tmp_path / "psi.json").write_text(json.dumps({"probabilities": p.tolist()}))
    assert np.allclose(probabilities(load_weights(str(tmp_path / "psi.json"), BINS)), p, atol=1e-6)
    assert np.array_equal(load_weights("uniform", BINS), np.zeros(16))


# --- synthetic views ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """One synth run of 6 views over the sphere scene (shared by the tests that read its output)."""
    from neurallabel.core.spec import load_spec
    from neurallabel.core.synth.views import SynthOptions, bake_synthetic

    folder = tmp_path_factory.mktemp("orbit")
    spec = load_spec(write_orbit_scene(folder))
    notices: list[str] = []
    options = SynthOptions(views=6, elevation="0:60:2", seed=4)
    summary = bake_synthetic(spec, folder / "out", options, notice=notices.append)
    return folder, spec, options, summary, notices


def test_synthetic_views_are_a_normal_bake_with_their_own_scene(synth_run) -> None:
    from PIL import Image

    folder, spec, options, summary, notices = synth_run
    out = folder / "out"
    assert summary["baked"] == 6 and summary["inside_geometry"] == 0 and summary["untrusted"] == 0
    assert notices == ["warning: clamped to the training cameras' hull: elevation 0:60 -> 20:40 "
                       "(--allow-extrapolation keeps them)"]
    scene = out / "bop" / "train" / "000001"
    gt = json.loads((scene / "scene_gt.json").read_text())
    assert sorted(gt) == [str(i) for i in range(6)] and all(v[0]["obj_id"] == 1 for v in gt.values())
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    image = coco["images"][0]
    assert image["synthetic"] is True and np.array(image["camera"]["K"]).shape == (3, 3)
    transforms = json.loads((out / "synth" / "transforms.json").read_text())
    pose = np.array(transforms["frames"][0]["transform_matrix"])
    assert np.allclose(pose, image["camera"]["cam_to_world"])  # world = data here
    assert np.allclose(spherical(np.zeros(3), pose[None, :3, 3])[0],
                       [transforms["frames"][0][k] for k in ("azimuth", "elevation", "distance")])
    # the rendered RGB sits in the BOP scene; the sphere is where the mesh's mask says (field and mesh agree)
    rgb = np.array(Image.open(scene / "rgb" / "000000.png"))
    assert rgb.shape == (H, W, 3)
    mask = np.array(Image.open(scene / "mask_visib" / "000000_000000.png")) > 0
    depth = np.array(Image.open(scene / "depth" / "000000.png"))
    assert mask.sum() > 50 and np.all(depth[mask] > 0)
    confidence = np.array(Image.open(out / "raw" / "confidence" / "000000.png"))
    assert confidence[mask].mean() > 0.8 * 255


def test_psi_json_and_draws_replay_the_run(synth_run) -> None:
    folder, spec, options, summary, notices = synth_run
    synth = folder / "out" / "synth"
    psi = json.loads((synth / "psi.json").read_text())
    assert psi["tau"] == 0.1 and len(psi["bins"]) == 16 and psi["ranges"]["elevation"][:2] == pytest.approx([20, 40])
    assert sum(psi["probabilities"]) == pytest.approx(1.0)
    with np.load(synth / "draws.npz") as z:
        bins = Bins(tuple(Range(*psi["ranges"][k]) for k in ("azimuth", "elevation", "distance")))
        again = replay(np.array(psi["logits"]), bins, z["gumbel_uniform"], z["offsets"], psi["tau"])
        assert np.array_equal(again.coords, z["coords"])
    frames = json.loads((synth / "transforms.json").read_text())["frames"]
    assert np.allclose([[f["azimuth"], f["elevation"], f["distance"]] for f in frames], again.coords)


def test_a_rerun_resumes_and_another_draw_is_refused(synth_run) -> None:
    from neurallabel.core.synth.views import SynthOptions, bake_synthetic

    folder, spec, options, summary, notices = synth_run
    again = bake_synthetic(spec, folder / "out", options)
    assert again["skipped"] == 6 and again["baked"] == 0
    with pytest.raises(NeuralLabelError) as info:
        bake_synthetic(spec, folder / "out", SynthOptions(views=6, seed=5))
    assert info.value.field == "out"


def test_trust_gate_drops_or_flags_unconfident_views_and_cameras_inside_geometry(tmp_path: Path) -> None:
    from neurallabel.core.geometry.view import View
    from neurallabel.core.spec import load_spec
    from neurallabel.core.synth.views import (RenderedQuery, SynthOptions, bake_synthetic, inside_geometry,
                                              synthetic_intrinsics)
    from neurallabel.core.field.model import load_field
    from neurallabel.core.geometry.cameras import Intrinsics

    spec = load_spec(write_orbit_scene(tmp_path))
    strict = bake_synthetic(spec, tmp_path / "strict", SynthOptions(views=3, min_confidence=1.01))
    assert strict["untrusted"] == 3 and strict["untrusted_dropped"] == 3 and strict["baked"] == 0
    flagged = bake_synthetic(spec, tmp_path / "flag", SynthOptions(views=3, min_confidence=1.01,
                                                                    keep_untrusted=True))
    assert flagged["untrusted"] == 3 and flagged["baked"] == 3
    frames = json.loads((tmp_path / "flag" / "synth" / "transforms.json").read_text())["frames"]
    assert all(f["untrusted"] and f["baked"] for f in frames)

    query = RenderedQuery(load_field(tmp_path / "field.pt"))
    intr = synthetic_intrinsics(Intrinsics(W, H, F, F, W / 2, H / 2))
    views = {0: View.synthetic(0, intr, orbit_pose(np.zeros(3), 0, 0, 0.05), Similarity.identity()),
             1: View.synthetic(1, intr, orbit_pose(np.zeros(3), 0, 30, 1.2), Similarity.identity())}
    fresh = load_spec(tmp_path / "spec.json")  # meshes not loaded yet: the mesh's box alone finds it
    assert inside_geometry(views, fresh, None, None) == [0] and fresh.objects[0].mesh is not None
    spec.objects.clear()  # the field alone also finds it
    assert inside_geometry(views, spec, query.density, query.step) == [0]


def test_synth_needs_a_field_of_this_dataset(tmp_path: Path) -> None:
    from neurallabel.core.spec import load_spec
    from neurallabel.core.synth.views import SynthOptions, bake_synthetic

    spec = load_spec(write_orbit_scene(tmp_path))
    spec.field_path = None
    with pytest.raises(NeuralLabelError, match="no 'field'"):
        bake_synthetic(spec, tmp_path / "out", SynthOptions(views=2))


def test_cli_refuses_a_forward_facing_capture_and_a_field_of_another_dataset(tmp_path: Path, capsys) -> None:
    from neurallabel.core.cli import main
    from test_bake_safety import sphere_checkpoint

    forward = tmp_path / "forward"
    forward.mkdir()
    spec = write_orbit_scene(forward, [(a, 10.0, 1.0) for a in (0.0, 2.0, 4.0, 6.0)])
    assert main(["synth", str(spec), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SPEC: the cameras have no orbit centre" in err[0]

    orbit = tmp_path / "orbit"
    orbit.mkdir()
    spec = write_orbit_scene(orbit)
    sphere_checkpoint(orbit / "field.pt", dataset={"path": "/elsewhere/transforms.json",
                                                    "fingerprint": "0123456789abcdef", "frames": 7})
    assert main(["synth", str(spec), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on other frames" in err[0]
    assert not (tmp_path / "out").exists()


# --- the cameras without rendering (the add-on's "Show synthetic cameras") -----------------------------------


def test_outside_hull_flags_views_past_the_training_arc_and_bands() -> None:
    from neurallabel.core.synth.poses import Orbit, outside_hull

    partial = Orbit(np.zeros(3), (170.0, 250.0), (20.0, 40.0), (1.0, 2.0))
    coords = np.array([[180.0, 30.0, 1.5], [-120.0, 30.0, 1.5], [-100.0, 30.0, 1.5], [0.0, 30.0, 1.5],
                       [180.0, 45.0, 1.5], [180.0, 30.0, 0.5], [170.0, 20.0, 2.0]])
    assert outside_hull(coords, partial).tolist() == [False, False, True, True, True, True, False]
    full = Orbit(np.zeros(3), (-180.0, 180.0), (20.0, 40.0), (1.0, 2.0))
    assert not outside_hull(coords[:4], full).any()  # a full orbit: every azimuth is inside


def test_drawn_views_are_the_bakes_cameras(synth_run) -> None:
    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.synth.views import draw_views

    folder, spec, options, summary, notices = synth_run
    heard: list[str] = []
    drawn = draw_views(load_dataset(spec.data_path), Similarity(spec.world_from_data), options, heard.append)
    assert heard == notices  # the same clamping, told the same way
    frames = json.loads((folder / "out" / "synth" / "transforms.json").read_text())["frames"]
    listed = drawn.to_json()
    assert len(listed["views"]) == 6 and listed["extrapolated"] == 0
    for frame, view in zip(frames, listed["views"]):
        assert np.allclose(frame["transform_matrix"], view["cam_to_data"]) and frame["bin"] == view["bin"]
        assert np.allclose(view["cam_to_world"], view["cam_to_data"])  # world = data here
    assert listed["intrinsics"] == {"w": W, "h": H, "fl_x": F, "fl_y": F, "cx": W / 2, "cy": H / 2}


def test_synth_poses_job_flags_extrapolated_views_in_the_world_frame(tmp_path: Path) -> None:
    from neurallabel.core.app.jobs import request_from_job, run

    write_orbit_scene(tmp_path)
    world = np.diag([2.0, 2.0, 2.0, 1.0])
    world[:3, 3] = [1.0, 0.0, 0.5]
    job = {"kind": "synth_poses", "data": str(tmp_path / "transforms.json"), "world_from_data": world.tolist(),
           "views": 40, "elevation": "0:60:3", "allow_extrapolation": True, "seed": 2, "size": "24x18"}
    result = run(request_from_job(job))
    assert result["kind"] == "synth_poses" and len(result["views"]) == 40 and result["clamped"] == []
    # training elevations are 20..40 deg: exactly the views outside that band are extrapolated
    flags = [v["extrapolated"] for v in result["views"]]
    assert flags == [not 20.0 <= v["elevation"] <= 40.0 for v in result["views"]] and 0 < sum(flags) < 40
    assert result["extrapolated"] == sum(flags)
    centre = np.array(result["orbit"]["centre"])
    assert np.allclose(centre, [1.0, 0.0, 0.5], atol=1e-6)  # the world frame, not the data frame
    for v in result["views"]:
        pose = np.array(v["cam_to_world"])
        assert np.allclose(spherical(centre, pose[None, :3, 3])[0], [v["azimuth"], v["elevation"], v["distance"]])
        assert np.allclose(world @ np.array(v["cam_to_data"])[:, 3], pose[:, 3])
    assert (result["intrinsics"]["w"], result["intrinsics"]["h"]) == (24, 18)


@pytest.mark.parametrize("key, value, field", [("azimuth", "0:360:0", "azimuth"), ("distance", "-1:2:2", "distance"),
                                               ("elevation", "0:95:2", "elevation"), ("tau", 0, "tau"),
                                               ("views", 0, "views"), ("seed", -1, "seed"), ("size", "24", "size"),
                                               ("allow_extrapolation", "yes", "allow_extrapolation")])
def test_synth_requests_name_the_bad_field(tmp_path: Path, key: str, value, field: str) -> None:
    from neurallabel.core.app.jobs import request_from_job

    for job in ({"kind": "synth_poses", "data": str(tmp_path / "transforms.json")},
                {"kind": "synth", "spec": str(tmp_path / "spec.json"), "out": str(tmp_path / "out")}):
        with pytest.raises(NeuralLabelError) as info:
            request_from_job({**job, key: value})
        assert info.value.field == field


def test_synth_poses_job_names_the_dataset_and_the_weights(tmp_path: Path) -> None:
    from neurallabel.core.app.jobs import request_from_job, run

    write_orbit_scene(tmp_path, [(a, 10.0, 1.0) for a in (0.0, 2.0, 4.0, 6.0)])
    job = {"kind": "synth_poses", "data": str(tmp_path / "transforms.json"), "views": 2}
    with pytest.raises(NeuralLabelError, match="no orbit centre") as info:
        run(request_from_job(job))
    assert info.value.field == "data"
    orbit = tmp_path / "orbit"
    orbit.mkdir()
    write_orbit_scene(orbit)
    (orbit / "w.json").write_text("[1, 2]")
    with pytest.raises(NeuralLabelError, match="2 values for 16 bins") as info:
        run(request_from_job({**job, "data": str(orbit / "transforms.json"), "weights": str(orbit / "w.json")}))
    assert info.value.field == "weights"
