"""The one output-folder guard of every command that writes (bake, render, sfm, and later ones).

A command claims its output folder before it writes anything:

- the folder must be new, empty, or already hold an output of the same command with the same manifest
  (a resumed or sharded run); a folder holding anything else belongs to someone else and is refused;
- it must not hold the command's inputs (photos, spec, meshes, field), except the few a command allows
  (Blender exports ``DIR/spec.json`` and ``DIR/meshes/`` and bakes into ``DIR``) -- and never one that lies
  under a name the command writes (``reserved``): an output must never be written over an input;
- the claim is atomic: the manifest ``DIR/.neurallabel/KIND.json`` appears whole or not at all (hard link of
  a complete temp file), so concurrent pieces of one bake agree on one claim and a killed claim leaves only a
  stale temp file, which the next run removes.

Errors name the field ``out`` (NeuralLabelError.field): the command line says ``--out``, the add-on its
output-folder property.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from ..errors import NeuralLabelError
from .atomic import json_bytes, remove_stale_temps, temp_path

STATE_DIR = ".neurallabel"


@dataclass(frozen=True)
class OutputClaim:
    out_dir: Path
    manifest_path: Path
    resumed: bool  # the folder already held this output (same manifest)


def _fail(out_dir: Path, problem: str) -> NeuralLabelError:
    return NeuralLabelError(f"output folder {out_dir}: {problem}", field="out")


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both already resolved)."""
    return path == folder or folder in path.parents


def check_output_location(out_dir: Path) -> None:
    """Refuse an output path that is a file, lies under a file, or is not a folder we can create."""
    if out_dir.exists() and not out_dir.is_dir():
        raise _fail(out_dir, "is a file, not a folder")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _fail(out_dir, f"lies under {parent}, which is a file")
            break


def check_inputs_outside(out_dir: Path, inputs: Mapping[str, Iterable[Path]], reserved: Sequence[str],
                         allowed: Iterable[Path] = ()) -> set[Path]:
    """Refuse when an input lies in ``out_dir`` (or ``out_dir`` in an input folder), unless it is ``allowed``
    and outside every ``reserved`` top-level name. Returns the top-level entries that allowed inputs occupy."""
    out = out_dir.resolve()
    allowed = {Path(p).resolve() for p in allowed}
    occupied = set()
    for what, paths in inputs.items():
        for path in paths:
            if path is None:
                continue
            real = Path(path).resolve()
            if real.is_dir() and within(out, real) and real != out:
                raise _fail(out_dir, f"lies inside the {what} folder {path}; choose a folder outside it")
            if not within(real, out):
                continue
            top = real.relative_to(out).parts[0] if real != out else ""
            if real not in allowed or top in reserved or real == out:
                raise _fail(out_dir, f"holds the {what} {path}, which the output could overwrite; choose "
                                     f"another folder")
            occupied.add(out / top)
    return occupied


def _read_manifest(path: Path, out_dir: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _fail(out_dir, f"its manifest {path.name} is unreadable; refusing to write into it") from None
    if not isinstance(value, dict):
        raise _fail(out_dir, f"its manifest {path.name} is damaged (not a JSON object); refusing to write into it")
    return value


def _compare(existing: dict, manifest: dict, kind: str, out_dir: Path) -> None:
    if existing == manifest:
        return
    what = [k for k in manifest if existing.get(k) != manifest[k]] or ["manifest"]
    reason = {"fingerprint": f"another {kind} (different inputs)"}.get(what[0], f"a {kind} with different {what[0]}")
    raise _fail(out_dir, f"already holds {reason}; choose an empty folder or the same inputs and settings")


def check_before_export(out_dir: str | Path, *, kind: str, exported: Sequence[str]) -> None:
    """Before a front end exports the command's inputs into ``out_dir`` (Blender writes ``spec.json`` and
    ``meshes/`` into the bake's folder): refuse a folder that the claim would refuse anyway -- a file, or a
    folder holding anything but those ``exported`` names and no output of ``kind`` -- so that nothing of
    someone else's is overwritten by the export itself."""
    out_dir = Path(out_dir)
    check_output_location(out_dir)
    if not out_dir.is_dir() or (out_dir / STATE_DIR / f"{kind}.json").is_file():
        return
    _refuse_foreign(out_dir, kind, lambda entry: entry.name in exported)


def _refuse_foreign(out_dir: Path, kind: str, allowed: Callable[[Path], bool]) -> None:
    """Refuse ``out_dir`` when it holds an entry that is neither our state folder nor ``allowed``."""
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name != STATE_DIR and not allowed(p))
    if foreign:
        raise _fail(out_dir, f"is not empty ({foreign[0]} ...) and holds no NeuralLabel {kind}; choose an empty "
                             f"or new folder")


