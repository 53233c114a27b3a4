"""PNG encoding of label images (masks, id maps, depth maps): fast where rows are empty.

A frame's label images are mostly zero: a mask holds one object, and a mesh-only depth map has no background.
OpenCV's encoder (SUB filter, zlib level 1, RLE strategy) still deflates every zero byte, at about 300 MB/s:
~1 ms per 640x480 mask, most of a bake's per-frame encoding. :func:`label_png` deflates only the band of rows
that holds a non-zero pixel, with the same filter and strategy; the all-zero rows above and below it are
deflate segments compressed once per row length and row count (:func:`_zero_rows`) and spliced in. Each segment
ends in a full flush (byte-aligned, no reference back into an earlier segment), so the concatenation is one
valid zlib stream and the file decodes to exactly the pixels given: a standard 8/16-bit greyscale PNG that every
decoder reads (bop_toolkit's imageio, OpenCV, PIL).
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import numpy as np

from ..io.atomic import png_bytes

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" level
_FINAL_BLOCK = b"\x03\x00"  # an empty final block (fixed Huffman codes)
_SUB = 1  # the PNG row filter of the band's rows (a zero row's filter byte is 0: none)


def _deflate(data: bytes) -> bytes:
    """Raw deflate of ``data`` as OpenCV's PNG encoder runs zlib (level 1, RLE), ending in a full flush."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


@lru_cache(maxsize=256)
def _zero_block(row_bytes: int, rows: int) -> bytes:
    return _deflate(bytes(row_bytes * rows))


def _zero_rows(row_bytes: int, rows: int) -> bytes:
    """Deflate segments of ``rows`` all-zero rows (filter byte included in ``row_bytes``): the cached blocks of
    the powers of two that sum to ``rows``, so a few hundred cached entries serve every row count."""
    out, power = [], 1
    while rows:
        if rows & power:
            out.append(_zero_block(row_bytes, power))
            rows -= power
        power <<= 1
    return b"".join(out)


def _adler32_zeros(checksum: int, count: int) -> int:
    """zlib's Adler-32 ``checksum`` continued over ``count`` zero bytes: the byte sum stays, and the sum of sums
    grows by it once per byte."""
    low, high = checksum & 0xFFFF, checksum >> 16
    return (((high + count * low) % 65521) << 16) | low


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filtered_rows(band: np.ndarray) -> np.ndarray:
    """PNG scanlines of ``band`` (rows of big-endian pixels) with the SUB filter: each byte minus the byte one
    pixel to its left (mod 256), after a filter-type byte."""
    rows, width = band.shape
    step = band.dtype.itemsize
    data = np.ascontiguousarray(band, band.dtype.newbyteorder(">")).view(np.uint8).reshape(rows, width * step)
    out = np.empty((rows, 1 + width * step), np.uint8)
    out[:, 0] = _SUB
    out[:, 1:1 + step] = data[:, :step]
    np.subtract(data[:, step:], data[:, :-step], out=out[:, 1 + step:])
    return out


def label_png(image: np.ndarray) -> bytes:
    """PNG bytes of a greyscale uint8 / uint16 image (see the module docstring); other images go to OpenCV's
    encoder (:func:`~..io.atomic.png_bytes`). Deterministic for the same pixels."""
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16) or 0 in image.shape:
        return png_bytes(image)
    height, width = image.shape
    row_bytes = 1 + width * image.dtype.itemsize
    filled = np.flatnonzero(image.any(axis=1))
    top, bottom = (int(filled[0]), int(filled[-1]) + 1) if len(filled) else (height, height)
    band = _filtered_rows(image[top:bottom]).tobytes() if bottom > top else b""
    checksum = zlib.adler32(band, _adler32_zeros(1, row_bytes * top))
    checksum = _adler32_zeros(checksum, row_bytes * (height - bottom))
    stream = b"".join((_ZLIB_HEADER, _zero_rows(row_bytes, top), _deflate(band) if band else b"",
                       _zero_rows(row_bytes, height - bottom), _FINAL_BLOCK, struct.pack(">I", checksum)))
    header = struct.pack(">IIBBBBB", width, height, 8 * image.dtype.itemsize, 0, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
