"""The .seg member (CTSG v1): lossless round trip, the documented layout read by an independent decoder, and
every corruption refused; readers skip a damaged mask like a damaged image."""

from __future__ import annotations

import io
import struct
import tarfile

import numpy as np
import pytest
import zstandard

from ctssl.shards.encoding import HEADER, EncodingError, decode_seg, encode_hu, encode_seg
from ctssl.shards.reader import ShardError, decode_mask, iter_shard
from ctssl.shards.writer import ShardWriter


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (256, 256), (300, 17)])
def test_round_trip_is_lossless(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.integers(0, 256, shape, dtype=np.uint8)
    mask[: shape[0] // 2] = 0                       # masks are mostly background
    out = decode_seg(encode_seg(mask))
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, mask)


def test_layout_is_the_cthu_header_then_one_checksummed_zstd_frame():
    mask = np.arange(6 * 5, dtype=np.uint8).reshape(6, 5)
    data = encode_seg(mask)
    magic, version, flags, reserved, h, w = struct.unpack("<4sBBHII", data[:16])
    assert (magic, version, flags, reserved, h, w) == (b"CTSG", 1, 0, 0, 6, 5)
    assert HEADER.size == 16 and len(encode_hu(np.zeros((6, 5), np.int16))[:16]) == 16
    assert zstandard.get_frame_parameters(data[16:]).has_checksum
    # FORMAT.md's decoder, written without ctssl.
    raw = zstandard.ZstdDecompressor().decompress(data[16:], max_output_size=h * w)
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(h, w), mask)


def test_encode_refuses_what_is_not_a_2d_uint8_mask():
    for bad in (np.zeros((4, 4), np.int16), np.zeros((2, 4, 4), np.uint8), np.zeros(4, np.uint8)):
        with pytest.raises(TypeError, match="2-D uint8"):
            encode_seg(bad)


def _flip(data: bytes, offset: int, bit: int = 0x08) -> bytes:
    out = bytearray(data)
    out[offset] ^= bit
    return bytes(out)


def test_every_corruption_is_refused():
    mask = np.random.default_rng(0).integers(0, 4, (64, 48), dtype=np.uint8)
    data = encode_seg(mask)
    no_checksum = HEADER.pack(b"CTSG", 1, 0, 0, 64, 48) + zstandard.ZstdCompressor().compress(mask.tobytes())
    other_size = HEADER.pack(b"CTSG", 1, 0, 0, 64, 47) + data[16:]
    cases = {
        "a bit flipped in the pixels": _flip(data, len(data) - 20),
        "a bit flipped in the checksum": _flip(data, len(data) - 1),
        "flags set": _flip(data, 5, 0x01),
        "reserved set": _flip(data, 6, 0x01),
        "another version": _flip(data, 4, 0x02),
        "the .hu magic": b"CTHU" + data[4:],
        "truncated header": data[:10],
        "truncated frame": data[:-7],
        "a frame without its checksum": no_checksum,
        "a size that is not the frame's": other_size,
    }
    for name, bad in cases.items():
        with pytest.raises(EncodingError):
            decode_seg(bad)
            pytest.fail(name)
    np.testing.assert_array_equal(decode_seg(data), mask)     # the intact payload still decodes


def _shard(tmp_path, members_of):
    writer = ShardWriter(tmp_path, "train-00000-00000.tar", "train")
    for key, members in members_of:
        writer.add(key, members)
    writer.close()
    return tmp_path / "train-00000-00000.tar"


def test_readers_yield_the_mask_and_none_without_one(tmp_path):
    hu = np.zeros((8, 8), np.int16)
    mask = np.eye(8, dtype=np.uint8) * 3
    shard = _shard(tmp_path, [("a", {"hu": encode_hu(hu), "json": b"{}", "seg": encode_seg(mask)}),
                              ("b", {"hu": encode_hu(hu), "json": b"{}"})])
    samples = list(iter_shard(shard))
    np.testing.assert_array_equal(samples[0]["mask"], mask)
    assert samples[1]["mask"] is None
    raw = list(iter_shard(shard, decode=False))
    np.testing.assert_array_equal(decode_mask(raw[0]), mask)
    assert decode_mask(raw[1]) is None


def test_a_damaged_or_misfit_mask_costs_its_sample(tmp_path):
    hu = np.zeros((8, 8), np.int16)
    good = {"hu": encode_hu(hu), "json": b"{}", "seg": encode_seg(np.ones((8, 8), np.uint8))}
    misfit = {"hu": encode_hu(hu), "json": b"{}", "seg": encode_seg(np.ones((8, 7), np.uint8))}
    shard = _shard(tmp_path, [("a", good), ("b", misfit), ("c", good)])
    # Flip one bit inside a's .seg member (after its tar header): the .crc member catches it.
    data = bytearray(shard.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        info = next(i for i in tar.getmembers() if i.name == "a.seg")
    data[info.offset_data + info.size - 3] ^= 0x40
    shard.write_bytes(bytes(data))
    problems = []
    keys = [s["key"] for s in iter_shard(shard, on_error=lambda key, reason: problems.append((key, reason)))]
    assert keys == ["c"]
    assert problems[0][0] == "a" and "checksum mismatch in .seg" in problems[0][1]
    assert problems[1][0] == "b" and "mask shape" in problems[1][1]
    with pytest.raises(ShardError):
        decode_mask({"key": "x", "seg": b"CTSG" + bytes(20)})
