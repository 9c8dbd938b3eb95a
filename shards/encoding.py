"""The sample encodings: ``.hu`` (lossless int16 Hounsfield units, byte-shuffled, Zstandard) and ``.seg``
(lossless uint8 class ids of a segmentation mask, Zstandard).

Chosen by measurement (``ctssl bench encoding``; figures in shards/FORMAT.md): on CT slices the
high bytes of int16 HU are nearly constant, so storing all low bytes then all high bytes before a
Zstandard (level 3) frame is smaller than zlib, PNG-16 or plain zstd, and decodes several times
faster than PNG-16. Layout, little endian (see shards/FORMAT.md for the specification)::

    0   4  magic b"CTHU"
    4   1  version (2; 1 is still read)
    5   1  flags (bit 0: byte-shuffled; no other bit may be set)
    6   2  reserved, 0
    8   4  height (uint32)
    12  4  width (uint32)
    16  -  one Zstandard frame of 2 * height * width bytes; version 2 frames carry Zstandard's content
           checksum (XXH64), which decompression verifies, so a flipped bit in the pixels is an error
           and never a silently altered image; the header's fields are checked exactly

``.seg`` (CTSG) has exactly the same 16-byte header layout (magic b"CTSG", version 1, flags 0, reserved 0,
height, width) followed by one Zstandard frame, with its content checksum, of height * width uint8 class ids
in row-major order (no shuffle: one byte per pixel). Pixel (i, j) of a ``.seg`` lies on pixel (i, j) of its
sample's ``.hu``.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

MAGIC = b"CTHU"
VERSION = 2
READ_VERSIONS = (1, 2)
FLAG_SHUFFLED = 1
HEADER = struct.Struct("<4sBBHII")
ZSTD_LEVEL = 3

_compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
_decompressor = zstandard.ZstdDecompressor()


SEG_MAGIC = b"CTSG"
SEG_VERSION = 1


class EncodingError(ValueError):
    pass


def encode_hu(hu: np.ndarray) -> bytes:
    """int16 (H, W) HU image -> ``.hu`` bytes."""
    if hu.dtype != np.int16 or hu.ndim != 2:
        raise TypeError(f"encode_hu expects a 2-D int16 array, got {hu.dtype} with shape {hu.shape}")
    h, w = hu.shape
    planes = np.ascontiguousarray(hu).astype("<i2", copy=False).view(np.uint8).reshape(-1, 2)
    shuffled = np.ascontiguousarray(planes.T).tobytes()
    return HEADER.pack(MAGIC, VERSION, FLAG_SHUFFLED, 0, h, w) + _compressor.compress(shuffled)


def decode_hu(data: bytes) -> np.ndarray:
    """``.hu`` bytes -> int16 (H, W) HU image; EncodingError on anything malformed or corrupted."""
    if len(data) < HEADER.size:
        raise EncodingError(f"truncated .hu payload ({len(data)} bytes)")
    magic, version, flags, reserved, h, w = HEADER.unpack_from(data)
    if magic != MAGIC or version not in READ_VERSIONS:
        raise EncodingError(f"not a CTHU payload (magic {magic!r}, version {version}; readable: {READ_VERSIONS})")
    if flags & ~FLAG_SHUFFLED or reserved:
        raise EncodingError(f"corrupt CTHU header (flags {flags:#x}, reserved {reserved:#x})")
    frame = data[HEADER.size:]
    try:
        if version >= 2 and not zstandard.get_frame_parameters(frame).has_checksum:
            raise EncodingError("CTHU v2 payload without its Zstandard checksum (corrupt frame header)")
        raw = _decompressor.decompress(frame, max_output_size=2 * h * w)
    except zstandard.ZstdError as err:
        raise EncodingError(f"corrupt Zstandard frame: {err}") from None
    if len(raw) != 2 * h * w:
        raise EncodingError(f"payload holds {len(raw)} bytes, expected {2 * h * w} for {h}x{w}")
    planes = np.frombuffer(raw, dtype=np.uint8)
    if flags & FLAG_SHUFFLED:
        n = h * w  # low bytes, then high bytes: value = high << 8 | low
        values = (planes[n:].astype(np.uint16) << 8) | planes[:n]
        return values.view(np.int16).reshape(h, w)
    return planes.view("<i2").reshape(h, w).astype(np.int16, copy=True)


def encode_seg(mask: np.ndarray) -> bytes:
    """uint8 (H, W) class ids -> ``.seg`` (CTSG v1) bytes."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise TypeError(f"encode_seg expects a 2-D uint8 array, got {mask.dtype} with shape {mask.shape}")
    h, w = mask.shape
    return HEADER.pack(SEG_MAGIC, SEG_VERSION, 0, 0, h, w) + _compressor.compress(np.ascontiguousarray(mask).tobytes())


def decode_seg(data: bytes) -> np.ndarray:
    """``.seg`` bytes -> uint8 (H, W) class ids; EncodingError on anything malformed or corrupted."""
    if len(data) < HEADER.size:
        raise EncodingError(f"truncated .seg payload ({len(data)} bytes)")
    magic, version, flags, reserved, h, w = HEADER.unpack_from(data)
    if magic != SEG_MAGIC or version != SEG_VERSION:
        raise EncodingError(f"not a CTSG payload (magic {magic!r}, version {version}; readable: ({SEG_VERSION},))")
    if flags or reserved:
        raise EncodingError(f"corrupt CTSG header (flags {flags:#x}, reserved {reserved:#x})")
    frame = data[HEADER.size:]
    try:
        if not zstandard.get_frame_parameters(frame).has_checksum:
            raise EncodingError("CTSG payload without its Zstandard checksum (corrupt frame header)")
        raw = _decompressor.decompress(frame, max_output_size=h * w)
    except zstandard.ZstdError as err:
        raise EncodingError(f"corrupt Zstandard frame: {err}") from None
    if len(raw) != h * w:
        raise EncodingError(f"payload holds {len(raw)} bytes, expected {h * w} for {h}x{w}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(h, w).copy()
