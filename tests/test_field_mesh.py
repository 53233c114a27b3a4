"""The field's surface as a triangle mesh: the core extraction (marching cubes on the density over the field's
detailed region, colours looking into the surface), `neurallabel export-mesh` and Blender's "Export Field Mesh".
The field is a real ``Field`` holding a sphere (test_bake's ``sphere_field``), so the right answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from neurallabel.core.cli import main
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.scene.field_mesh import extract_field_mesh

from test_bake import sphere_field, write_sphere_scene

RADIUS = 0.2


def looking_colour(field):
    """The field with a colour that is the viewing direction, mapped from [-1, 1] to [0, 1]."""
    field.rgb = lambda points, directions: (directions + 1.0) / 2.0
    return field


def test_the_mesh_of_a_sphere_field_is_the_sphere_coloured_looking_inwards() -> None:
    field = looking_colour(sphere_field(RADIUS))
    mesh, level = extract_field_mesh(field, resolution=48)
    voxel = 1.0 / 48  # the region is the unit cube
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert mesh.is_watertight and np.abs(radii - RADIUS).max() < voxel
    assert level == pytest.approx(np.log(2.0) / field.render_step_size)
    outward = mesh.vertices / radii[:, None]
    assert np.einsum("ij,ij->i", mesh.vertex_normals, outward).min() > 0.9  # normals point out
    # each vertex's colour: the field seen from outside, looking in along the vertex normal
    rgb = mesh.visual.vertex_colors[:, :3].astype(float) / 255.0
    assert np.abs(rgb - (1.0 - mesh.vertex_normals) / 2.0).max() <= 0.5 / 255 + 1e-6


def test_threshold_resolution_and_no_colour() -> None:
    field = sphere_field(RADIUS)
    mesh, _ = extract_field_mesh(field, resolution=16, colour=False)
    assert mesh.visual.kind is None and len(mesh.faces) < len(extract_field_mesh(field, resolution=32)[0].faces)
    with pytest.raises(NeuralLabelError, match="lower --threshold") as info:
        extract_field_mesh(field, resolution=16, threshold=1e12)
    assert info.value.field == "threshold"
    with pytest.raises(NeuralLabelError) as info:
        extract_field_mesh(field, resolution=4)
    assert info.value.field == "resolution"


def test_export_mesh_command_writes_a_ply_and_refuses_bad_output(tmp_path: Path, capsys) -> None:
    from neurallabel.core.field.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "field.pt", sphere_field(RADIUS))
    out = tmp_path / "mesh" / "sphere.ply"
    assert main(["export-mesh", str(tmp_path / "field.pt"), "--out", str(out), "--resolution", "40"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    header = out.read_bytes()[:400].split(b"end_header")[0].decode("ascii")
    assert "property float nx" in header and "property uchar red" in header and "element face" in header
    mesh = trimesh.load(out, process=False)
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - RADIUS).max() < 1.0 / 40
    assert main(["export-mesh", str(tmp_path / "field.pt"), "--out", str(tmp_path / "sphere.obj")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["export-mesh", str(tmp_path / "field.pt"), "--out", str(tmp_path / "a.ply"), "--json",
                 "--threshold", "1e12"]) == 2
    assert not (tmp_path / "a.ply").exists()


FIELD_MESH_SCRIPT = '''
assert bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"]) == {"FINISHED"}
out = {"poll_no_field": bpy.ops.neurallabel.export_field_mesh.poll()}
bpy.context.scene.neurallabel.field_path = ARGS["field"]
out["poll"] = bpy.ops.neurallabel.export_field_mesh.poll()
out["export"] = sorted(bpy.ops.neurallabel.export_field_mesh(filepath=ARGS["ply"], resolution=24))
emit(out)
'''


@pytest.mark.bpy
def test_export_field_mesh_operator_writes_the_workers_mesh(tmp_path: Path) -> None:
    pytest.importorskip("bpy")
    from bpy_helpers import DEV_PRELUDE, run_bpy

    write_sphere_scene(tmp_path)
    ply = tmp_path / "out" / "field_mesh.ply"
    result = run_bpy(DEV_PRELUDE + FIELD_MESH_SCRIPT, {"data": str(tmp_path / "transforms.json"),
                                                      "field": str(tmp_path / "field.pt"), "ply": str(ply)},
                     tmp_path / "bpy", timeout=300)
    assert result == {"poll_no_field": False, "poll": True, "export": ["FINISHED"]}, json.dumps(result)
    mesh = trimesh.load(ply, process=False)
    assert len(mesh.faces) > 100 and np.abs(np.linalg.norm(mesh.vertices, axis=1) - RADIUS).max() < 1.0 / 24
