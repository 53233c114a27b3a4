"""`neurallabel inspect DIR`: pictures of a real bake (overlays, depth, confidence, contact sheet, index.html)
that a browser loads, drawn where the labels are, never written over the bake's own files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from neurallabel.core.app.cli import main
from neurallabel.core.eval.inspect import (BOX_EDGES, colour, colour_depth, draw_overlay, inspect_bake,
                                          read_depth, read_instance, read_labels, select_frames)
from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.pipeline.bake import bake
from neurallabel.core.scene.queries import TruthQuery
from neurallabel.core.spec import spec_from_scene

CONFIDENCE = 200  # the value of the confidence picture the fixture adds to frame 0


def tree(root: Path, skip: str = "inspect") -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != skip}


@pytest.fixture(scope="module")
def baked(small_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames 0-3 of the small scene baked in every format, with a confidence picture on frame 0 (a truth
    bake has none)."""
    out = tmp_path_factory.mktemp("inspect") / "bake"
    bake(spec_from_scene(small_scene), out, frames="0:4", depth_source=TruthQuery(small_scene))
    (out / "raw" / "confidence").mkdir(exist_ok=True)
    cv2.imwrite(str(out / "raw" / "confidence" / "000000.png"), np.full((120, 160), CONFIDENCE, np.uint8))
    return out


