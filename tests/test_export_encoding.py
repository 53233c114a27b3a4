"""What makes a bake's writing fast writes what it wrote before: label PNGs that splice cached zero rows decode
to the same pixels in every reader, a whole bake's files equal those of OpenCV's encoder, depth maps keep their
values, boxes and RLE equal the mask-derived ones, a PNG photo checked without a full decode passes or fails as
PIL's decode does, and temp files never touch the process umask."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.export import encoded
from neurallabel.core.export.bop import depth_png
from neurallabel.core.export.coco import encode_rle
from neurallabel.core.export.encoded import visible_bbox_coco
from neurallabel.core.export.png import _adler32_zeros, label_png
from neurallabel.core.export.raw import depth_mm_png
from neurallabel.core.geometry.transforms import Similarity
from neurallabel.core.geometry.view import View
from neurallabel.core.io import atomic
from neurallabel.core.io.atomic import png_bytes, write_bytes
from neurallabel.core.io.images import check_photo, png_intact_size, validate_images
from neurallabel.core.labels.frame import LabelOptions, bbox_coco
from neurallabel.core.pipeline.bake import bake, frame_labeler
from neurallabel.core.scene.queries import TruthQuery
from neurallabel.core.spec import spec_from_scene


def decoded(data: bytes) -> list[np.ndarray]:
    """``data`` as OpenCV (libpng) and PIL (its own decoder) decode it."""
    return [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), np.asarray(Image.open(io.BytesIO(data)))]


def label_images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    images = []
    for dtype in (np.uint8, np.uint16):
        top = np.iinfo(dtype).max
        for shape in ((48, 64), (1, 1), (3, 7), (1, 9), (9, 1)):
            blank = np.zeros(shape, dtype)
            band = blank.copy()
            band[shape[0] // 3:shape[0] // 2 + 1, shape[1] // 2:] = top  # a band of rows; zero rows around it
            edges = band.copy()
            edges[0], edges[-1] = 5, 7  # content in the first and last rows: no zero rows at all
            gaps = blank.copy()
            gaps[::5] = rng.integers(0, top, (len(gaps[::5]), shape[1]), endpoint=True)
            images += [blank, band, edges, gaps, np.full(shape, top, dtype),
                       rng.integers(0, top, shape, endpoint=True).astype(dtype)]
        images.append(rng.integers(0, 4, (48, 128)).astype(dtype)[:, ::2])  # not contiguous
    return images


def test_label_pngs_decode_to_the_same_pixels_in_every_reader():
    for image in label_images():
        data = label_png(image)
        for pixels in decoded(data):
            assert pixels.dtype == image.dtype and pixels.shape == image.shape
            assert np.array_equal(pixels, image)
        assert label_png(image) == data  # deterministic
    mask = np.zeros((480, 640), np.uint8)
    mask[100:180, 300:360] = 255
    assert len(label_png(mask)) <= len(png_bytes(mask))  # the same filter and strategy: no bigger files
    rgb = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    assert label_png(rgb) == png_bytes(rgb)  # colour images keep OpenCV's encoder


def test_zero_rows_checksum_is_zlibs():
    for start in (1, 12345678, 0xFFF0FFF0 % (65521 << 16)):
        for count in (0, 1, 641, 65521 * 3 + 7):
            assert _adler32_zeros(start, count) == zlib.adler32(bytes(count), start)


@pytest.mark.parametrize("truth", [True, False], ids=["depth source", "mesh only"])
def test_a_bake_writes_what_opencvs_encoder_wrote(small_scene: Path, tmp_path: Path, monkeypatch, truth: bool):
    """Every file of a small bake (all formats) equals the bake with OpenCV's PNG encoder: the same bytes, and a
    PNG decodes to the same pixels."""
    spec = spec_from_scene(small_scene)
    source = (lambda: TruthQuery(small_scene)) if truth else (lambda: None)
    bake(spec, tmp_path / "fast", frames="0:3", depth_source=source())
    monkeypatch.setattr(encoded, "label_png", png_bytes)
    bake(spec, tmp_path / "opencv", frames="0:3", depth_source=source())
    files = sorted(p.relative_to(tmp_path / "fast") for p in (tmp_path / "fast").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "opencv") for p in (tmp_path / "opencv").rglob("*") if p.is_file())
    pngs = 0
    for rel in files:
        fast, opencv = (tmp_path / "fast" / rel).read_bytes(), (tmp_path / "opencv" / rel).read_bytes()
        if rel.suffix == ".png" and "rgb" not in rel.parts:
            reference = decoded(opencv)[0]
            assert all(np.array_equal(p, reference) and p.dtype == reference.dtype for p in decoded(fast)), rel
            pngs += 1
        else:
            assert fast == opencv, rel
    assert pngs >= 3 * 8  # depth, masks, id maps and depth_mm of each frame


def test_depth_maps_keep_their_values():
    rng = np.random.default_rng(3)
    depth = rng.uniform(-1.0, 80.0, 4000).astype(np.float32)
    depth[:12] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.0005, 0.0015, 0.0025, 65.5345, 65.5355, 1e30, -1e30]
    for units in (1000.0, 1.0, 0.5, 25.4):
        mm = np.asarray(depth, np.float32).astype(np.float64) * units
        with np.errstate(over="ignore"):  # the old code's nan_to_num made inf the largest float; times units
            old_raw = np.round(np.nan_to_num(depth.astype(np.float32).astype(np.float64), nan=0.0) * units)
        old_raw = np.where((old_raw > 0) & (old_raw <= 65535), old_raw, 0).astype(np.uint16)
        assert np.array_equal(depth_mm_png(mm), old_raw)
        for scale in (0.01, 0.1, 1.0, 7.0):
            old_bop = np.clip(np.where(np.isfinite(mm), np.round(mm / scale), 0.0), 0, 65535).astype(np.uint16)
            assert np.array_equal(depth_png(mm, scale), old_bop)


def test_rle_and_visible_boxes_equal_those_of_the_masks(small_scene: Path):
    rng = np.random.default_rng(5)
    for mask in [rng.random((48, 64)) < 0.3, np.zeros((5, 1), bool), np.ones((1, 7), bool),
                 (rng.random((40, 80)) < 0.5)[:, ::2]]:
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert encode_rle(mask) == {"size": list(reference["size"]), "counts": reference["counts"].decode("ascii")}
    spec = spec_from_scene(small_scene)
    labeler = frame_labeler(spec, {o.instance_id: o.mesh for o in spec.objects}, TruthQuery(small_scene),
                            LabelOptions())
    dataset_views = views(spec, range(4))
    seen = 0
    for view in dataset_views:
        for inst in labeler.label(view).instances:
            assert visible_bbox_coco(inst) == bbox_coco(inst.visible_mask)
            seen += inst.px_count_visib > 0
    assert seen


def views(spec, frames) -> list[View]:
    from neurallabel.core.data.dataset import load_dataset

    dataset = load_dataset(spec.data_path)
    return [View.from_frame(dataset.frame(i), Similarity(spec.world_from_data)) for i in frames]


# --- photos: a PNG's pixels inflated, not decoded ----------------------------------------------------------


def png_file(mode: str, size=(20, 12)) -> bytes:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    image = Image.fromarray(pixels).convert(mode)
    if mode == "I;16":
        image = Image.fromarray((pixels[..., 0].astype(np.uint16) * 257))
    image.save(buf, "PNG")
    return buf.getvalue()


def with_bad_filter(data: bytes) -> bytes:
    """``data`` (an 8-bit RGB PNG in one IDAT chunk) with its second row's filter type set to 7 (no such type),
    every checksum made right again."""
    length = struct.unpack_from(">I", data, 33)[0]
    assert data[37:41] == b"IDAT"
    rows = bytearray(zlib.decompress(data[41:41 + length]))
    width = struct.unpack_from(">I", data, 16)[0]
    rows[1 + width * 3] = 7
    body = zlib.compress(bytes(rows))
    chunk = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    return data[:33] + chunk + data[41 + length + 4:]


def pil_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def test_an_intact_png_photo_is_checked_without_decoding_it(tmp_path: Path, monkeypatch):
    for mode in ("RGB", "RGBA", "L", "LA", "I;16", "1"):
        assert png_intact_size(png_file(mode)) == (20, 12), mode
    assert png_intact_size(png_file("P")) is None  # palette images: PIL decodes them
    assert png_intact_size(png_file("RGB"), max_pixels=239) is None  # over PIL's bomb limit: PIL's to refuse
    assert png_intact_size(png_file("RGB"), max_pixels=240) == (20, 12)
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_file("RGB"))
    frame = _frame(photo)

    def no_decode(*args, **kwargs):
        raise AssertionError("PIL decoded an intact PNG")

    monkeypatch.setattr(Image, "open", no_decode)
    check_photo(frame)


def test_a_broken_png_photo_fails_as_pils_decode_does(tmp_path: Path):
    data = png_file("RGB", size=(64, 48))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # a pixel byte: the CRC no longer matches
    broken = {"half": data[:len(data) // 2], "no IEND": data[:-12], "last byte": data[:-1],
              "flipped": bytes(flipped), "bad filter": with_bad_filter(data), "no pixels": data[:33]}
    for name, variant in broken.items():
        assert png_intact_size(variant) is None, name
        photo = tmp_path / f"{name}.png"
        photo.write_bytes(variant)
        if pil_decodes(variant):  # what PIL accepts (a missing IEND after whole pixels) stays accepted
            check_photo(_frame(photo))
        else:
            with pytest.raises(NeuralLabelError, match="does not decode"):
                check_photo(_frame(photo))
    assert not pil_decodes(broken["half"]) and not pil_decodes(broken["bad filter"])


def _frame(path: Path, index: int = 0):
    from neurallabel.core.data.dataset import Frame
    from neurallabel.core.geometry.cameras import Intrinsics

    size = struct.unpack_from(">II", path.read_bytes(), 16)  # IHDR is intact in every variant
    return Frame(index, path, np.eye(4), Intrinsics(size[0], size[1], 50.0, 50.0, size[0] / 2, size[1] / 2),
                 source_size=size)


def test_photos_checked_two_at_a_time_report_and_fail_in_order(tmp_path: Path):
    data = png_file("RGB", size=(64, 48))
    frames = []
    for i in range(7):
        photo = tmp_path / f"{i}.png"
        photo.write_bytes(data[:len(data) // 2] if i in (3, 4) else data)  # 4 fails too, maybe first
        frames.append(_frame(photo, i))
    done = []
    with pytest.raises(NeuralLabelError, match=r"frame 3: photo .*3.png does not decode"):
        validate_images(frames, progress=lambda n, total, stage: done.append(n))
    assert done == [1, 2, 3]
    validate_images(frames[:3] + frames[5:], threads=3)


# --- temp files --------------------------------------------------------------------------------------------


def test_atomic_writes_leave_the_umask_alone(tmp_path: Path, monkeypatch):
    """Another thread creating a file meanwhile would get the umask of the moment: it is never changed."""
    expected = 0o666 & ~_umask()

    def no_umask(mask):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", no_umask)
    for n in range(3):
        path = write_bytes(tmp_path / "deep" / f"f{n}.bin", b"x" * n)
        assert path.read_bytes() == b"x" * n and os.stat(path).st_mode & 0o777 == expected
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["f0.bin", "f1.bin", "f2.bin"]
    assert atomic.host_tag() == atomic.host_tag()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
