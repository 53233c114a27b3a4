"""Loading a frame's photo as a float image of exactly the size its intrinsics describe.

``load_image`` returns float32 RGB in [0, 1], shape (H, W, 3). Images with an alpha channel (NeRF-synthetic's
RGBA PNGs) are composited on a white background by default, the usual NeRF-synthetic convention;
``background=None`` keeps the alpha channel instead and returns (H, W, 4) with straight (not premultiplied)
colour. Greyscale images become grey RGB (16-bit ones keep their precision). EXIF orientation is ignored,
as COLMAP ignores it, so pixels and cameras stay consistent. Downscaling averages pixel areas (PIL's box
filter), so a downscaled pixel is the mean of the full-resolution pixels it covers; that matches the rays
through pixel centres of :meth:`Intrinsics.scaled`.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from ..errors import NeuralLabelError
from ..progress import ProgressFn, report

if TYPE_CHECKING:  # pragma: no cover
    from ..data.dataset import Frame

WHITE = (1.0, 1.0, 1.0)


def read_image_file(path: str | Path) -> np.ndarray:
    """The pixels of an image file as float32 in [0, 1], (H, W, C) with C = 3 (RGB) or 4 (RGBA)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32) / 65535.0
                return np.repeat(array[..., None], 3, axis=-1)
            if mode not in ("RGB", "RGBA"):
                image = image.convert("RGBA" if ("A" in mode or "transparency" in image.info) else "RGB")
            array = np.asarray(image)
    except FileNotFoundError:
        raise NeuralLabelError(f"{path}: image file does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise NeuralLabelError(f"{path}: not a readable image ({exc})") from None
    return array.astype(np.float32) / 255.0


def resize_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-average resize of a float (H, W, C) image (PIL's box filter on each channel)."""
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                           .resize((width, height), Image.Resampling.BOX))
                for c in range(image.shape[2])]
    return np.stack(channels, axis=-1).astype(np.float32)


def on_background(image: np.ndarray, background: tuple[float, float, float] = WHITE) -> np.ndarray:
    """RGB (H, W, 3) of a straight-alpha RGBA float image composited on ``background``."""
    alpha = image[..., 3:4]
    return image[..., :3] * alpha + np.asarray(background, dtype=np.float32) * (1.0 - alpha)


def read_photo_rgb8(path: Optional[str | Path], width: int, height: int) -> Optional[np.ndarray]:
    """A photo as uint8 RGB (height, width, 3), area-averaged to that size (a downscaled dataset's camera),
    alpha composited on white as training does; None when there is no readable photo there."""
    if path is None:
        return None
    try:
        image = read_image_file(path)
    except NeuralLabelError:
        return None
    if image.shape[2] == 4:
        image = on_background(image)
    image = resize_area(np.ascontiguousarray(image[..., :3]), width, height)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def load_image(frame: "Frame", downscale: Optional[float] = None,
               background: Optional[tuple[float, float, float]] = WHITE) -> np.ndarray:
    """A frame's image as float32 (H, W, 3) in [0, 1] (or (H, W, 4) with ``background=None``).

    ``downscale`` is relative to the image file; by default the frame's own (the dataset's ``downscale``),
    so the result is exactly ``frame.intrinsics.height x frame.intrinsics.width``. Raises
    :class:`NeuralLabelError` when the file's size does not match what the frame's camera expects.
    """
    image = read_image_file(frame.image_path)
    file_h, file_w = image.shape[:2]
    expected = frame.source_size
    if expected is None:  # a Frame built by hand: its intrinsics describe the file at frame.downscale
        expected = (file_w, file_h) if frame.downscale != 1.0 else (frame.intrinsics.width, frame.intrinsics.height)
    if (file_w, file_h) != tuple(expected):
        raise NeuralLabelError(f"{frame.image_path}: image is {file_w}x{file_h} but its camera expects "
                               f"{expected[0]}x{expected[1]}")
    factor = frame.downscale if downscale is None else float(downscale)
    if not factor >= 1.0:
        raise NeuralLabelError(f"downscale must be >= 1 (got {downscale})")
    if factor == frame.downscale:
        width, height = frame.intrinsics.width, frame.intrinsics.height
    else:
        width, height = int(round(file_w / factor)), int(round(file_h / factor))
    if image.shape[2] == 4 and background is not None:
        # Composite straight alpha on the background before resizing (what a camera behind it would see).
        image = on_background(image, background)
    if (width, height) != (file_w, file_h):
        if image.shape[2] == 4:
            # Resize premultiplied colour so transparent pixels do not bleed their (meaningless) colour.
            alpha = image[..., 3:4]
            premult = resize_area(np.concatenate([image[..., :3] * alpha, alpha], axis=-1), width, height)
            a = premult[..., 3:4]
            image = np.concatenate([np.where(a > 0, premult[..., :3] / np.maximum(a, 1e-8), 0.0), a], axis=-1)
        else:
            image = resize_area(image, width, height)
    return np.ascontiguousarray(image, dtype=np.float32)


