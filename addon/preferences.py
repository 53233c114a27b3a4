"""Add-on preferences: the worker's Python, where its dependencies go, the default device.

The dependency list is ``requirements.txt`` at the extension root, the one list pyproject.toml reads too;
the "Install Dependencies" button is ``operators/dependencies.py``.

``bl_idname`` must be the extension's package: ``bl_ext.<repository>.neurallabel`` inside Blender,
``neurallabel`` when the tree is imported as a plain package (tests).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

from .properties import DEVICE_ITEMS

#: The extension root package (this module is ``<root>.addon.preferences``).
ROOT_PACKAGE = __package__.rpartition(".")[0]

#: The worker's dependencies, one requirement a line (``#`` lines are comments), torch first.
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "requirements.txt"


def requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The pinned requirements in ``path``, in order (setuptools' file format: full-line comments only)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


#: The torch wheel indexes "Install Dependencies" picks from (macOS: PyPI's default build).
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: The Python the pinned requirements have wheels for (numpy 1.26 has none for 3.13, Blender 5.1's Python).
INSTALLER_PYTHON = (3, 11)
WORKER_ENV_HINT = "make a worker environment (docs/blender.md) and set Worker Python in the preferences"


def torch_index(platform: str, has_nvidia_gpu: bool) -> str | None:
    """The wheel index for torch: CUDA on Linux/Windows with an NVIDIA GPU, CPU there otherwise, PyPI's
    default on macOS (``None``)."""
    if platform == "darwin":
        return None
    return TORCH_CUDA_INDEX if has_nvidia_gpu else TORCH_CPU_INDEX


def has_nvidia_gpu() -> bool:
    """An NVIDIA driver is installed: ``nvidia-smi`` is on PATH."""
    return shutil.which("nvidia-smi") is not None


def install_refusal(version: tuple[int, int], online_access: bool) -> str | None:
    """Why "Install Dependencies" cannot serve this Blender, or None when it can."""
    if not online_access:
        return ("Online access is disabled (Preferences > System > Network > Allow Online Access): allow it, "
                f"or {WORKER_ENV_HINT}")
    if tuple(version[:2]) != INSTALLER_PYTHON:
        have, need = ".".join(map(str, version[:2])), ".".join(map(str, INSTALLER_PYTHON))
        return (f"Blender's Python is {have}; the pinned dependencies need Python {need} (numpy 1.26 has no "
                f"wheels for {have}): {WORKER_ENV_HINT}")
    return None


def install_commands(python: str, target: str, index_url: str | None = None) -> list[list[str]]:
    """The pip commands that install the worker's dependencies into ``target``: every line of
    requirements.txt, torch first and alone from ``index_url`` (None: PyPI).

    torch goes first and alone: letting pip resolve torch through nerfacc would pull GBs of CUDA wheels
    (DESIGN.md, Dependencies).
    """
    torch, *others = requirements()
    if not torch.startswith("torch=="):
        raise ValueError(f"{REQUIREMENTS_FILE}: the first requirement must be a pinned torch, got {torch!r}")
    base = [python, "-m", "pip", "install", "--upgrade", "--target", target]
    index = ["--index-url", index_url] if index_url else []
    return [base + index + [torch], base + others]


def dependencies_path(create: bool = False) -> str:
    """The extension's user ``site-packages`` folder, where "Install dependencies" puts the worker's packages.

    Outside an extension (the tree registered as the plain package ``neurallabel``, e.g. in tests) it is
    ``<Blender user scripts>/neurallabel/site-packages``.
    """
    try:
        return bpy.utils.extension_path_user(ROOT_PACKAGE, path="site-packages", create=create)
    except ValueError:  # "The package does not name an extension"
        path = os.path.join(bpy.utils.user_resource("SCRIPTS"), ROOT_PACKAGE, "site-packages")
        if create:
            os.makedirs(path, exist_ok=True)
        return path


def preferences(context: bpy.types.Context | None = None) -> "NeuralLabelPreferences | None":
    context = context or bpy.context
    addon = context.preferences.addons.get(ROOT_PACKAGE)
    return addon.preferences if addon is not None else None


def worker_python(context: bpy.types.Context | None = None) -> str:
    """The Python that runs the worker: the preference, or Blender's own interpreter when it is empty."""
    prefs = preferences(context)
    path = bpy.path.abspath(prefs.worker_python) if prefs is not None and prefs.worker_python else ""
    return path or sys.executable


def default_device(context: bpy.types.Context | None = None) -> str:
    prefs = preferences(context)
    return prefs.device if prefs is not None else "auto"


def resolve_device(context: bpy.types.Context | None = None) -> str:
    """The device a job of the current scene runs on: the scene's choice, or the preference for 'auto'."""
    context = context or bpy.context
    device = context.scene.neurallabel.device if context.scene is not None else "auto"
    return device if device != "auto" else default_device(context)


def worker_environment(python: str) -> dict[str, str]:
    """Environment for a worker process: Blender's own Python also sees the installed dependencies."""
    env = dict(os.environ)
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        site = dependencies_path(create=False)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p)
    return env


class NeuralLabelPreferences(bpy.types.AddonPreferences):
    bl_idname = ROOT_PACKAGE

    worker_python: StringProperty(
        name="Worker Python", subtype="FILE_PATH", default="",
        description="Python that runs training and baking (needs torch). Empty: Blender's own Python with "
                    "the dependencies installed by 'Install Dependencies'")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="auto",
                         description="Device for jobs whose scene says 'Auto'")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "worker_python")
        if not self.worker_python:
            layout.label(text=f"Using Blender's Python: {sys.executable}", icon="INFO")
        layout.prop(self, "device")
        row = layout.row()
        row.operator("neurallabel.check_worker", icon="CHECKMARK")
        sub = row.row()
        sub.operator("neurallabel.install_dependencies", icon="IMPORT")
        sub.enabled = not self.worker_python
        scene = context.scene
        if scene is not None and scene.neurallabel.worker_check:
            layout.label(text=scene.neurallabel.worker_check)


classes = (NeuralLabelPreferences,)


def add_dependencies_to_path() -> None:
    """Make the installed dependencies importable in Blender's own process."""
    # Appended, not prepended: Blender's own modules (numpy) win; the add-on only needs light readers
    # (e.g. Pillow for image sizes) from there in Blender's process. The worker gets it via PYTHONPATH.
    site = dependencies_path(create=False)
    if os.path.isdir(site) and site not in sys.path:
        sys.path.append(site)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    add_dependencies_to_path()


def unregister() -> None:
    site = dependencies_path(create=False)
    while site in sys.path:
        sys.path.remove(site)
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
