"""The box objects' mesh cache (``DIR/.neurallabel/models``): one file per object, written atomically once.

Pieces of one bake running at the same time must label with the very same mesh: the first extracts it while
holding the object's lock, the others wait and read its file. One file (vertices and faces together) means a
killed run can never leave a mesh half-cached (vertices without their faces).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io.atomic import npy_bytes, write_bytes
from ..io.lock import file_lock


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An ``.npz`` (``np.load`` reads it) with the same bytes for the same arrays: np.savez stamps the time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), npy_bytes(array))
    return buf.getvalue()


def cached_mesh(path: Path, extract: Callable[[], Any]) -> Any:
    """The trimesh cached at ``path``, made by ``extract()`` (a trimesh) first when it is not cached yet."""
    import trimesh

    with file_lock(path.with_name(path.name + ".lock")):
        if not path.is_file():
            mesh = extract()
            write_bytes(path, npz_bytes(vertices=np.asarray(mesh.vertices, dtype=np.float64),
                                        faces=np.asarray(mesh.faces, dtype=np.int64)))
    # Always the cached copy, so a fresh run, a re-run and every concurrent piece label with the same mesh.
    with np.load(path) as data:
        return trimesh.Trimesh(data["vertices"], data["faces"], process=False)
