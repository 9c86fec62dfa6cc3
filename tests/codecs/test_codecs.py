import numpy as np
import pytest

from tokencodec.codecs import CODECS, Codec, CodecError, get_codec
from tokencodec.metrics.human import psnr
from tokencodec.registry import UnknownNameError

# Signatures of each format's real bitstream: the bytes come from the real encoder.
MAGIC = {
    "jpeg": lambda b: b[:2] == b"\xff\xd8",
    "webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
    "avif": lambda b: b[4:12] == b"ftypavif",
    "jpeg2000": lambda b: b[4:8] == b"jP  ",
    "jpegxl": lambda b: b[:2] == b"\xff\x0a" or b[4:8] == b"JXL ",
    "heic": lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"heic", b"mif1", b"heix"),
}


def test_all_six_codecs_are_registered():
    assert set(CODECS.names()) == set(MAGIC)


@pytest.mark.parametrize("name", sorted(MAGIC))
def test_round_trip_with_a_real_bitstream(name, photo):
    codec = get_codec(name)
    low, high = codec.default_qualities[0], codec.default_qualities[-1]
    small, large = codec.encode(photo, low), codec.encode(photo, high)
    assert MAGIC[name](small) and MAGIC[name](large)
    decoded_small, decoded_large = codec.decode(small), codec.decode(large)
    assert decoded_small.shape == photo.shape and decoded_small.dtype == np.uint8
    assert len(large) > len(small)
    assert psnr(photo, decoded_large) > psnr(photo, decoded_small) + 3
    assert codec.versions() and all(codec.versions().values())


@pytest.mark.parametrize("name", sorted(MAGIC))
def test_odd_sizes_round_trip(name):
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    codec = get_codec(name)
    assert codec.decode(codec.encode(image, codec.default_qualities[-1])).shape == image.shape


@pytest.mark.parametrize("name", sorted(MAGIC))
def test_quality_outside_the_range_is_refused_with_the_range(name, photo):
    codec = get_codec(name)
    lo, hi = codec.quality_range
    for bad in (lo - 1, hi + 1, 50.5):
        with pytest.raises(CodecError, match=rf"allowed range \[{lo}, {hi}\]"):
            codec.encode(photo, bad)


@pytest.mark.parametrize("name", sorted(MAGIC))
def test_corrupt_and_truncated_bitstreams_raise_codec_error(name, photo):
    codec = get_codec(name)
    data = codec.encode(photo, codec.default_qualities[3])
    for broken in (b"not an image at all", data[: len(data) // 8]):
        with pytest.raises(CodecError, match=name):
            codec.decode(broken)


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="known: avif, heic, jpeg"):
        get_codec("vvc")


def test_non_rgb_input_is_refused(photo):
    with pytest.raises(CodecError, match="H×W×3 uint8"):
        get_codec("jpeg").encode(photo.astype(np.float32), 50)


def test_adding_a_codec_is_one_class():
    class Raw(Codec):
        def _encode(self, image, quality):
            return image.tobytes()

        def _decode(self, data):
            return np.frombuffer(data, np.uint8).reshape(2, 2, 3)

    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert np.array_equal(Raw().decode(Raw().encode(image, 50)), image)
