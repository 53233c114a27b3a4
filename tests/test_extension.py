"""The extension as Blender sees it: the zip builds and validates, installs into a fresh bpy session with
``bpy.ops.extensions.package_install_files``, registers its operators, panels and preferences, runs
import_dataset, draws its panels in a background session, and disabling it removes everything it added.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bpy_helpers import INSTALL_PRELUDE, REPO_ROOT, build_extension_zip, run_bpy

pytestmark = pytest.mark.bpy

PUBLIC_OPERATORS = ["neurallabel.import_dataset", "neurallabel.add_box", "neurallabel.add_mesh"]
LATER_OPERATORS = ["neurallabel.snap_to_field", "neurallabel.preview_labels", "neurallabel.export_spec",
                   "neurallabel.bake", "neurallabel.run_sfm", "neurallabel.train_field",
                   "neurallabel.export_field_points", "neurallabel.export_field_mesh", "neurallabel.check_worker",
                   "neurallabel.show_synthetic_cameras", "neurallabel.bake_synthetic"]
PANELS = ["NEURALLABEL_PT_main", "NEURALLABEL_PT_scene", "NEURALLABEL_PT_field", "NEURALLABEL_PT_annotations",
          "NEURALLABEL_PT_bake", "NEURALLABEL_PT_synthetic"]

# A UILayout stand-in that checks what a panel asks for: every `prop` names a real RNA property of its
# data, every `operator` a registered operator, every icon a real icon. Real layouts need a window,
# which a background session has none of.
FAKE_LAYOUT = '''
_ICONS = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())

class FakeLayout:
    def __init__(self, log):
        self.log = log
    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
    def _sub(self, *args, **kwargs):
        return FakeLayout(self.log)
    row = column = box = split = column_flow = grid_flow = _sub
    def _icon(self, kwargs):
        icon = kwargs.get("icon", "NONE")
        assert icon in _ICONS, f"unknown icon {icon!r}"
    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        self._icon(kwargs)
        self.log.append(("prop", name))
    def operator(self, idname, **kwargs):
        module, name = idname.split(".")
        getattr(getattr(bpy.ops, module), name).get_rna_type()  # KeyError if not registered
        self._icon(kwargs)
        self.log.append(("operator", idname))
        return None
    def label(self, **kwargs):
        self._icon(kwargs)
        self.log.append(("label", kwargs.get("text", "")))
    def progress(self, **kwargs):
        assert 0.0 <= kwargs["factor"] <= 1.0
        self.log.append(("progress", kwargs.get("text", "")))
    def separator(self, **kwargs):
        pass

def draw_panels(names):
    log = []
    for name in names:
        cls = getattr(bpy.types, name)
        if hasattr(cls, "poll") and not cls.poll(bpy.context):
            continue
        panel = type("P", (), {"layout": FakeLayout(log)})()
        cls.draw(panel, bpy.context)
    return log
'''

# Snapshot of everything an add-on can register, to compare before install and after disable.
SNAPSHOT = '''
def snapshot():
    types = sorted(name for name in dir(bpy.types))
    props = {}
    for name in ("Scene", "Object", "WindowManager", "Mesh", "Camera", "Collection", "Image", "ViewLayer",
                 "World", "Material", "Preferences"):
        props[name] = sorted(getattr(bpy.types, name).bl_rna.properties.keys())
    handlers = {h: len(getattr(bpy.app.handlers, h)) for h in dir(bpy.app.handlers)
                if not h.startswith("_") and isinstance(getattr(bpy.app.handlers, h), list)}
    return {"types": types, "props": props, "handlers": handlers, "addons": sorted(bpy.context.preferences.addons.keys())}
'''

INSTALL_SCRIPT = '''
import json, sys
import bpy
ARGS = json.loads(sys.argv[-1])
''' + SNAPSHOT + '''
BEFORE = snapshot()
''' + INSTALL_PRELUDE.split("ARGS = json.loads(sys.argv[-1])", 1)[1] + FAKE_LAYOUT + '''
out = {"before": BEFORE, "package": EXT_PACKAGE, "module_file": ext.__file__}
out["operators"] = {op: hasattr(bpy.types, op.split(".")[0].upper() + "_OT_" + op.split(".")[1])
                    for op in ARGS["operators"]}
out["registered_ops"] = sorted(n for n in dir(bpy.types) if n.startswith("NEURALLABEL_OT_"))
out["panels"] = {p: [getattr(getattr(bpy.types, p, None), a, None) for a in ("bl_space_type", "bl_region_type",
                 "bl_category", "bl_parent_id")] for p in ARGS["panels"]}
prefs = bpy.context.preferences.addons[EXT_PACKAGE].preferences
out["prefs"] = {"type": type(prefs).__name__, "worker_python": prefs.worker_python, "device": prefs.device}
prefs_mod = ext.addon.preferences
out["worker_python_default"] = prefs_mod.worker_python(bpy.context)
out["site_packages"] = prefs_mod.dependencies_path()
out["install_commands"] = prefs_mod.install_commands(sys.executable, "/target")
out["scene_props"] = sorted(bpy.types.Scene.bl_rna.properties["neurallabel"].fixed_type.bl_rna.properties.keys())
out["object_props"] = sorted(bpy.types.Object.bl_rna.properties["neurallabel"].fixed_type.bl_rna.properties.keys())

# Panels draw in every state: empty scene, imported scene, box / mesh annotation active, job running.
logs = {"empty": draw_panels(ARGS["panels"])}
result = bpy.ops.neurallabel.import_dataset(filepath=ARGS["data"])
out["import"] = sorted(result)
out["cameras"] = len(ext.addon.scene_io.dataset_cameras(bpy.context.scene.neurallabel.root))
logs["imported"] = draw_panels(ARGS["panels"])
bpy.ops.neurallabel.add_box()
logs["box"] = draw_panels(ARGS["panels"])
bpy.context.active_object.neurallabel.role = "MESH"
props = bpy.context.scene.neurallabel
props.job_running, props.job_progress, props.job_stage, props.use_frame_range = True, 0.25, "bake", True
logs["mesh_running"] = draw_panels(ARGS["panels"])
props.job_running = False
out["logs"] = logs
prefs_log = []
fake_prefs = type("P", (), {"layout": FakeLayout(prefs_log), "worker_python": prefs.worker_python,
                            "device": prefs.device, "bl_rna": prefs.bl_rna})()
type(prefs).draw(fake_prefs, bpy.context)
out["prefs_log"] = prefs_log

# Greyed-out buttons explain why: add_box needs Object Mode.
bpy.ops.object.mode_set(mode="EDIT")
out["add_box_poll_edit"] = bpy.ops.neurallabel.add_box.poll()
try:
    bpy.ops.neurallabel.add_box()
    out["add_box_edit_error"] = None
except RuntimeError as exc:
    out["add_box_edit_error"] = str(exc)
bpy.ops.object.mode_set(mode="OBJECT")

# Disable: every class, property and handler the extension added is gone.
bpy.ops.preferences.addon_disable(module=EXT_PACKAGE)
out["after_disable"] = snapshot()
out["scene_has_neurallabel"] = hasattr(bpy.types.Scene, "neurallabel")
out["site_on_path"] = out["site_packages"] in sys.path
emit(out)
'''


def package_dependencies() -> list[str]:
    """``[project] dependencies`` as setuptools computes them from pyproject.toml (what pip installs)."""
    from setuptools.config.pyprojecttoml import read_configuration

    return read_configuration(REPO_ROOT / "pyproject.toml", expand=True)["project"]["dependencies"]


def test_one_dependency_list() -> None:
    """The readers the engine needs are in it (COLMAP scenes, box meshes), nothing unused is, torch leads."""
    dependencies = package_dependencies()
    names = [d.split("==")[0].lower() for d in dependencies]
    assert dependencies[0] == "torch==2.13.0" and all("==" in d for d in dependencies)
    assert {"pycolmap", "pymcubes", "numpy", "pycocotools"} <= set(names) and "imageio" not in names
    assert len(set(names)) == len(names)


def test_zip_content(tmp_path: Path) -> None:
    zip_path = build_extension_zip(tmp_path / "dist")
    assert zip_path.name == "neurallabel-0.1.0.zip"
    names = zipfile.ZipFile(zip_path).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    for required in ("core/geometry/cameras.py", "core/data/dataset.py", "core/worker.py", "core/app/worker.py",
                     "addon/properties.py", "addon/scene_io.py", "addon/worker_jobs.py", "requirements.txt",
                     "operators/import_dataset.py", "operators/annotate.py", "operators/dependencies.py",
                     "operators/field_jobs.py", "panels/sidebar.py"):
        assert required in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", ".venv/", "dist/"))
                or "__pycache__" in n or n.endswith(".pyc")
                or (n.startswith("scripts/") and n != "scripts/bake.py")]


def test_build_command_and_manifest_errors(tmp_path: Path) -> None:
    script = REPO_ROOT / "scripts" / "build_extension.py"
    ok = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "out")], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).is_file()
    # A broken manifest: one line naming the file and the problem, exit code 2, no zip.
    source = tmp_path / "src"
    source.mkdir()
    (source / "__init__.py").write_text("def register(): pass\ndef unregister(): pass\n")
    manifest = (REPO_ROOT / "blender_manifest.toml").read_text().replace('id = "neurallabel"', 'id = "neural label"')
    (source / "blender_manifest.toml").write_text(manifest)
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "bad"), "--source", str(source)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and str(source / "blender_manifest.toml") in lines[0] and '"id"' in lines[0], lines
    assert not list((tmp_path / "bad").glob("*.zip"))
    (source / "blender_manifest.toml").write_text('schema_version = "1.0.0"\nid = \n')
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "bad"), "--source", str(source)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_install_enable_use_and_disable(small_scene: Path, tmp_path: Path) -> None:
    zip_path = build_extension_zip(tmp_path / "dist")
    out = run_bpy(INSTALL_SCRIPT, {"zip": str(zip_path), "data": str(small_scene / "transforms.json"),
                                   "operators": PUBLIC_OPERATORS + LATER_OPERATORS, "panels": PANELS}, tmp_path)
    assert out["package"] == "bl_ext.nltest.neurallabel"
    assert str(tmp_path) in out["module_file"]  # the installed copy runs, not the working tree
    for op in PUBLIC_OPERATORS:
        assert out["operators"][op], f"{op} is not registered"
    assert "NEURALLABEL_OT_install_dependencies" in out["registered_ops"]
    for panel, (space, region, category, parent) in out["panels"].items():
        assert (space, region, category) == ("VIEW_3D", "UI", "NeuralLabel"), panel
        assert parent == (None if panel == "NEURALLABEL_PT_main" else "NEURALLABEL_PT_main"), panel
    # Preferences live under the extension's package; the worker defaults to Blender's own Python.
    assert out["prefs"] == {"type": "NeuralLabelPreferences", "worker_python": "", "device": "auto"}
    assert out["worker_python_default"] == sys.executable
    assert out["site_packages"].endswith("nltest/neurallabel/site-packages")
    torch_cmd, core_cmd = out["install_commands"]
    assert torch_cmd == [sys.executable, "-m", "pip", "install", "--upgrade", "--target", "/target",
                         "torch==2.13.0"]
    assert core_cmd[:7] == torch_cmd[:7] and not any("torch" in c for c in core_cmd)
    # The installed add-on installs exactly the package's dependencies, torch first and alone.
    assert torch_cmd[7:] + core_cmd[7:] == package_dependencies()
    for name in ("dataset_path", "field_path", "output_dir", "formats", "device", "occlusion_tolerance",
                 "occlusion_tolerance_relative", "use_frame_range", "frame_start", "frame_end", "job_running",
                 "job_progress", "job_stage", "root", "synth"):
        assert name in out["scene_props"], name
    for name in ("role", "category", "category_id", "instance_id", "transparent", "mesh_path"):
        assert name in out["object_props"], name
    assert out["import"] == ["FINISHED"] and out["cameras"] == 12
    logs = {state: [tuple(entry) for entry in log] for state, log in out["logs"].items()}
    assert ("operator", "neurallabel.import_dataset") in logs["empty"]
    assert ("label", "12 cameras") in logs["imported"]
    assert {("prop", "azimuth_bins"), ("prop", "weights"), ("operator", "neurallabel.show_synthetic_cameras"),
            ("operator", "neurallabel.bake_synthetic")} <= set(logs["imported"])
    assert ("prop", "category") in logs["box"] and ("prop", "mesh_path") not in logs["box"]
    assert ("prop", "mesh_path") in logs["mesh_running"] and any(k == "progress" for k, _ in logs["mesh_running"])
    assert ("prop", "frame_end") in logs["mesh_running"]
    prefs_log = [tuple(entry) for entry in out["prefs_log"]]
    assert ("prop", "worker_python") in prefs_log and ("operator", "neurallabel.install_dependencies") in prefs_log
    assert out["add_box_poll_edit"] is False
    assert "Switch to Object Mode" in out["add_box_edit_error"]
    # Disabling removes every type, property and handler it added.
    before, after = out["before"], out["after_disable"]
    assert not out["scene_has_neurallabel"] and not out["site_on_path"]
    assert after["props"] == before["props"]
    assert set(after["types"]) == set(before["types"]), set(after["types"]) ^ set(before["types"])
    assert after["handlers"] == before["handlers"]
    assert "bl_ext.nltest.neurallabel" not in after["addons"]
