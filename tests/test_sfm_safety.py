"""`sfm` never destroys what the user owns: it claims its output folder before any SfM work and replaces only
its own earlier output, never someone else's transforms.json or COLMAP model; the photos may live in the
folder (``sfm DATA/images --out DATA``) but never be the folder or lie where sfm writes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from neurallabel.core.cli import main
from neurallabel.core.data import sfm
from neurallabel.core.errors import NeuralLabelError

from test_sfm import FOX_SUBSET, link_images, noise_images


@pytest.fixture
def no_sfm_work(monkeypatch) -> None:
    """Any SfM work (feature extraction) fails the test: the refusals must come first."""
    import pycolmap

    def extract(*args, **kwargs):
        raise AssertionError("SfM work started")

    monkeypatch.setattr(pycolmap, "extract_features", extract)


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def someones_dataset(data: Path) -> Path:
    """A capture folder with photos in images/ and another tool's transforms.json and COLMAP model."""
    noise_images(data / "images", 3, seed=2)
    (data / "transforms.json").write_text('{"frames": [], "by": "another tool"}')
    model = data / "colmap" / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.bin").write_bytes(b"their cameras")
    return data


def test_someone_elses_transforms_and_colmap_are_refused_untouched(tmp_path, no_sfm_work, capsys):
    data = someones_dataset(tmp_path / "ds")
    before = digests(data)
    with pytest.raises(NeuralLabelError, match="holds no NeuralLabel sfm") as info:
        sfm.run_sfm(data / "images", data)
    assert info.value.field == "out"
    (data / "transforms.json").unlink()  # the COLMAP model alone is theirs too
    del before["transforms.json"]
    with pytest.raises(NeuralLabelError, match=r"not empty \(colmap"):
        sfm.run_sfm(data / "images", data)
    assert main(["sfm", str(data / "images"), "--out", str(data)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and "--out: output folder" in lines[0], lines
    assert digests(data) == before and sorted(p.name for p in data.iterdir()) == ["colmap", "images"]


@pytest.mark.parametrize("images", [".", "colmap/images"])
def test_photos_that_are_the_folder_or_lie_where_sfm_writes_are_refused(tmp_path, no_sfm_work, images):
    data = tmp_path / "ds"
    noise_images(data / images, 3, seed=3)
    before = digests(data)
    with pytest.raises(NeuralLabelError, match="holds the images folder") as info:
        sfm.run_sfm(data / images, data)
    assert info.value.field == "out" and digests(data) == before
    assert not (data / ".neurallabel").exists()


def test_output_to_a_file_is_refused_at_once(tmp_path, no_sfm_work, capsys):
    noise_images(tmp_path / "images", 3, seed=4)
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    started = time.monotonic()
    assert main(["sfm", str(tmp_path / "images"), "--out", str(target)]) == 2
    assert time.monotonic() - started < 2.0
    assert "--out: output folder" in capsys.readouterr().err and target.read_text() == "mine"


def test_a_failed_run_leaves_the_users_folder_as_it_was(tmp_path):
    data = tmp_path / "ds"
    noise_images(data / "images", 4, seed=5)
    (data / "notes.txt").write_text("mine")
    before = digests(data)
    with pytest.raises(NeuralLabelError, match="do not overlap"):
        sfm.run_sfm(data / "images", data)
    assert digests(data) == before and sorted(p.name for p in data.iterdir()) == ["images", "notes.txt"]


def test_a_rerun_replaces_its_own_output_only(shared_data, tmp_path):
    """9 fox photos at 1/4 size into their capture folder, twice: the second run replaces the first's output;
    another images folder is refused there."""
    data = tmp_path / "data"
    link_images(FOX_SUBSET, shared_data / "fox" / "images", data / "images")
    args = ["sfm", str(data / "images"), "--out", str(data), "--downscale", "4"]
    assert main(args) == 0
    assert main(args) == 0
    assert sorted(p.name for p in data.iterdir()) == [".neurallabel", "colmap", "images", "sparse_points.npz",
                                                      "transforms.json"]
    other = link_images(FOX_SUBSET, shared_data / "fox" / "images", data / "more")
    with pytest.raises(NeuralLabelError, match="different images"):
        sfm.claim_sfm_dir(other.resolve(), data.resolve(), FOX_SUBSET)