#: PNG colour type -> channels, for the types whose pixels :func:`png_intact_size` checks (not palette images)
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_intact_size(data: bytes, max_pixels: Optional[int] = None) -> Optional[tuple[int, int]]:
    """(width, height) of a PNG file's bytes when every pixel is there: all chunks complete with their CRCs up
    to IEND, and the pixel stream inflates (zlib checks its own checksum) to exactly the rows its header
    describes, each with a valid filter type. None when that is not shown -- a broken file, or one this check
    does not cover (interlaced, palette, more than ``max_pixels``): the caller then decodes it fully. Inflating
    alone skips un-filtering and colour conversion, about half of a full decode's time."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while True:
        if pos + 12 > len(data):
            return None  # no IEND: truncated
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data) or zlib.crc32(data[pos + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            return None
        if kind == b"IHDR" and length == 13:
            header = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"IDAT":
            idat.append(data[pos + 8:end])
        elif kind == b"IEND":
            break
        pos = end + 4
    if header is None:
        return None
    width, height, depth, colour, compression, filtering, interlace = header
    if (colour not in _PNG_CHANNELS or depth not in ((8, 16) if colour else (1, 2, 4, 8, 16))
            or (compression, filtering, interlace) != (0, 0, 0) or width == 0 or height == 0
            or (max_pixels is not None and width * height > max_pixels)):
        return None
    row_bytes = 1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8
    inflater = zlib.decompressobj()
    try:
        rows = inflater.decompress(b"".join(idat), row_bytes * height + 1)
    except zlib.error:
        return None
    if len(rows) != row_bytes * height or not inflater.eof:
        return None
    if np.frombuffer(rows, np.uint8)[::row_bytes].max() > 4:
        return None  # an unknown filter type
    return width, height


def check_photo(frame: "Frame") -> None:
    """Decode ``frame``'s photo once: NeuralLabelError naming the frame unless every pixel decodes (a
    truncated or corrupt file fails) and the image has the size its camera expects. A PNG whose pixels
    :func:`png_intact_size` finds intact is not decoded further; any other file is decoded by PIL."""
    from PIL import Image, UnidentifiedImageError

    expected = frame.source_size or (frame.intrinsics.width, frame.intrinsics.height)
    try:
        with open(frame.image_path, "rb") as file:
            head = file.read(len(_PNG_SIGNATURE))
            # PIL's decompression-bomb limit stays PIL's to enforce
            size = png_intact_size(head + file.read(), Image.MAX_IMAGE_PIXELS) if head == _PNG_SIGNATURE else None
        if size is None:
            with Image.open(frame.image_path) as image:
                image.load()
                size = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:  # PIL's decoders raise all of these
        raise NeuralLabelError(f"frame {frame.index}: photo {frame.image_path} does not decode "
                               f"({exc.__class__.__name__}: {exc})") from None
    if tuple(size) != tuple(expected):
        raise NeuralLabelError(f"frame {frame.index}: photo {frame.image_path} is {size[0]}x{size[1]} but its "
                               f"camera expects {expected[0]}x{expected[1]}")


def validate_images(frames: Iterable["Frame"], progress: Optional[ProgressFn] = None, threads: int = 2) -> None:
    """:func:`check_photo` on every frame (e.g. the frames a bake will label), before any work starts, so a
    broken photo is reported up front and not halfway through. ``threads`` photos are checked at once (zlib and
    PIL decode without Python's lock); frames are reported, and the first broken one raised, in order."""
    from concurrent.futures import ThreadPoolExecutor

    frames = list(frames)
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="check-photo")
    try:
        for n, _ in enumerate(pool.map(check_photo, frames)):
            report(progress, n + 1, len(frames), "check photos")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error: the frames not started are not checked
