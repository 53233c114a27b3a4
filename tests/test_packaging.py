"""The wheel: `pip install .` (not editable) gives a working `neurallabel` with every subpackage.

The wheel is built offline from a copy of the source (no build isolation, so the installed setuptools builds
it) and installed into a fresh venv that borrows the main environment's dependencies through a .pth file;
the commands then run with PYTHONPATH unset, from a folder outside the source, so only the wheel's code can
be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from neurallabel.core.spec import spec_from_scene, write_spec

REPO = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "tests", "build", "dist", "*.egg-info", "__pycache__",
                                     ".cache", ".demo", "out")


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE, symlinks=True)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(work / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("neurallabel-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                                "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies come from this environment's site-packages (appended: the wheel's copy wins). A plain
    # path line does not run that folder's own .pth files, so the editable install there stays out.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {"wheel": wheel, "venv": venv, "python": python, "site": site, "env": env, "work": work}


def run(wheel_env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=wheel_env["env"],
                          cwd=wheel_env["work"])


def test_wheel_holds_every_subpackage_and_the_scene_generator(wheel_env):
    names = set(zipfile.ZipFile(wheel_env["wheel"]).namelist())
    source_packages = {p.parent.relative_to(REPO).as_posix() for p in REPO.rglob("__init__.py")
                       if not {"tests", ".venv", "build", "dist", ".git"} & set(p.relative_to(REPO).parts)}
    missing = sorted(p for p in source_packages if f"neurallabel/{p}/__init__.py".replace("/./", "/") not in names)
    assert not missing, f"packages left out of the wheel: {missing}"
    assert "neurallabel/core/export/bop.py" in names and "neurallabel/scripts/make_scene.py" in names
    assert not any(n.startswith(("neurallabel/tests/", "neurallabel/setup.py")) for n in names)


def test_wheel_metadata_has_the_worker_extra_equal_to_requirements_txt(wheel_env):
    """`pip install "neurallabel[worker]"` asks for requirements.txt's pins (the one list) and nothing else; the
    other extras stay."""
    from email.parser import Parser

    with zipfile.ZipFile(wheel_env["wheel"]) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(wheel.read(name).decode())
    pins = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    requires = metadata.get_all("Requires-Dist")
    assert {"worker", "blender", "ray", "dev"} <= set(metadata.get_all("Provides-Extra"))
    assert [r.split(";")[0].strip() for r in requires if r.endswith('extra == "worker"')] == pins
    assert [r for r in requires if ";" not in r] == pins  # the package's own dependencies: the same list


def test_installed_wheel_imports_from_itself_and_shows_help(wheel_env):
    where = run(wheel_env, str(wheel_env["python"]), "-c", "import neurallabel.core.export.bop as m; print(m.__file__)")
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(wheel_env["site"])
    shown = run(wheel_env, str(wheel_env["venv"] / "bin" / "neurallabel"), "--help")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "bake" in shown.stdout and "demo" in shown.stdout


def test_installed_wheel_bakes_a_mesh_only_spec(wheel_env, small_scene, tmp_path):
    spec = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json")
    out = tmp_path / "out"
    baked = run(wheel_env, str(wheel_env["venv"] / "bin" / "neurallabel"), "bake", str(spec), "--out", str(out),
                "--formats", "coco", "--frames", "0:2")
    assert baked.returncode == 0, baked.stderr[-3000:]
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert len(coco["images"]) == 2 and coco["annotations"]


def test_installed_wheel_demo_starts_the_scene_render(wheel_env, tmp_path):
    """The demo's first stage runs the packaged make_scene.py; it is stopped once the render has begun."""
    cmd = [str(wheel_env["venv"] / "bin" / "neurallabel"), "demo", "--out", str(tmp_path / "demo"), "--json"]
    # Its own session, so that stopping it also stops make_scene.py, its child.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=wheel_env["env"],
                            cwd=wheel_env["work"], start_new_session=True)
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "render" in line:  # make_scene's own progress ("demo scene: render rgb") relayed by the demo
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make_scene removes its staging folder on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert any("render" in line for line in seen), (seen[-5:], stderr[-3000:])
