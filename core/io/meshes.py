"""Reading triangle meshes users hand us (annotated objects, snap targets), with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NeuralLabelError
from .files import check_regular_file


def load_mesh(path: Path, what: str = "mesh"):
    """Load a triangle mesh with trimesh; NeuralLabelError if it does not load or has no triangles."""
    import trimesh

    check_regular_file(path, what)  # before trimesh opens it: a FIFO would block, /dev/zero never ends
    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # trimesh raises many kinds of errors for a bad file
        raise NeuralLabelError(f"{what} {path}: does not load as a mesh ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0 or len(loaded.vertices) == 0:
        raise NeuralLabelError(f"{what} {path}: the mesh is empty (no triangles)")
    if not np.all(np.isfinite(loaded.vertices)):
        raise NeuralLabelError(f"{what} {path}: the mesh has non-finite vertex coordinates")
    return loaded
