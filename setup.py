"""Package list and extras for setuptools; everything else is in pyproject.toml.

The repository root is the package ``neurallabel`` (pyproject's ``package-dir``), and every folder below it
with an ``__init__.py`` is one of its subpackages, found here so that a new subpackage can never be left out of
a wheel. The extras are here because one of them, ``worker``, is requirements.txt itself (the one dependency
list, also the package's dependencies): a static extras table in pyproject.toml cannot name a file."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

NOT_PACKAGED = ["tests", "tests.*", "build", "build.*", "dist", "dist.*", "docs", "docs.*", "scripts", "scripts.*"]


class BuildPy(build_py):
    """This file lies in the package's root folder; it builds the package and is not part of it."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "neurallabel" and m[1] == "setup")]


def requirements() -> list[str]:
    """requirements.txt's pins (full-line comments only, as pyproject's ``file`` directive reads it)."""
    lines = (Path(__file__).resolve().parent / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


EXTRAS = {
    # worker: what a separate worker Python needs (`uv pip install "neurallabel[worker]" --torch-backend=auto`):
    # the one list, so the command reads as what it is for.
    "worker": requirements(),
    # bpy: Blender as a Python module, used by make_scene.py (Cycles ground truth), scripts/bake.py and the
    # add-on tests. It brings mathutils; the PyPI mathutils does not build here.
    "blender": ["bpy==5.0.1", "cython==3.3.1", "requests==2.34.2", "zstandard"],
    # ray: `neurallabel bake --ray` runs a bake's frames as Ray tasks (core/pipeline/ray_bake.py, imported only then).
    "ray": ["ray==2.52.0"],
    "dev": ["pytest==9.2.0", "hypothesis==6.170.17", "ray==2.52.0"],
}

setup(packages=["neurallabel"] + [f"neurallabel.{name}" for name in find_packages(".", exclude=NOT_PACKAGED)],
      extras_require=EXTRAS, cmdclass={"build_py": BuildPy})
