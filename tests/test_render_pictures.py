"""`neurallabel render` writes pictures: a truth | render | error strip per view with a photo and a turbo depth
colour map per view (no depth = black)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from neurallabel.core.cli import main
from neurallabel.core.eval.image import ERROR_FULL_SCALE, comparison_strip, error_colours, to_uint8
from neurallabel.core.eval.inspect import colour_depth

from test_render_safety import field  # noqa: F401  the field trained 2 steps on the small scene (shared)


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image[:, :, ::-1]


def test_strip_panels_and_the_error_colours() -> None:
    truth = np.full((12, 24, 3), 0.3)
    truth[:, :8] = np.random.default_rng(0).random((12, 8, 3))  # left: a photo the render matches exactly
    render = truth.copy()
    render[:, 8:] += np.linspace(0.0, 0.5, 16)[None, :, None]  # then an error that grows to the right
    strip = comparison_strip(truth, render)
    assert strip.shape == (12, 72, 3) and strip.dtype == np.uint8
    assert np.array_equal(strip[:, :24], to_uint8(truth)) and np.array_equal(strip[:, 24:48], to_uint8(render))
    error = strip[:, 48:]
    inferno = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_INFERNO)[0, :, ::-1]
    assert np.all(error[:, :9] == inferno[0])  # equal pixels: the colour map's black end
    rising = np.abs(render - truth).mean(axis=2)[0] < ERROR_FULL_SCALE
    brightness = error[0].astype(float).sum(axis=1)
    assert np.all(np.diff(brightness[8:][rising[8:]]) > 0)  # a larger difference is brighter
    assert np.all(error[:, ~rising] == inferno[1])  # full scale and beyond: the bright end


def test_render_cli_writes_a_strip_and_a_depth_map_per_view(small_scene: Path, field: Path, tmp_path: Path,
                                                            capsys) -> None:
    from neurallabel.core.data.dataset import load_dataset
    from neurallabel.core.io.images import load_image

    out = tmp_path / "render"
    assert main(["render", str(field), "--data", str(small_scene), "--out", str(out), "--downscale", "4"]) == 0
    assert f"pictures: {out / 'strip'}" in capsys.readouterr().out
    frames = load_dataset(small_scene, 4.0).split("test")
    assert frames
    for frame in frames:
        w, h = frame.intrinsics.width, frame.intrinsics.height
        strip = _read_rgb(out / "strip" / f"{frame.name}.png")
        render = _read_rgb(out / "rgb" / f"{frame.name}.png")
        truth = load_image(frame)[..., :3]
        assert strip.shape == (h, 3 * w, 3)
        assert np.array_equal(strip[:, :w], to_uint8(truth)) and np.array_equal(strip[:, w:2 * w], render)
        # the error of the float render (the PNG holds it rounded: a level or two off the colour map)
        expected = error_colours(render / 255.0, truth).astype(int)
        assert np.abs(strip[:, 2 * w:].astype(int) - expected).max() <= 12
        depth = np.load(out / "depth" / f"{frame.name}.npy")
        colours = _read_rgb(out / "depth_colour" / f"{frame.name}.png")
        assert colours.shape == (h, w, 3)
        assert np.all(colours[~np.isfinite(depth)] == 0)
        assert np.array_equal(colours, colour_depth(depth))
