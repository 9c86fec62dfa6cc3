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
    from tokencodec.codecs import plain_codecs

    assert set(plain_codecs()) == set(MAGIC)
    # machine-guided, and the block-transform baseline of semantic allocation (not swept by default)
    assert set(CODECS.names()) - set(MAGIC) == {"jpegxl-semantic", "jpeg2000-semantic", "blockdct", "blockdct-semantic",
                                                 "jpeg-rst", "jpeg2000-plt"}


@pytest.mark.parametrize("name", ["jpegxl-semantic", "jpeg2000-semantic"])
def test_semantic_prefilter_writes_a_standard_file_and_spends_less_on_the_background(name):
    from tokencodec.codecs.semantic import flatten_unimportant, important_patches
    from tokencodec.data.vqa import VQADataset

    s = VQADataset("val", 3, 0)[0]
    codec = get_codec(name)
    inner = get_codec(codec.inner)
    q = codec.default_qualities[len(codec.default_qualities) // 2]
    data = codec.encode(s.image, q)
    assert MAGIC[codec.inner](data)                                       # a plain JPEG XL / JPEG 2000 file
    keep = important_patches(s.image)
    assert (keep & s.object_mask).sum() >= 0.9 * s.object_mask.sum()      # the model's attention finds the objects
    assert np.array_equal(inner.decode(data), codec.decode(data))         # the standard decoder reads it
    assert len(data) < len(inner.encode(s.image, q))                      # the flat background is cheaper
    def patches(img):                                                     # [8, 8 patches, 8, 8 pixels, 3]
        return img.reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4)

    flat = patches(flatten_unimportant(s.image, keep))
    assert np.array_equal(flat[keep], patches(s.image)[keep])            # important patches untouched
    assert (flat[~keep].std(axis=(1, 2)) < 0.6).all()                    # each other patch is one colour
    with pytest.raises(CodecError, match="64×64"):
        codec.encode(np.zeros((32, 32, 3), np.uint8), q)


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
    with pytest.raises(UnknownNameError, match="known: avif, blockdct, blockdct-semantic, heic, jpeg"):
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