def output_error(out_dir: str | Path, exc: OSError) -> NeuralLabelError:
    """An OSError met while writing into ``out_dir`` (read-only, full, not writable...) as one error naming the
    folder (field ``out``)."""
    reason = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable",
              errno.EPERM: "is not writable", errno.ENOSPC: "has no space left", errno.EDQUOT: "is over its quota",
              errno.ENOTDIR: "lies under a file"}.get(exc.errno, f"cannot be written ({exc.strerror or exc})")
    return _fail(Path(out_dir), reason)


def check_output_dir(out_dir: str | Path, *, kind: str, manifest: dict,
                     inputs: Mapping[str, Iterable[Path]] = {}, reserved: Sequence[str] = (),
                     allowed: Iterable[Path] = (), others_stay: bool = False) -> bool:
    """Every check of :func:`claim_output_dir`, writing nothing (a pre-flight): NeuralLabelError when the claim
    would be refused; True when ``out_dir`` already holds this output (a resumed or sharded run)."""
    out_dir = Path(out_dir)
    check_output_location(out_dir)
    occupied = check_inputs_outside(out_dir, inputs, reserved, allowed)
    state = out_dir / STATE_DIR
    path = state / f"{kind}.json"
    try:
        if state.is_dir():
            for other in state.glob("*.json"):
                if other.name != path.name:
                    raise _fail(out_dir, f"holds a {other.stem} output; choose another folder")
        if path.is_file():
            _compare(_read_manifest(path, out_dir), manifest, kind, out_dir)
            return True
        if out_dir.is_dir():
            _refuse_foreign(out_dir, kind, lambda entry: entry in occupied
                            or (others_stay and entry.name not in reserved))
        return False
    except OSError as exc:
        raise output_error(out_dir, exc) from None


def claim_output_dir(out_dir: str | Path, *, kind: str, manifest: dict,
                     inputs: Mapping[str, Iterable[Path]] = {}, reserved: Sequence[str] = (),
                     allowed: Iterable[Path] = (), others_stay: bool = False) -> OutputClaim:
    """Claim ``out_dir`` for an output of ``kind`` described by ``manifest`` (JSON-able; equal manifests mean
    the same output, so a re-run resumes). See the module docstring for the rules. With ``others_stay`` the
    folder is the user's (sfm writes a dataset into a capture folder): entries outside ``reserved`` are left
    alone and are no reason to refuse; only a ``reserved`` name that is not this output's is."""
    out_dir = Path(out_dir)
    resumed = check_output_dir(out_dir, kind=kind, manifest=manifest, inputs=inputs, reserved=reserved,
                               allowed=allowed, others_stay=others_stay)
    state = out_dir / STATE_DIR
    path = state / f"{kind}.json"
    try:
        if resumed:
            remove_stale_temps(out_dir)
            return OutputClaim(out_dir, path, True)
        state.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out_dir)
        tmp = temp_path(path)
        try:
            tmp.write_bytes(json_bytes(manifest))
            try:
                os.link(tmp, path)  # atomic and exclusive: fails if a concurrent run claimed first
                return OutputClaim(out_dir, path, False)
            except FileExistsError:
                _compare(_read_manifest(path, out_dir), manifest, kind, out_dir)
                return OutputClaim(out_dir, path, True)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise output_error(out_dir, exc) from None
