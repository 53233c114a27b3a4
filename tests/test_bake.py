"""`bake` and `neurallabel bake`: shards and re-runs give the same bytes as one run; foreign folders and bad
input are refused with exit code 2 and nothing overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.pipeline.bake import bake
from neurallabel.core.cli import main
from neurallabel.core.scene.queries import TruthQuery
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.labels.frame import LabelOptions
from neurallabel.core.spec import spec_from_scene, write_spec


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_and_frame_ranges_equal_one_run_byte_for_byte(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    depth = TruthQuery(small_scene)
    whole = bake(spec, tmp_path / "whole", depth_source=depth)
    assert whole["frames"] == 12 and whole["instances"] > 0
    # Three shards, then a frame range that overlaps finished frames, into one folder.
    for i in range(3):
        s = bake(spec, tmp_path / "pieces", shard=f"{i}/3", depth_source=depth)
        assert s["frames"] == 4
    s = bake(spec, tmp_path / "ranged", frames="0:5", depth_source=depth)
    assert s["frames"] == 5
    s = bake(spec, tmp_path / "ranged", frames="3:12", depth_source=depth)
    assert (s["frames"], s["skipped"]) == (7, 2)
    reference = tree(tmp_path / "whole")
    assert any(k.startswith("bop/") for k in reference) and "coco/annotations.json" in reference
    assert tree(tmp_path / "pieces") == reference
    assert tree(tmp_path / "ranged") == reference


def test_rerun_skips_finished_frames(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    bake(spec, out, formats=("raw",), frames="0:3")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = bake(spec, out, formats=("raw",), frames="0:3")
    assert (again["frames"], again["skipped"]) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before  # nothing rewritten
    # the colour step cannot change this bake (no box objects): its manifest does not name it, so a folder
    # baked before the option existed resumes, with it on or off
    assert "colour_edges" not in json.loads((out / ".neurallabel" / "bake.json").read_text())["options"]
    off = bake(spec, out, formats=("raw",), frames="0:3", options=LabelOptions(colour_edges=False))
    assert (off["frames"], off["skipped"]) == (0, 3)


def test_foreign_output_folder_is_refused(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    bake(spec, out, formats=("coco",), frames="0:2")
    before = tree(out)
    other = spec_from_scene(small_scene)
    other.objects = other.objects[1:]  # another scene's spec
    with pytest.raises(NeuralLabelError, match=r"output folder .*out: already holds another bake \(different inputs\)"):
        bake(other, out, formats=("coco",), frames="0:2")
    with pytest.raises(NeuralLabelError, match="already holds a bake with different formats") as info:
        bake(spec, out, formats=("coco", "raw"), frames="0:2")
    assert info.value.field == "out"
    assert tree(out) == before
    stranger = tmp_path / "someone_else"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(NeuralLabelError, match=r"output folder .*someone_else: is not empty \(notes.txt ...\) and "
                                               r"holds no NeuralLabel bake"):
        bake(spec, stranger)
    assert tree(stranger) == {"notes.txt": b"mine"}


def test_cli_bake_and_bad_input(small_scene: Path, tmp_path: Path, capsys) -> None:
    spec_path = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json")
    out = tmp_path / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--frames", "0:2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "result" and lines[-1]["frames"] == 2
    assert any(line["event"] == "progress" for line in lines)
    assert (out / "bop" / "train" / "000000" / "scene_gt.json").is_file()
    assert sorted(json.loads((out / "bop" / "train" / "000000" / "scene_gt.json").read_text())) == ["0", "1"]

    def fails(args: list[str], message: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

    fails(["bake", str(spec_path), "--out", str(out), "--frames", "5:99"], "out of range")
    fails(["bake", str(spec_path), "--out", str(out), "--shard", "3/3"], "0 <= I < N")
    fails(["bake", str(spec_path), "--out", str(out), "--formats", "bop,voc"], "unknown format 'voc'")
    fails(["bake", str(tmp_path / "nope.json"), "--out", str(out)], "does not exist")
    # Every object far outside every camera (one alone is a warning: it gets no label).
    spec = json.loads(spec_path.read_text())
    for obj in spec["objects"]:
        obj["pose"][0][3] = 1000.0
    lost = tmp_path / "lost.json"
    lost.write_text(json.dumps(spec))
    fails(["bake", str(lost), "--out", str(tmp_path / "lost_out")], "outside every camera")
    assert not (tmp_path / "lost_out").exists()  # checked before the output folder is touched
    # Box objects need a field.
    spec = json.loads(spec_path.read_text())
    spec["objects"][0] = {k: v for k, v in spec["objects"][0].items() if k != "mesh"} | {
        "kind": "box", "size": [0.1, 0.1, 0.1]}
    boxed = tmp_path / "boxed.json"
    boxed.write_text(json.dumps(spec))
    fails(["bake", str(boxed), "--out", str(tmp_path / "boxed_out")], "no 'field'")


def sphere_field(radius: float = 0.2):
    """A real ``Field`` whose density grid holds a solid sphere at the origin (no training needed)."""
    import torch

    from neurallabel.core.field.model import Field, FieldConfig

    field = Field(FieldConfig(roi_aabb=[[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]], density_resolution=64,
                              plane_resolutions=(16,), occupancy_resolution=32, steps_per_roi=256))
    axis = torch.linspace(-0.5, 0.5, 64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")  # grid_sample's (D, H, W) = (z, y, x)
    signed = (x * x + y * y + z * z).sqrt() - radius
    with torch.no_grad():  # density = softplus(3000 * -signed) * scale: a sharp surface at the radius
        field.density_grid.copy_(((-signed * 3000.0).clamp(-30, 30) - field.density_shift)[None, None])
    field.update_occupancy()
    return field


def write_sphere_scene(folder: Path, radius: float = 0.2, size: tuple[int, int, float] = (40, 30, 40.0)) -> None:
    """``folder/field.pt`` (a sphere of ``radius`` at the origin) and a 2-view ``transforms.json`` around it."""
    from PIL import Image

    from neurallabel.core.field.checkpoint import save_checkpoint

    save_checkpoint(folder / "field.pt", sphere_field(radius))
    (folder / "images").mkdir()
    w, h, f = size
    frames = []
    for i, angle in enumerate((0.0, 0.5)):
        c2w = np.eye(4)  # looking at the origin from 1.2 m, turned about y
        c2w[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        c2w[:3, 3] = c2w[:3, :3] @ [0, 0, 1.2]
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(folder / "images" / f"{i:06d}.png")
        frames.append({"file_path": f"images/{i:06d}.png", "transform_matrix": c2w.tolist()})
    (folder / "transforms.json").write_text(json.dumps(
        {"w": w, "h": h, "fl_x": f, "fl_y": f, "cx": w / 2, "cy": h / 2, "frames": frames}))


def test_field_bake_boxes_and_occlusion(tmp_path: Path) -> None:
    """With a real field (a sphere): the box object takes the sphere's pixels and gets its mesh; a mesh behind
    the sphere is hidden by it; depth and confidence come from the field."""
    import trimesh
    from PIL import Image

    from neurallabel.core.labels.box_mesh import chamfer_distance
    from neurallabel.core.geometry.cameras import camera_rays
    from neurallabel.core.spec import load_spec

    radius = 0.2
    w, h, f = 40, 30, 40.0
    write_sphere_scene(tmp_path, radius, (w, h, f))
    trimesh.creation.box([0.2, 0.2, 0.2]).export(tmp_path / "cube.ply")
    behind = np.eye(4)
    behind[:3, 3] = [0.26, 0.0, -0.35]  # partly behind the sphere, as seen from the first camera
    spec_json = {"neurallabel_spec": 1, "data": "transforms.json", "field": "field.pt", "objects": [
        {"name": "ball", "category": "ball", "category_id": 1, "instance_id": 1, "kind": "box",
         "pose": np.eye(4).tolist(), "size": [0.5, 0.5, 0.5]},
        {"name": "cube", "category": "cube", "category_id": 2, "instance_id": 2, "kind": "mesh",
         "mesh": "cube.ply", "pose": behind.tolist()}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec_json))
    spec = load_spec(tmp_path / "spec.json")
    summary = bake(spec, tmp_path / "out", box_resolution=48)
    assert summary["frames"] == 2 and summary["depth_source"] == "FieldDepth"
    out = tmp_path / "out"
    # box objects with a field: the colour step can move labels, so a bake without it is another bake
    assert json.loads((out / ".neurallabel" / "bake.json").read_text())["options"]["colour_edges"] is True
    with pytest.raises(NeuralLabelError, match="different options"):
        bake(spec, out, box_resolution=48, options=LabelOptions(colour_edges=False))

    # The sphere's model, extracted from the density, in mm: the box object's own obj_id, after the categories'.
    model = trimesh.load(out / "bop" / "models" / "obj_000003.ply", process=False)
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=radius * 1000)
    assert chamfer_distance(model, sphere) <= 0.02 * np.linalg.norm([500, 500, 500])

    dataset = json.loads((tmp_path / "transforms.json").read_text())
    for i, frame in enumerate(dataset["frames"]):
        from neurallabel.core.geometry.cameras import Intrinsics

        intr = Intrinsics(w, h, f, f, w / 2, h / 2)
        origins, dirs, z_per_distance = camera_rays(intr, np.array(frame["transform_matrix"]))
        b = np.einsum("ij,ij->i", dirs, -origins)
        disc = b * b - (np.einsum("ij,ij->i", origins, origins) - radius ** 2)
        on_sphere = (disc > 0).reshape(h, w)
        sphere_z = ((b - np.sqrt(np.maximum(disc, 0))) * z_per_distance).reshape(h, w)
        instance = np.array(Image.open(out / "raw" / "instance" / f"{i:06d}.png"))
        ball = instance == 1
        cube_pixels = instance == 2
        # The ball takes the sphere's pixels but where the (nearer) cube is visible.
        union = np.count_nonzero(ball | (on_sphere & ~cube_pixels))
        assert np.count_nonzero(ball & on_sphere) / union >= 0.9
        depth = np.load(out / "raw" / "depth" / f"{i:06d}.npy")
        inner = on_sphere & ball & (disc.reshape(h, w) > (0.5 * radius) ** 2)
        assert np.nanmax(np.abs(depth[inner] - sphere_z[inner])) < 0.01
        confidence = np.array(Image.open(out / "raw" / "confidence" / f"{i:06d}.png"))
        assert confidence[inner].mean() > 0.8 * 255
    # the ball's mask lies inside its mesh's silhouette; the cube (a mesh object) has no such share
    for frame in json.loads((out / "raw" / "labels.json").read_text())["frames"]:
        shares = {inst["instance_id"]: inst["outline_share"] for inst in frame["instances"]}
        assert shares[1] > 0.95 and shares.get(2) is None, shares
    # The cube sits behind the sphere in the first view: only its part beside the sphere is visible.
    info = json.loads((out / "bop" / "train" / "000000" / "scene_gt_info.json").read_text())["0"]
    cube_info = next(x for x, g in zip(info, json.loads(
        (out / "bop" / "train" / "000000" / "scene_gt.json").read_text())["0"]) if g["obj_id"] == 2)
    assert 0.05 < cube_info["visib_fract"] < 0.8, cube_info


def test_box_objects_with_their_own_meshes_get_their_own_obj_ids(tmp_path: Path) -> None:
    """Two box objects of one category, each around one half of the field's sphere: each gets its own obj_id
    (after every category_id, by instance_id), its own extracted half as that model, and scene_gt uses it."""
    import trimesh
    from pycocotools.coco import COCO

    from neurallabel.core.spec import load_spec

    write_sphere_scene(tmp_path)
    objects = []
    for instance_id, x in ((7, 0.15), (3, -0.15)):  # 3 = left half (lower instance_id: first), 7 = right half
        pose = np.eye(4)
        pose[:3, 3] = [x, 0.0, 0.0]
        objects.append({"name": f"half{instance_id}", "category": "half", "category_id": 5,
                        "instance_id": instance_id, "kind": "box", "pose": pose.tolist(), "size": [0.29, 0.5, 0.5]})
    (tmp_path / "spec.json").write_text(json.dumps({"neurallabel_spec": 1, "data": "transforms.json",
                                                    "field": "field.pt", "objects": objects}))
    bake(load_spec(tmp_path / "spec.json"), tmp_path / "out", box_resolution=32, formats="bop")
    bop = tmp_path / "out" / "bop"
    assert sorted(p.name for p in (bop / "models").glob("*.ply")) == ["obj_000006.ply", "obj_000007.ply"]
    assert sorted(json.loads((bop / "models" / "models_info.json").read_text())) == ["6", "7"]
    for obj_id, side in ((6, -1.0), (7, 1.0)):  # each model: its own half of the sphere, in its box's frame (mm)
        model = trimesh.load(bop / "models" / f"obj_{obj_id:06d}.ply", process=False)
        world_x = np.asarray(model.vertices)[:, 0] + side * 150.0
        assert (side * world_x).min() > -20.0 and (side * world_x).max() > 150.0, obj_id
    scene = bop / "train" / "000000"
    for frame_gt in json.loads((scene / "scene_gt.json").read_text()).values():
        assert sorted((g["instance_id"], g["obj_id"]) for g in frame_gt) == [(3, 6), (7, 7)]
    coco = COCO(str(scene / "scene_gt_coco.json"))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {5: "half", 6: "half3", 7: "half7"}
    assert sorted({a["category_id"] for a in coco.dataset["annotations"]}) == [6, 7]


def test_a_box_without_surface_is_reported_with_no_pixels_and_a_warning(tmp_path: Path) -> None:
    """A box object with no field surface inside: the bake warns, naming it, and reports it with 0 visible
    pixels (no crash); the corrected spec bakes into another folder as usual."""
    from neurallabel.core.labels.frame import LabelWarning
    from neurallabel.core.spec import load_spec

    write_sphere_scene(tmp_path)
    box = {"name": "ball", "category": "ball", "category_id": 1, "instance_id": 1, "kind": "box",
           "pose": np.eye(4).tolist(), "size": [0.5, 0.5, 0.5]}
    empty = np.eye(4)
    empty[:3, 3] = [0.0, 0.35, 0.0]  # in view, above the sphere: nothing there
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"neurallabel_spec": 1, "data": "transforms.json", "field": "field.pt",
                                     "objects": [box | {"pose": empty.tolist(), "size": [0.1, 0.1, 0.1]}]}))
    with pytest.warns(LabelWarning, match="'ball'.*no surface inside its box"):
        summary = bake(load_spec(spec_path), tmp_path / "empty", box_resolution=32)
    labels = json.loads((tmp_path / "empty" / "raw" / "labels.json").read_text())
    records = [inst for frame in labels["frames"] for inst in frame["instances"]]
    assert summary["frames"] == 2 and records and all(r["px_count_visib"] == 0 for r in records)
    spec_path.write_text(json.dumps({"neurallabel_spec": 1, "data": "transforms.json", "field": "field.pt",
                                     "objects": [box]}))
    summary = bake(load_spec(spec_path), tmp_path / "out", box_resolution=32)
    assert summary["frames"] == 2 and summary["instances"] > 0


def test_bakes_share_box_meshes_through_the_model_cache(tmp_path: Path, monkeypatch) -> None:
    """A second bake of the same boxes, field and dataset (another frame, another folder: a preview) takes the
    box mesh from the shared cache instead of extracting it; a moved box, a damaged entry and a cache that
    cannot be written each cost one extraction, never the bake."""
    from neurallabel.core.app.jobs import model_cache_folder
    from neurallabel.core.labels import box_mesh
    from neurallabel.core.spec import load_spec

    write_sphere_scene(tmp_path)
    calls = []
    extract = box_mesh.extract_box_mesh
    monkeypatch.setattr(box_mesh, "extract_box_mesh", lambda *a, **k: calls.append(1) or extract(*a, **k))
    box = {"name": "ball", "category": "ball", "category_id": 1, "instance_id": 1, "kind": "box",
           "pose": np.eye(4).tolist(), "size": [0.5, 0.5, 0.5]}
    spec_path = tmp_path / "spec.json"

    def bake_into(name: str, pose=np.eye(4), frames=None, cache=tmp_path / "cache") -> bytes:
        spec_path.write_text(json.dumps({"neurallabel_spec": 1, "data": "transforms.json", "field": "field.pt",
                                         "objects": [box | {"pose": pose.tolist()}]}))
        summary = bake(load_spec(spec_path), tmp_path / name, formats="raw", frames=frames, box_resolution=32,
                       model_cache=cache)
        assert summary["frames"] == (2 if frames is None else 1)
        return (tmp_path / name / ".neurallabel" / "models" / "instance_000001.npz").read_bytes()

    import neurallabel.core.spec as spec_module

    digested = []
    digest = spec_module._file_digest
    monkeypatch.setattr(spec_module, "_file_digest", lambda path: digested.append(Path(path).name) or digest(path))
    first = bake_into("a")
    assert len(calls) == 1 and len(list((tmp_path / "cache").glob("box-*.npz"))) == 1
    assert digested.count("field.pt") == 1  # the manifest's fingerprint and the box mesh's key share one read
    assert bake_into("b", frames=(1, 2)) == first and len(calls) == 1  # shared: not extracted again
    moved = np.eye(4)
    moved[:3, 3] = [0.02, 0.0, 0.0]
    assert bake_into("c", pose=moved) != first and len(calls) == 2
    assert len(list((tmp_path / "cache").glob("box-*.npz"))) == 2
    for entry in (tmp_path / "cache").glob("box-*.npz"):
        entry.write_bytes(b"not a mesh")
    assert bake_into("d") == first and len(calls) == 3  # damaged: extracted again, the same mesh
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.warns(RuntimeWarning, match="box-mesh cache"):
        assert bake_into("e", cache=tmp_path / "blocked" / "cache") == first
    assert len(calls) == 4

    # the requests' setting: the user's folder (under NEURALLABEL_CACHE), a folder, or none
    monkeypatch.setenv("NEURALLABEL_CACHE", str(tmp_path / "user"))
    assert model_cache_folder("user") == tmp_path / "user" / "box-meshes"
    assert model_cache_folder("none") is None and model_cache_folder(None) is None
    assert model_cache_folder(str(tmp_path / "x")) == tmp_path / "x"
