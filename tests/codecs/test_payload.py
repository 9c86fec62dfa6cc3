import struct

import numpy as np
import pytest
from PIL import Image

from tokencodec.codecs import get_codec
from tokencodec.codecs.payload import container_overhead, payload_bytes

CODECS = ["avif", "heic", "jpeg", "jpeg2000", "jpegxl", "webp"]

# Overhead must be the same at a low and a high quality for one image size. It is byte-exact for every
# format but JPEG XL: there the TOC's section sizes are variable-length U32s (12 to 32 bits each; a
# 512×512 VarDCT frame has 7 entries) and libjxl adds a small ReferenceOnly patches frame (header + TOC,
# ~8 bytes) at some qualities, so the headers move by a few tens of bytes at most (observed 5 bytes).
OVERHEAD_TOLERANCE = {"jpegxl": 24}


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    from skimage import data

    astronaut = data.astronaut()
    tiny = np.asarray(Image.fromarray(astronaut).resize((64, 64), Image.LANCZOS))
    return {"64": np.ascontiguousarray(tiny), "512": np.ascontiguousarray(astronaut[:512, :512])}


def _low_high(name: str) -> tuple[int, int]:
    qualities = get_codec(name).default_qualities
    return qualities[0], qualities[-1]


@pytest.mark.parametrize("size", ["64", "512"])
@pytest.mark.parametrize("name", CODECS)
def test_payload_is_a_proper_part_that_grows_with_quality(name, size, images):
    codec = get_codec(name)
    low, high = (codec.encode(images[size], q) for q in _low_high(name))
    p_low, p_high = payload_bytes(name, low), payload_bytes(name, high)
    assert 0 < p_low < len(low) and 0 < p_high < len(high)
    assert p_high > p_low
    o_low, o_high = container_overhead(name, low), container_overhead(name, high)
    assert o_low == len(low) - p_low and o_high == len(high) - p_high
    assert abs(o_low - o_high) <= OVERHEAD_TOLERANCE.get(name, 0)


def test_tiny_jpeg_is_dominated_by_its_tables(images):
    data = get_codec("jpeg").encode(images["64"], 5)  # 243 bytes of scan, 625 of headers
    assert container_overhead("jpeg", data) > payload_bytes("jpeg", data)


def _located_independently(name: str, data: bytes) -> int:
    """The payload found without the parser, from landmarks of the single-image files the codecs write."""
    if name == "jpeg":  # one baseline scan: after the SOS header, up to EOI
        sos = data.index(b"\xff\xda")
        assert data.endswith(b"\xff\xd9")
        return len(data) - 2 - (sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big"))
    if name == "webp":  # RIFF header (12) + one VP8 chunk header (8); minus the 10-byte key-frame header
        assert data[12:16] == b"VP8 "
        return struct.unpack("<I", data[16:20])[0] - 10
    if name in ("avif", "heic"):  # one mdat holding just the primary item
        mdat = data.index(b"mdat") - 4
        assert mdat + int.from_bytes(data[mdat:mdat + 4], "big") == len(data)
        return len(data) - mdat - 8
    if name == "jpeg2000":  # one tile, one tile-part: after SOD up to EOC
        sot = data.index(b"\xff\x90")
        return len(data) - 2 - (data.index(b"\xff\x93", sot) + 2)
    raise AssertionError(name)


@pytest.mark.parametrize("size", ["64", "512"])
@pytest.mark.parametrize("name", ["avif", "heic", "jpeg", "jpeg2000", "webp"])
def test_payload_matches_landmarks_located_independently(name, size, images):
    for q in _low_high(name):
        data = get_codec(name).encode(images[size], q)
        assert payload_bytes(name, data) == _located_independently(name, data)


def test_jpeg_scan_with_restart_markers_and_stuffing(images):
    buf = __import__("io").BytesIO()
    Image.fromarray(images["512"]).save(buf, format="JPEG", quality=90, restart_marker_blocks=4)
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")
    scan = data[sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big"):-2]
    assert b"\xff\xd0" in scan and b"\xff\x00" in scan
    assert payload_bytes("jpeg", data) == len(scan)


def test_progressive_jpeg_counts_every_scan(images):
    buf = __import__("io").BytesIO()
    Image.fromarray(images["64"]).save(buf, format="JPEG", quality=50, progressive=True)
    data = buf.getvalue()
    assert data.count(b"\xff\xda") > 1
    assert 0 < payload_bytes("jpeg", data) < len(data)


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def test_jpegxl_container_holds_the_same_payload(images):
    stream = get_codec("jpegxl").encode(images["64"], 50)
    assert stream[:2] == b"\xff\x0a"  # imagecodecs writes a bare codestream
    head = b"\x00\x00\x00\x0cJXL \r\n\x87\n" + _box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ")
    jxlc = head + _box(b"jxlc", stream)
    cut = len(stream) // 3
    jxlp = head + _box(b"jxlp", struct.pack(">I", 0) + stream[:cut]) + _box(
        b"jxlp", struct.pack(">I", 0x80000001) + stream[cut:])
    for wrapped in (jxlc, jxlp):
        assert payload_bytes("jpegxl", wrapped) == payload_bytes("jpegxl", stream)
        assert container_overhead("jpegxl", wrapped) > container_overhead("jpegxl", stream)


@pytest.mark.parametrize("name", CODECS)
def test_truncated_or_corrupt_bitstreams_raise(name, images):
    data = get_codec(name).encode(images["64"], _low_high(name)[1])
    for bad in (data[: len(data) // 2], data[:-3], data[:10], b"", bytes(64), b"\xff" * 4 + data[4:]):
        with pytest.raises(ValueError, match=name):
            payload_bytes(name, bad)


def test_jpeg_missing_eoi_raises(images):
    data = get_codec("jpeg").encode(images["64"], 50)
    with pytest.raises(ValueError, match="jpeg.*EOI"):
        payload_bytes("jpeg", data[:-2])


def test_unknown_codec_raises():
    with pytest.raises(ValueError, match="no payload parser"):
        payload_bytes("gif", b"GIF89a")
