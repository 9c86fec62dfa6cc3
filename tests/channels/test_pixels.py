"""Pixel files over a channel: packetised as each format allows, and what each decoder does with a loss."""

import numpy as np
import pytest

from tokencodec.channels.pixels import decode_received, implied_header, no_image, packetize, reassemble, split
from tokencodec.codecs import get_codec
from tokencodec.data.vqa import VQADataset


@pytest.fixture(scope="module")
def scene():
    return list(VQADataset("test", 2, 0))[1].image


def send(codec, image, quality, mtu=128):
    data = get_codec(codec).encode(image, quality)
    return data, packetize(codec, data, image.shape[1], image.shape[0], quality, mtu)


@pytest.mark.parametrize(("codec", "quality"), [("jpeg-rst", 80), ("jpeg2000-plt", 35), ("jpegxl", 80)])
def test_every_packet_fits_and_all_packets_decode_to_the_file(scene, codec, quality):
    data, packets = send(codec, scene, quality)
    assert len(packets) > 2 and all(len(p) <= 128 for p in packets)
    image, got = decode_received(codec, packets[::-1], scene.shape)          # any order
    assert np.array_equal(image, get_codec(codec).decode(data)) and got.units_received == got.units


def test_the_header_is_implied_by_size_and_quality(scene):
    for codec, q in (("jpeg-rst", 80), ("jpeg2000-plt", 35)):
        other = get_codec(codec).encode(np.ascontiguousarray(scene[::-1, ::-1]), q)
        assert get_codec(codec).encode(scene, q) != other
        assert split(codec, other, 64, 64, q)                                # same header, other content
        assert len(implied_header(codec, 64, 64, q)) > 100                   # not sent: rebuilt by the receiver


def test_jpeg_loses_only_the_lost_intervals_in_place(scene):
    data, packets = send("jpeg-rst", scene, 80, mtu=1200)
    units = split("jpeg-rst", data, 64, 64, 80)
    assert len(units) == 8 and len(packets) == 1                             # 8 MCUs per interval: a 64-px row
    full = get_codec("jpeg-rst").decode(data)
    data2, packets = send("jpeg-rst", scene, 80, mtu=200)
    lost_row = next(i for i, p in enumerate(packets) if reassemble("jpeg-rst", [p]).units_received == 1)
    image, got = decode_received("jpeg-rst", [p for i, p in enumerate(packets) if i != lost_row], scene.shape)
    differs = np.flatnonzero(np.abs(image.astype(int) - full.astype(int)).reshape(8, 8, 64, 3).max(axis=(1, 2, 3)))
    assert len(differs) == 1                                                  # one row of blocks, the others intact
    row = image[8 * differs[0]:8 * differs[0] + 8]
    assert (row == 128).all()                                                 # zero blocks: flat mid-grey


def test_jpeg2000_decodes_with_empty_packets_for_the_lost_ones(scene):
    data, packets = send("jpeg2000-plt", scene, 35)
    full = get_codec("jpeg2000-plt").decode(data)
    for lost in (1, len(packets) // 2, len(packets) - 1):
        image, got = decode_received("jpeg2000-plt", [p for i, p in enumerate(packets) if i != lost], scene.shape)
        assert image is not None and got.units_received < got.units
        assert 0 < np.abs(image.astype(int) - full.astype(int)).mean() < 60


def test_jpegxl_with_any_lost_packet_is_no_image(scene):
    _, packets = send("jpegxl", scene, 80)
    for lost in range(len(packets)):
        image, _ = decode_received("jpegxl", [p for i, p in enumerate(packets) if i != lost], scene.shape)
        assert image is None
    assert decode_received("jpegxl", [], scene.shape)[0] is None
    assert (no_image(scene.shape) == 128).all() and no_image(scene.shape).shape == scene.shape


def test_corrupted_pixel_packets_are_dropped(scene):
    _, packets = send("jpeg2000-plt", scene, 35)
    bad = bytearray(packets[2])
    bad[20] ^= 1
    got = reassemble("jpeg2000-plt", [*packets[:2], bytes(bad), *packets[3:]])
    assert got.rejected == 1 and got.units_received < got.units


def test_resilient_files_have_their_payload_parsed_and_cost_their_markers(scene):
    from tokencodec.codecs import payload_bytes

    plain, rst = get_codec("jpeg").encode(scene, 80), get_codec("jpeg-rst").encode(scene, 80)
    assert 0 < payload_bytes("jpeg-rst", rst) < len(rst) and rst.count(b"\xff\xd0") >= 1 and b"\xff\xd0" not in plain
    j2k = get_codec("jpeg2000-plt").encode(scene, 35)
    assert j2k.startswith(b"\xff\x4f\xff\x51") and b"\xff\x58" in j2k          # raw codestream with PLT
    assert 0 < payload_bytes("jpeg2000-plt", j2k) < len(j2k)
