"""Package list for setuptools: the repository root is the package ``neurallabel`` (pyproject's
``package-dir``), and every folder below it with an ``__init__.py`` is one of its subpackages, found here so
that a new subpackage can never be left out of a wheel. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

NOT_PACKAGED = ["tests", "tests.*", "build", "build.*", "dist", "dist.*", "docs", "docs.*", "scripts", "scripts.*"]


class BuildPy(build_py):
    """This file lies in the package's root folder; it builds the package and is not part of it."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not (package == "neurallabel" and m[1] == "setup")]


setup(packages=["neurallabel"] + [f"neurallabel.{name}" for name in find_packages(".", exclude=NOT_PACKAGED)],
      cmdclass={"build_py": BuildPy})