@pytest.fixture()
def inspected(baked: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the bake, inspected by the command line into its default folder."""
    bake_dir = tmp_path / "bake"
    shutil.copytree(baked, bake_dir)
    before = tree(bake_dir)
    assert main(["inspect", str(bake_dir), "--json"]) == 0
    assert tree(bake_dir) == before  # the bake's files are untouched
    return bake_dir, json.loads((bake_dir / "raw" / "labels.json").read_text())


def img_sources(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_pictures_page_and_statistics_of_a_real_bake(inspected: tuple[Path, dict]) -> None:
    bake_dir, labels = inspected
    out = bake_dir / "inspect"
    sources = img_sources(out / "index.html")
    assert "contact_sheet.png" in sources
    for n in range(4):
        assert f"overlay/{n:06d}.png" in sources and f"depth/{n:06d}.png" in sources
    assert sources.count("confidence/000000.png") == 1 and "confidence/000001.png" not in sources
    for src in sources:  # every picture the page shows exists and is a PNG OpenCV reads
        assert not src.startswith("/") and src.endswith(".png")
        image = cv2.imread(str(out / src))
        assert image is not None and image.size > 0, src
    assert cv2.imread(str(out / "overlay/000000.png")).shape == (120, 160, 3)
    page = (out / "index.html").read_text()
    for frame in labels["frames"]:  # per-frame statistics: instance count, mean visible fraction
        fractions = [i["visib_fract"] for i in frame["instances"]]
        assert (f"<td>{frame['index']:06d}</td><td>{len(fractions)}</td><td>{np.mean(fractions):.3f}</td>"
                in page)
    assert f"<td>{CONFIDENCE / 255:.3f}</td>" in page


def test_overlay_shows_the_masks_over_the_photo(inspected: tuple[Path, dict]) -> None:
    bake_dir, labels = inspected
    overlay = cv2.imread(str(bake_dir / "inspect/overlay/000001.png"))[:, :, ::-1].astype(int)
    photo = cv2.imread(str(bake_dir / "bop/train/000000/rgb/000001.png"))[:, :, ::-1].astype(int)
    instance = cv2.imread(str(bake_dir / "raw/instance/000001.png"), cv2.IMREAD_UNCHANGED)
    labelled = instance > 0
    inner = cv2.erode(labelled.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert inner.any()
    # Outside every mask, box, axis and name the photo shows as it is; inside a mask it is tinted.
    changed = np.abs(overlay - photo).sum(axis=2) > 0
    assert changed[inner].mean() > 0.9
    assert changed[~labelled].mean() < 0.5


def test_a_mask_is_the_photo_blended_with_its_colour_inside_its_contour() -> None:
    photo = np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    instance = np.zeros((40, 50), np.uint16)
    instance[10:30, 15:35] = 7
    # Corners behind the camera and no 2D box: only the fill and the contour are drawn.
    inst = {"instance_id": 7, "category_id": 1, "name": "x", "corners_px": [[0, 0]] * 8, "corners_z": [-1] * 8,
            "R_m2c": np.eye(3).ravel().tolist(), "t_m2c": [0, 0, -1], "bbox_visib_coco": None, "visib_fract": 1.0}
    frame = {"index": 0, "width": 50, "height": 40, "K": np.eye(3).tolist(), "instances": [inst]}
    image = draw_overlay(photo, instance, frame, {}).astype(int)
    inner = np.zeros((40, 50), bool)
    inner[12:28, 17:33] = True
    expected = np.round(0.55 * photo + 0.45 * np.asarray(colour(7)))
    assert np.array_equal(image[inner], expected[inner])
    outside = np.ones((40, 50), bool)
    outside[8:32, 13:37] = False
    assert np.array_equal(image[outside], photo[outside])
    edge = image[10, 15:35] - expected[10, 15:35]
    assert np.abs(edge).max() > 0  # the contour


def test_a_bake_without_raw_is_drawn_from_its_bop_scene(baked: Path, tmp_path: Path) -> None:
    only_bop = tmp_path / "bake"
    shutil.copytree(baked / "bop", only_bop / "bop")
    raw, bop = read_labels(baked), read_labels(only_bop)
    assert (raw["source"], bop["source"]) == ("raw", "bop")
    assert [f["index"] for f in bop["frames"]] == [f["index"] for f in raw["frames"]]
    for a, b in zip(raw["frames"], bop["frames"]):
        assert np.array_equal(read_instance(baked, raw, a), read_instance(only_bop, bop, b))
        for ia, ib in zip(a["instances"], b["instances"]):  # the same 3D box from the model's box and the pose
            assert ia["instance_id"] == ib["instance_id"]
            assert np.allclose(ia["corners_px"], ib["corners_px"], atol=0.05)
        depth_raw, depth_mm = read_depth(baked, raw, a), read_depth(only_bop, bop, b)
        assert np.array_equal(np.isnan(depth_raw), np.isnan(depth_mm))
        finite = ~np.isnan(depth_raw)
        assert np.allclose(depth_mm[finite], raw["units_to_mm"] * depth_raw[finite], atol=1.0)  # BOP: mm
    result = inspect_bake(only_bop)
    assert [r["instances"] for r in result["frames"]] == [len(f["instances"]) for f in raw["frames"]]
    assert cv2.imread(str(only_bop / "inspect" / "overlay" / "000002.png")).shape == (120, 160, 3)


def test_box_edges_and_axes_are_drawn_where_they_project() -> None:
    # A 40-pixel square box seen face-on: near corners (z = 1) at the square's corners, far ones (z = 2) inside.
    near = [(20, 20), (20, 60), (60, 20), (60, 60)]
    corners = [(40 + (u - 40) / z, 40 + (v - 40) / z) for z in (1, 2) for u, v in near]
    corners = [corners[k] for k in (0, 4, 1, 5, 2, 6, 3, 7)]  # itertools.product order: x, y, then z fastest
    inst = {"instance_id": 3, "category_id": 1, "name": "box", "corners_px": corners,
            "corners_z": [1, 2] * 4, "R_m2c": np.eye(3).ravel().tolist(), "t_m2c": [0.0, 0.0, 1.5],
            "bbox_visib_coco": None, "visib_fract": 1.0}
    frame = {"index": 0, "width": 80, "height": 80, "K": [[40, 0, 40], [0, 40, 40], [0, 0, 1]], "instances": [inst]}
    image = draw_overlay(np.zeros((80, 80, 3), np.uint8), np.zeros((80, 80), np.uint16), frame, {})
    lit = image.sum(axis=2) > 0
    assert len(BOX_EDGES) == 12
    for i, j in BOX_EDGES:  # each edge's midpoint is drawn
        u, v = (np.asarray(corners[i]) + np.asarray(corners[j])) / 2
        assert lit[int(round(v)) - 1:int(round(v)) + 2, int(round(u)) - 1:int(round(u)) + 2].any(), (i, j)
    assert not lit[:15].any() and not lit[66:].any()  # nothing outside the box
    # The x axis from the centre (40, 40) to the right is red.
    red = image[40, 43:50]
    assert (red[:, 0] > 150).all() and (red[:, 1:] < 100).all()


def test_depth_colours_near_red_far_blue_nan_black() -> None:
    depth = np.tile(np.linspace(1.0, 5.0, 50, dtype=np.float32), (4, 1))
    depth[0, 10] = np.nan
    rgb = colour_depth(depth).astype(int)
    assert rgb[0, 10].tolist() == [0, 0, 0]
    assert rgb[1, 0, 0] > rgb[1, 0, 2] and rgb[1, -1, 2] > rgb[1, -1, 0]
    assert colour_depth(np.full((3, 3), np.nan)).sum() == 0


def test_frame_selection_and_max_spread_over_the_range() -> None:
    frames = [{"index": i} for i in range(10)]
    assert [f["index"] for f in select_frames(frames, (2, 6), None)] == [2, 3, 4, 5]
    assert [f["index"] for f in select_frames(frames, (8, None), None)] == [8, 9]
    assert [f["index"] for f in select_frames(frames, None, 3)] == [0, 4, 9]  # start, middle, end


def test_frames_and_max_on_the_command_line(baked: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pictures"
    assert main(["inspect", str(baked), "--out", str(out), "--frames", "1:", "--max", "2"]) == 0
    assert sorted(p.name for p in (out / "overlay").iterdir()) == ["000001.png", "000003.png"]
    assert f"open {out / 'index.html'}" in capsys.readouterr().out
    assert main(["inspect", str(baked), "--out", str(out), "--max", "1"]) == 0  # a re-run draws into its folder
    assert re.findall(r'src="(overlay/[^"]+)"', (out / "index.html").read_text()) == ["overlay/000000.png"]
    assert main(["inspect", str(baked), "--out", str(out), "--frames", "9:"]) == 2
    assert "--frames" in capsys.readouterr().err


def test_bake_preview_draws_evenly_spaced_frames_as_inspect_does(small_scene: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """`bake --preview N` (a mesh-only bake: no field, depth from the meshes): inspect's pictures of N evenly
    spaced frames in DIR/inspect, the path printed; byte for byte what `inspect DIR --max N` draws."""
    from neurallabel.core.spec import write_spec

    spec_path = write_spec(spec_from_scene(small_scene), tmp_path / "spec.json")
    out = tmp_path / "out"
    assert main(["bake", str(spec_path), "--out", str(out), "--frames", "0:5", "--preview", "3"]) == 0
    assert f"preview: open {out / 'inspect' / 'index.html'}" in capsys.readouterr().out
    drawn = sorted(p.name for p in (out / "inspect" / "overlay").iterdir())
    assert drawn == ["000000.png", "000002.png", "000004.png"]
    assert re.findall(r'src="(overlay/[^"]+)"', (out / "inspect" / "index.html").read_text()) == [
        f"overlay/{name}" for name in drawn]
    assert main(["inspect", str(out), "--out", str(tmp_path / "again"), "--max", "3"]) == 0
    assert tree(out / "inspect", skip=".neurallabel") == tree(tmp_path / "again", skip=".neurallabel")
    # A bake that leaves the aggregate files to a later run has nothing to draw yet: refused before any work.
    assert main(["bake", str(spec_path), "--out", str(tmp_path / "piece"), "--no-assemble", "--preview", "2"]) == 2
    assert "preview" in capsys.readouterr().err and not (tmp_path / "piece").exists()


@pytest.mark.parametrize("where", [".", "raw", "raw/pictures", ".."])
def test_an_output_folder_holding_the_bake_is_refused(baked: Path, where: str, capsys: pytest.CaptureFixture
                                                      ) -> None:
    before = tree(baked)
    out = (baked / where).resolve() if where != ".." else baked.parent
    assert main(["inspect", str(baked), "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err
    assert tree(baked) == before and not (baked / "raw" / "pictures").exists()


def test_a_folder_without_raw_labels_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(NeuralLabelError) as err:
        inspect_bake(tmp_path)
    assert err.value.field == "bake" and "raw/labels.json nor bop" in str(err.value)
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "BAKE" in capsys.readouterr().err
    assert not (tmp_path / "inspect").exists()


# --- the page in a browser ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: installed once (300 s at most) where it is missing, we are root and CI=true or
    NEURALLABEL_INSTALL_CHROMIUM is set; else the test is skipped."""
    found = shutil.which("chromium")
    wanted = os.environ.get("CI") == "true" or os.environ.get("NEURALLABEL_INSTALL_CHROMIUM")
    if found is None and wanted and hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=300, check=False,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired):
            pass
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def test_every_image_of_the_page_loads_in_chromium(inspected: tuple[Path, dict], chromium: str,
                                                   tmp_path: Path) -> None:
    out = inspected[0] / "inspect"
    # A page next to index.html loads it in a frame and writes the count of images that failed to load.
    probe = out / "probe.html"
    probe.write_text(
        "<html><body><iframe id='f' src='index.html'></iframe><script>"
        "document.getElementById('f').onload = function () {"
        " var imgs = this.contentDocument.images, bad = 0;"
        " for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad++; }"
        " document.body.setAttribute('data-result', imgs.length + ' images, ' + bad + ' broken'); };"
        "</script></body></html>")
    result = subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--allow-file-access-from-files",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-result="(\d+) images, (\d+) broken"', result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    assert int(found.group(1)) == len(img_sources(out / "index.html")) and int(found.group(2)) == 0
