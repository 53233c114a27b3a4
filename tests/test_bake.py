"""`bake` and `neurallabel bake`: shards and re-runs give the same bytes as one run; foreign folders and bad
input are refused with exit code 2 and nothing overwritten."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.bake import bake
from neurallabel.core.cli import main
from neurallabel.core.depth_source import TruthDepth
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.spec import spec_from_scene, write_spec


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shards_and_frame_ranges_equal_one_run_byte_for_byte(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    depth = TruthDepth(small_scene)
    whole = bake(spec, tmp_path / "whole", depth_source=depth)
    assert whole["frames"] == 12 and whole["instances"] > 0
    # Three shards, then a frame range that overlaps finished frames, into one folder.
    for i in range(3):
        s = bake(spec, tmp_path / "pieces", shard=f"{i}/3", depth_source=depth)
        assert s["frames"] == 4
    s = bake(spec, tmp_path / "ranged", frames="0:5", depth_source=depth)
    assert s["frames"] == 5
    s = bake(spec, tmp_path / "ranged", frames="3:12", depth_source=depth)
    assert (s["frames"], s["skipped"]) == (7, 2)
    reference = tree(tmp_path / "whole")
    assert any(k.startswith("bop/") for k in reference) and "coco/annotations.json" in reference
    assert tree(tmp_path / "pieces") == reference
    assert tree(tmp_path / "ranged") == reference


def test_rerun_skips_finished_frames(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    bake(spec, out, formats=("raw",), frames="0:3")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = bake(spec, out, formats=("raw",), frames="0:3")
    assert (again["frames"], again["skipped"]) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before  # nothing rewritten


def test_foreign_output_folder_is_refused(small_scene: Path, tmp_path: Path) -> None:
    spec = spec_from_scene(small_scene)
    out = tmp_path / "out"
    bake(spec, out, formats=("coco",), frames="0:2")
    before = tree(out)
    other = spec_from_scene(small_scene)
    other.objects = other.objects[1:]  # another scene's spec
    with pytest.raises(NeuralLabelError, match="another scene's dataset"):
        bake(other, out, formats=("coco",), frames="0:2")
    with pytest.raises(NeuralLabelError, match="different formats"):
        bake(spec, out, formats=("coco", "raw"), frames="0:2")
    assert tree(out) == before
    stranger = tmp_path / "someone_else"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(NeuralLabelError, match="not empty and holds no NeuralLabel bake"):
        bake(spec, stranger)
    assert tree(stranger) == {"notes.txt": b"mine"}


def test_cli_bake_and_bad_input(small_scene: Path, tmp_path: Path, capsys) -> None:
    spec_path = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json")
    out = tmp_path / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--frames", "0:2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == "result" and lines[-1]["frames"] == 2
    assert any(line["event"] == "progress" for line in lines)
    assert (out / "bop" / "train" / "000000" / "scene_gt.json").is_file()
    assert sorted(json.loads((out / "bop" / "train" / "000000" / "scene_gt.json").read_text())) == ["0", "1"]

    def fails(args: list[str], message: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

    fails(["bake", str(spec_path), "--out", str(out), "--frames", "5:99"], "out of range")
    fails(["bake", str(spec_path), "--out", str(out), "--shard", "3/3"], "0 <= I < N")
    fails(["bake", str(spec_path), "--out", str(out), "--formats", "bop,voc"], "unknown format 'voc'")
    fails(["bake", str(tmp_path / "nope.json"), "--out", str(out)], "does not exist")
    # An object far outside every camera.
    spec = json.loads(spec_path.read_text())
    spec["objects"][0]["pose"][0][3] = 1000.0
    lost = tmp_path / "lost.json"
    lost.write_text(json.dumps(spec))
    fails(["bake", str(lost), "--out", str(tmp_path / "lost_out")], "outside every camera")
    assert not (tmp_path / "lost_out").exists()  # checked before the output folder is touched
    # Box objects need a field.
    spec = json.loads(spec_path.read_text())
    spec["objects"][0] = {k: v for k, v in spec["objects"][0].items() if k != "mesh"} | {
        "kind": "box", "size": [0.1, 0.1, 0.1]}
    boxed = tmp_path / "boxed.json"
    boxed.write_text(json.dumps(spec))
    fails(["bake", str(boxed), "--out", str(tmp_path / "boxed_out")], "no 'field'")
