"""`render` never destroys what the user owns: it claims its output folder before rendering (never over the
photos, the dataset or the field; never into a file or someone else's folder) and refuses, before any work, a
damaged field or one trained on another dataset."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from neurallabel.core.app import jobs
from neurallabel.core.cli import main
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.render import views
from neurallabel.core.train.loop import TrainOptions, train_field

from test_worker import run_worker


@pytest.fixture(scope="module")
def field(small_scene, tmp_path_factory) -> Path:
    """A field trained 2 steps on the small scene (at 1/4 size): enough to render, quick to make."""
    out = tmp_path_factory.mktemp("field") / "field.pt"
    train_field(small_scene, out, TrainOptions(steps=2, downscale=4.0, samples_per_step=8192,
                                               max_rays_per_step=2048, checkpoint_every_s=1e9, device="cpu"))
    return out


@pytest.fixture
def rendered(monkeypatch) -> list[str]:
    """The names of the frames rendered (spied on, still rendered)."""
    names: list[str] = []
    real = views.render_frame

    def spy(field, intrinsics, cam_to_world, **kwargs):
        names.append(f"{intrinsics.width}x{intrinsics.height}")
        return real(field, intrinsics, cam_to_world, **kwargs)

    monkeypatch.setattr(views, "render_frame", spy)
    return names


def edited_field(field: Path, path: Path, edit) -> Path:
    payload = torch.load(field, map_location="cpu", weights_only=True)
    payload["training"].pop("optimizer", None)  # a smaller file, as good for rendering
    edit(payload)
    torch.save(payload, path)
    return path


def dataset_with_photos_in_rgb(scene: Path, data: Path) -> Path:
    """The scene with its photos in ``DATA/rgb/`` (as BOP and many captures keep them): the same frames."""
    shutil.copytree(scene / "images", data / "rgb")
    transforms = json.loads((scene / "transforms.json").read_text())
    for frame in transforms["frames"]:
        frame["file_path"] = "rgb/" + Path(frame["file_path"]).name
    (data / "transforms.json").write_text(json.dumps(transforms))
    return data


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(capsys) -> list[str]:
    """The error lines on stderr, without the ``neurallabel render: error: `` prefix (progress lines aside)."""
    prefix = "neurallabel render: error: "
    return [line[len(prefix):] for line in capsys.readouterr().err.splitlines() if "error" in line]


def test_render_over_the_photos_is_refused_and_they_stay_byte_identical(small_scene, field, tmp_path, capsys,
                                                                        rendered):
    data = dataset_with_photos_in_rgb(small_scene, tmp_path / "ds")
    before = digests(data)
    assert main(["render", str(field), "--data", str(data), "--out", str(data), "--split", "all"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("--out: output folder") and "photo" in lines[0], lines
    assert digests(data) == before and not rendered


def test_render_to_a_file_is_refused_at_once(small_scene, field, tmp_path, capsys, rendered):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    started = time.monotonic()
    assert main(["render", str(field), "--data", str(small_scene), "--out", str(target)]) == 2
    assert time.monotonic() - started < 2.0  # refused before the field or any photo is even loaded
    lines = error_lines(capsys)
    assert len(lines) == 1 and "--out: output folder" in lines[0] and "is a file" in lines[0], lines
    assert target.read_text() == "mine" and not rendered


def test_render_refuses_a_folder_of_someone_else_and_resumes_its_own(small_scene, field, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "rgb").mkdir()
    (other / "rgb" / "keep.png").write_bytes(b"someone's picture")
    assert main(["render", str(field), "--data", str(small_scene), "--out", str(other), "--downscale", "4"]) == 2
    assert "holds no NeuralLabel render" in error_lines(capsys)[0]
    assert (other / "rgb" / "keep.png").read_bytes() == b"someone's picture"

    out = tmp_path / "render"
    args = ["render", str(field), "--data", str(small_scene), "--out", str(out), "--downscale", "4"]
    assert main(args) == 0 and main(args) == 0  # a re-run overwrites its own output
    capsys.readouterr()
    # rendered at another size than the field trained at: the fingerprint is taken at the training size
    assert main(args[:-1] + ["2"]) == 2
    assert "--out: output folder" in error_lines(capsys)[0]  # ... refused only as another render's folder
    assert main(args[:-1] + ["2", "--out", str(tmp_path / "half")]) == 0
    assert main(args + ["--split", "train"]) == 2  # another split: another render
    assert "different split" in error_lines(capsys)[0]


def test_render_refuses_the_field_inside_its_output(small_scene, field, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(field, out / "field.pt")
    assert main(["render", str(out / "field.pt"), "--data", str(small_scene), "--out", str(out)]) == 2
    assert "holds the field" in error_lines(capsys)[0]


def test_render_refuses_a_nan_field_before_work(small_scene, field, tmp_path, capsys, rendered):
    def poison(payload):
        payload["state"]["density_grid"].view(-1)[:5] = float("nan")

    damaged = edited_field(field, tmp_path / "nan.pt", poison)
    out = tmp_path / "render"
    assert main(["render", str(damaged), "--data", str(small_scene), "--out", str(out), "--downscale", "4"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("FIELD: damaged field: 5 of"), lines
    assert not out.exists() and not rendered


def test_render_refuses_a_field_trained_on_another_dataset(small_scene, field, tmp_path, capsys, rendered):
    def other_dataset(payload):
        payload["dataset"].update(path="/elsewhere/transforms.json", fingerprint="0123456789abcdef")

    foreign = edited_field(field, tmp_path / "foreign.pt", other_dataset)
    out = tmp_path / "render"
    assert main(["render", str(foreign), "--data", str(small_scene), "--out", str(out), "--downscale", "4"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "trained on other frames (/elsewhere/transforms.json)" in lines[0], lines
    assert not out.exists() and not rendered
    with pytest.raises(NeuralLabelError) as info:
        jobs.run(jobs.RenderRequest(field=foreign, data=small_scene, out=out, downscale=4))
    assert info.value.field == "field"


def test_render_views_itself_never_writes_over_a_photo(small_scene, field, tmp_path, rendered):
    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.field.model import load_field

    data = dataset_with_photos_in_rgb(small_scene, tmp_path / "ds")
    before = digests(data)
    with pytest.raises(NeuralLabelError, match="holds the photo") as info:
        views.render_views(load_field(field), load_dataset(data, 4.0).frames, data)
    assert info.value.field == "out" and digests(data) == before and not rendered


def test_worker_render_names_the_out_field(small_scene, field, tmp_path):
    data = dataset_with_photos_in_rgb(small_scene, tmp_path / "ds")
    before = digests(data)
    code, events, _ = run_worker({"kind": "render", "field": str(field), "data": str(data), "out": str(data)},
                                 tmp_path)
    assert code == 2 and events[-1]["event"] == "error" and events[-1]["field"] == "out", events
    assert "photo" in events[-1]["message"] and digests(data) == before
