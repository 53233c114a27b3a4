"""The box objects' mesh caches: the bake's own (``DIR/.neurallabel/models``) and one shared between bakes.

The bake's own cache holds one file per object, written atomically once. Pieces of one bake running at the same
time must label with the very same mesh: the first extracts it while holding the object's lock, the others wait
and read its file. One file (vertices and faces together) means a killed run can never leave a mesh
half-cached (vertices without their faces).

A box object's mesh takes most of a short bake's time (its voting views are labelled first), and a preview
bakes one frame into a new folder each time. :class:`SharedModels` keeps the meshes of earlier bakes in a
folder of its own (the user's cache), each under a key that holds everything the extraction reads: the
dataset's file and photos, the field's file, every box object (the others' labels take part in the votes), the
frame of reference, the label options, the resolution, the device and the code (a digest of ``core``'s
sources). A bake of another frame, into another folder, with the same boxes then finds its meshes there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..io.atomic import npy_bytes, write_bytes
from ..io.lock import file_lock

if TYPE_CHECKING:
    from ..spec import LabelSpec

#: changes with a shared entry's meaning where the code digest cannot see it (the digest covers ``core``)
SHARED_FORMAT = 1
#: the shared cache keeps this many meshes, dropping the least recently used beyond it
SHARED_ENTRIES = 256


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An ``.npz`` (``np.load`` reads it) with the same bytes for the same arrays: np.savez stamps the time."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), npy_bytes(array))
    return buf.getvalue()


def cached_mesh(path: Path, extract: Callable[[], Any]) -> Any:
    """The trimesh cached at ``path``, made by ``extract()`` (a trimesh) first when it is not cached yet."""
    with file_lock(path.with_name(path.name + ".lock")):
        if not path.is_file():
            mesh = extract()
            write_bytes(path, npz_bytes(vertices=np.asarray(mesh.vertices, dtype=np.float64),
                                        faces=np.asarray(mesh.faces, dtype=np.int64)))
    # Always the cached copy, so a fresh run, a re-run and every concurrent piece label with the same mesh.
    return _read_mesh(path)


def _read_mesh(path: Path) -> Any:
    import trimesh

    with np.load(path) as data:
        return trimesh.Trimesh(data["vertices"], data["faces"], process=False)


def code_digest() -> str:
    """A digest of ``core``'s Python sources (names and bytes): any change to the code that extracts a mesh
    makes new keys."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def box_mesh_keys(spec: "LabelSpec", *, photos: str, options: dict, resolution: int, device: str,
                  digests: Optional[dict[str, str]] = None) -> dict[int, str]:
    """The shared cache's key of every box object's mesh (instance id -> hex digest). ``photos``: the bake's
    photo-set fingerprint; ``options``: the label options as its manifest records them; ``digests``: the spec's
    file digests when the caller has them (``LabelSpec.file_digests``: the field's file is not read again)."""
    boxes = [o for o in spec.objects if o.kind == "box"]
    # the spec's own fingerprint over the box objects alone, every frame: which frames a bake labels and its
    # mesh objects do not take part in a box's mesh
    scene = dataclasses.replace(spec, frames=None, objects=boxes).fingerprint(digests)
    base = {"format": SHARED_FORMAT, "code": code_digest(), "scene": scene, "photos": photos,
            "options": options, "resolution": int(resolution), "device": str(device).split(":")[0]}
    return {o.instance_id: hashlib.sha256(json.dumps({**base, "instance": o.instance_id}, sort_keys=True)
                                          .encode()).hexdigest() for o in boxes}


class SharedModels:
    """Box meshes shared between bakes in ``folder`` (``box-<key>.npz``); ``keys()`` gives each box object's key
    (:func:`box_mesh_keys`), asked on first use (it reads the field's file). A folder that cannot be written, or a
    damaged entry, costs a new extraction and one warning, never the bake."""

    def __init__(self, folder: str | Path, keys: Callable[[], dict[int, str]]) -> None:
        self.folder = Path(folder)
        self._keys = keys
        self._known: Optional[dict[int, str]] = None
        self._warned = False

    def mesh(self, instance_id: int, extract: Callable[[], Any]) -> Any:
        """The cached mesh of ``instance_id``, extracted (and kept) first when there is none."""
        if self._known is None:
            self._known = self._keys()
        key = self._known.get(instance_id)
        if key is None:
            return extract()
        path = self.folder / f"box-{key[:40]}.npz"
        mesh = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with file_lock(path.with_name(path.name + ".lock")):
                if path.is_file():
                    try:
                        mesh = _read_mesh(path)
                        os.utime(path)  # recently used
                        return mesh
                    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                        path.unlink(missing_ok=True)  # damaged: made again below
                mesh = extract()
                write_bytes(path, npz_bytes(vertices=np.asarray(mesh.vertices, dtype=np.float64),
                                            faces=np.asarray(mesh.faces, dtype=np.int64)))
            self._prune()
            return mesh
        except OSError as exc:
            if not self._warned:
                self._warned = True
                warnings.warn(f"the shared box-mesh cache {self.folder} cannot be used ({exc}); box meshes are "
                              f"extracted for this bake alone", RuntimeWarning, stacklevel=2)
            return mesh if mesh is not None else extract()  # a mesh made but not kept is not made again

    def _prune(self) -> None:
        """Drop the least recently used meshes beyond ``SHARED_ENTRIES``. Their lock files stay: another process
        may hold one (a lock file removed while held would let a second process in)."""
        try:
            entries = sorted(self.folder.glob("box-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in entries[SHARED_ENTRIES:]:
                old.unlink(missing_ok=True)
        except OSError:  # another process pruned first
            pass
