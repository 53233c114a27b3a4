"""The command line over the job layer: errors name the flag at fault in one line, skipped photos are named
in one line (a notice event with --json), and bad values are refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neurallabel.core.cli import main
from test_worker import dataset_with_a_missing_photo, write_truth_spec


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("args, expected", [
    (["bake", "spec.json", "--out", "o", "--device", "gpu"], "neurallabel bake: error: --device 'gpu': use auto"),
    (["bake", "spec.json", "--out", "o", "--frames", "3"], "neurallabel bake: error: --frames '3': expected A:B"),
    (["bake", "spec.json", "--out", "o", "--shard", "4/2"], "neurallabel bake: error: --shard 4/2: need N >= 1"),
    (["bake", "spec.json", "--out", "o", "--formats", "voc"], "--formats: unknown format 'voc'"),
    (["bake", "nope.json", "--out", "o"], "neurallabel bake: error: SPEC: "),
    (["train", "data", "--out", "f.pt", "--steps", "0"], "neurallabel train: error: --steps must be at least 1"),
    (["train", "data", "--out", "f.pt", "--downscale", "0"], "--downscale must be more than 0"),
    (["render", "f.pt", "--data", "d", "--out", "o", "--device", "cuda:x"], "--device 'cuda:x'"),
    (["demo", "--views", "1"], "neurallabel demo: error: --views must be at least 2 (got 1)"),
    (["demo", "--train-minutes", "-1"], "--train-minutes must be more than 0"),
])
def test_errors_name_the_flag(tmp_path, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    line = error_line(capsys)
    assert expected in line, line
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_json_error_event_names_the_field(tmp_path, capsys):
    assert main(["bake", str(tmp_path / "spec.json"), "--out", str(tmp_path / "o"), "--device", "tpu", "--json"]) == 2
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events == [{"event": "error", "message": events[0]["message"], "field": "device"}]
    assert events[0]["message"].startswith("--device 'tpu'")


def test_skipped_photos_are_named_in_one_line(small_scene: Path, tmp_path: Path, capsys):
    data = dataset_with_a_missing_photo(small_scene, tmp_path / "data")
    spec = json.loads(write_truth_spec(small_scene, tmp_path / "spec.json").read_text())
    spec["data"] = str(data)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    bake = ["bake", str(tmp_path / "spec.json"), "--formats", "raw", "--frames", "0:1"]

    assert main([*bake, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out.splitlines()
    skipped = [line for line in out if "skipped" in line and "missing" in line]
    assert len(skipped) == 1 and "gone" in skipped[0] and "skipped 1 of" in skipped[0], out
    assert out[-2].startswith("baked 1 frames")

    assert main([*bake, "--out", str(tmp_path / "b"), "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    notices = [e for e in events if e["event"] == "notice"]
    assert len(notices) == 1 and notices[0]["message"] == skipped[0]
    assert events[-1]["event"] == "result" and events[-1]["frames"] == 1 and events[-1]["kind"] == "bake"
