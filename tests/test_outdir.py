"""The output-folder guard every writing command shares (core/io/outdir.py) and the atomic writers' temp files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.io.atomic import host_tag, is_stale_temp, remove_stale_temps, temp_path, write_bytes
from neurallabel.core.io.outdir import claim_output_dir


def refused(match: str, **kwargs) -> NeuralLabelError:
    with pytest.raises(NeuralLabelError, match=match) as info:
        claim_output_dir(**kwargs)
    assert info.value.field == "out"
    return info.value


def test_new_folder_is_claimed_and_same_manifest_resumes(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    first = claim_output_dir(out, kind="render", manifest={"x": 1})
    assert not first.resumed and json.loads(first.manifest_path.read_text()) == {"x": 1}
    assert claim_output_dir(out, kind="render", manifest={"x": 1}).resumed
    refused("already holds a render with different x", out_dir=out, kind="render", manifest={"x": 2})
    refused("holds a render output", out_dir=out, kind="bake", manifest={"x": 1})


def test_foreign_file_and_bad_locations_are_refused(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    refused("is not empty", out_dir=tmp_path / "full", kind="bake", manifest={})
    (tmp_path / "file").write_text("x")
    refused("is a file", out_dir=tmp_path / "file", kind="bake", manifest={})
    refused("lies under .*file", out_dir=tmp_path / "file" / "sub", kind="bake", manifest={})
    state = tmp_path / "listy" / ".neurallabel"
    state.mkdir(parents=True)
    (state / "bake.json").write_text("[1, 2]")
    refused("damaged", out_dir=tmp_path / "listy", kind="bake", manifest={})
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_inputs_inside_the_output_are_refused_unless_allowed_and_not_reserved(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    (data / "rgb").mkdir(parents=True)
    photo = data / "rgb" / "0000.png"
    photo.write_bytes(b"photo")
    # `render --out DS` over photos in DS/rgb: refused, the photo is untouched
    refused("holds the photo", out_dir=data, kind="render", manifest={}, inputs={"photo": [photo]},
            reserved=("rgb", "depth"))
    refused("inside the dataset folder", out_dir=data / "rgb" / "sub", kind="render", manifest={},
            inputs={"dataset folder": [data]})
    # Blender's layout: DIR/spec.json and DIR/meshes/ next to the bake's outputs
    out = tmp_path / "bake"
    (out / "meshes").mkdir(parents=True)
    spec, mesh = out / "spec.json", out / "meshes" / "a.ply"
    spec.write_text("{}")
    mesh.write_text("ply")
    claim = claim_output_dir(out, kind="bake", manifest={}, inputs={"spec": [spec], "mesh": [mesh]},
                             reserved=("bop", "coco", "raw"), allowed=[spec, mesh])
    assert not claim.resumed
    # ... but a mesh stored where the output writes its models is never allowed
    inside = tmp_path / "bake2" / "bop" / "models" / "obj_000001.ply"
    inside.parent.mkdir(parents=True)
    inside.write_text("ply")
    refused("holds the mesh", out_dir=tmp_path / "bake2", kind="bake", manifest={}, inputs={"mesh": [inside]},
            reserved=("bop", "coco", "raw"), allowed=[inside])


def test_concurrent_claims_agree_on_one_manifest(tmp_path: Path) -> None:
    out, results, errors = tmp_path / "out", [], []

    def claim() -> None:
        try:
            results.append(claim_output_dir(out, kind="bake", manifest={"fingerprint": "f"}).resumed)
        except Exception as exc:  # noqa: BLE001 -- collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [False] + [True] * 7
    assert sorted(p.name for p in (out / ".neurallabel").iterdir()) == ["bake.json"]


def test_a_folder_holding_only_a_stale_claim_temp_is_ours(tmp_path: Path) -> None:
    state = tmp_path / "out" / ".neurallabel"
    state.mkdir(parents=True)
    stale = state / f".bake.json.nltmp-{host_tag()}-999999999-abcd.tmp"
    stale.write_text("{")
    claim_output_dir(tmp_path / "out", kind="bake", manifest={"a": 1})
    assert not stale.exists()


def test_temp_files_are_readable_unique_and_only_stale_ones_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    written = write_bytes(target, b"data")
    assert oct(os.stat(written).st_mode & 0o777) == oct(0o666 & ~_umask())
    live = temp_path(target)  # this process is alive: not stale
    assert live != temp_path(target)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = tmp_path / f".f.bin.nltmp-{host_tag()}-{dead_pid}-zz.tmp"
    dead.write_text("half")
    foreign = tmp_path / ".user.tmp"  # not ours: never touched
    foreign.write_text("keep")
    assert is_stale_temp(dead) and not is_stale_temp(live) and not is_stale_temp(foreign)
    assert remove_stale_temps(tmp_path) == 1
    assert live.exists() and foreign.exists() and not dead.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_file_lock_serialises_read_modify_write(tmp_path: Path) -> None:
    import time

    from neurallabel.core.io.lock import file_lock

    counter = tmp_path / "n.txt"
    counter.write_text("0")

    def bump() -> None:
        with file_lock(tmp_path / "lock"):
            value = int(counter.read_text())
            time.sleep(0.01)  # a read-modify-write window that would lose updates without the lock
            counter.write_text(str(value + 1))

    threads = [threading.Thread(target=bump) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "10"
