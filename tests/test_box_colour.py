"""A box object's outline from the photo's colours (core/labels/colour.py): a field's blurred mask moves onto the
object, never past the box's silhouette or onto another label, the same way every time; and the labeler takes a
view's picture where the scene is a field."""

from __future__ import annotations

import numpy as np
from PIL import Image

from neurallabel.core.io.images import read_photo_rgb8
from neurallabel.core.labels.colour import MIN_PIXELS, refine_mask
from neurallabel.core.labels.frame import LabelOptions
from neurallabel.core.scene.queries import DensityMarchQuery
from test_box_objects import CAMERA, INTR, R, Scene, box_object, iou, r, torus_sdf, truth_masks
from test_occlusion import labeler, soft, view

TABLE = np.array([[150, 110, 70], [110, 80, 50]])  # a two-tone checker
OBJECT = np.array([90, 110, 200])


def picture(object_mask: np.ndarray, seed: int = 0, shadow: np.ndarray | None = None) -> np.ndarray:
    """A photo-like picture: a noisy checkered table, the object in its own noisy colour, a dark shadow."""
    rng = np.random.default_rng(seed)
    h, w = object_mask.shape
    rows, cols = np.mgrid[0:h, 0:w]
    image = TABLE[((rows // 12) + (cols // 12)) % 2].astype(np.float64)
    if shadow is not None:
        image[shadow] *= 0.45
    image[object_mask] = OBJECT
    image += rng.normal(0.0, 8.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def disc(h: int, w: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def test_the_colours_move_a_blurred_outline_onto_the_object() -> None:
    h, w = 120, 160
    truth = disc(h, w, (60, 80), 28)
    shadow = disc(h, w, (68, 66), 30) & ~truth
    image = picture(truth, shadow=shadow)
    # the field's mask: a skirt of 6 px on the shadow side, and 3 px missing along the far rim
    field = (truth | (disc(h, w, (64, 74), 30) & ~disc(h, w, (50, 96), 12))) & ~(disc(h, w, (57, 83), 28) ^ truth)
    field &= ~(truth & ~disc(h, w, (61, 79), 25.5))
    allowed = np.zeros((h, w), bool)
    allowed[22:100, 42:120] = True
    forbidden = np.zeros((h, w), bool)
    forbidden[55:65, 42:54] = True  # another label's pixels, inside the box's silhouette
    assert iou(field, truth) < 0.85
    refined = refine_mask(image, field, allowed, forbidden)
    assert iou(refined, truth) >= 0.97
    assert not (refined & ~allowed).any() and not (refined & forbidden).any()
    # the same answer again, after another cut has drawn from OpenCV's generator
    refine_mask(picture(truth, seed=3), truth, allowed, forbidden)
    assert np.array_equal(refine_mask(image, field, allowed, forbidden), refined)


def test_a_hole_the_field_filled_is_cut_out_when_the_field_is_unsure_of_it() -> None:
    # A ring (a torus seen from above) whose hole a foggy field filled: the mask's eroded core lies in the
    # hole, so as certain object the table seen through the hole would stay the ring's. Certain object only
    # where the field is sure: the colours then give the hole back to the table.
    h, w = 120, 160
    truth = disc(h, w, (60, 80), 34) & ~disc(h, w, (60, 80), 16)
    image = picture(truth)
    field = disc(h, w, (60, 80), 34)
    allowed = np.zeros((h, w), bool)
    allowed[20:101, 40:121] = True
    nothing = np.zeros((h, w), bool)
    kept = refine_mask(image, field, allowed, nothing)
    assert kept[disc(h, w, (60, 80), 8)].all()  # the core stands
    sure = field & ~disc(h, w, (60, 80), 16)  # the field's weight on the ring, only half of it in the hole
    refined = refine_mask(image, field, allowed, nothing, sure=sure)
    assert iou(refined, truth) >= 0.97 and not (refined & ~field).any()


def test_a_small_mask_or_nothing_to_learn_the_background_from_comes_back_unchanged() -> None:
    h, w = 40, 40
    truth = disc(h, w, (20, 20), 10)
    image = picture(truth)
    allowed = np.ones((h, w), bool)
    nothing = np.zeros((h, w), bool)
    small = disc(h, w, (20, 20), 2.5)
    assert small.sum() < MIN_PIXELS
    assert np.array_equal(refine_mask(image, small, allowed, nothing), small)
    everything = np.ones((h, w), bool)
    assert np.array_equal(refine_mask(image, everything, allowed, nothing), everything)
    black = np.zeros_like(image)  # a picture that shows nothing: the field's mask stands
    field = disc(h, w, (22, 21), 11)
    assert np.array_equal(refine_mask(black, field, allowed, nothing), field)
    # what another label holds is never the box's, even when the field said so
    taken = np.zeros((h, w), bool)
    taken[:, :20] = True
    assert not (refine_mask(image, truth, allowed, taken) & taken).any()


def blurred_scene():
    """The torus on the floor as a field whose torus is blurred over 4 mm (a skirt of fog at its foot)."""
    def density(p):
        floor = soft(np.maximum(p[:, 2], -0.05 - p[:, 2]))
        return soft(torus_sdf(p), width=0.004) + floor

    return DensityMarchQuery(density, step=0.002, near=0.3, far=1.2)


def test_the_labeler_settles_a_field_box_objects_outline_with_the_photo() -> None:
    sharp_torus, _ = truth_masks(Scene(), CAMERA)
    scene = blurred_scene()
    obj = box_object([2 * (R + r) + 0.01, 2 * (R + r) + 0.01, 2 * r + 0.012], centre=(0, 0, r - 0.001))
    v = view(CAMERA, INTR)
    image = picture(sharp_torus)
    from_field = labeler([obj], scene).label(v, full_depth=False).instance == 1
    with_photo = labeler([obj], scene).label(v, full_depth=False, image=image)
    mine = with_photo.instance == 1
    assert iou(mine, sharp_torus) >= iou(from_field, sharp_torus) + 0.02
    assert iou(mine, sharp_torus) >= 0.9
    # off: the field's mask, picture or not; a picture of the wrong size is not used
    off = labeler([obj], scene, LabelOptions(colour_edges=False)).label(v, full_depth=False, image=image)
    assert np.array_equal(off.instance == 1, from_field)
    wrong_size = labeler([obj], scene).label(v, full_depth=False, image=image[:-1])
    assert np.array_equal(wrong_size.instance == 1, from_field)
    # the confidence map follows the labels it describes
    assert with_photo.confidence is not None and with_photo.confidence.shape == mine.shape


def test_a_views_photo_comes_at_the_views_size(tmp_path) -> None:
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[:, :40, 3] = 0  # transparent: white, as training composites it
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photo.png")
    photo = read_photo_rgb8(tmp_path / "photo.png", 40, 30)  # a dataset downscaled by 2
    assert photo.shape == (30, 40, 3) and photo.dtype == np.uint8
    assert (photo[:, :20] == 255).all() and (photo[:, 20:] == [200, 0, 0]).all()
    assert read_photo_rgb8(tmp_path / "missing.png", 40, 30) is None
    assert read_photo_rgb8(None, 40, 30) is None
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert read_photo_rgb8(tmp_path / "broken.png", 40, 30) is None
