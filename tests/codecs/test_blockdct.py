"""The block-transform codec with per-block quantiser scales (semantic allocation, route 2)."""

import numpy as np
import pytest

pytest.importorskip("constriction")

from tokencodec.codecs import CodecError, get_codec, payload_bytes, plain_codecs  # noqa: E402
from tokencodec.codecs.blockdct import decode_blocks, encode_blocks  # noqa: E402
from tokencodec.data.vqa import VQADataset  # noqa: E402
from tokencodec.metrics.human import human_metrics  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    return VQADataset("test", 4, 0)[0]


def psnr(a, b):
    return human_metrics(a, b)["psnr-rgb"]


def test_round_trip_rate_falls_and_quality_rises_with_the_knob(scene):
    codec = get_codec("blockdct")
    files = {q: codec.encode(scene.image, q) for q in (10, 50, 90)}
    assert len(files[10]) < len(files[50]) < len(files[90])
    decoded = {q: codec.decode(d) for q, d in files.items()}
    assert all(d.shape == scene.image.shape and d.dtype == np.uint8 for d in decoded.values())
    assert psnr(scene.image, decoded[10]) < psnr(scene.image, decoded[50]) < psnr(scene.image, decoded[90])
    assert codec.decode(files[50]).tobytes() == decoded[50].tobytes()            # deterministic
    assert payload_bytes("blockdct", files[50]) == len(files[50]) - 82
    assert "blockdct" not in plain_codecs() and "blockdct-semantic" not in plain_codecs()


def test_odd_sizes_are_padded_and_cropped_back():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(128, 30, (37, 53, 3)), 0, 255).astype(np.uint8)
    out = get_codec("blockdct").decode(get_codec("blockdct").encode(img, 90))
    assert out.shape == img.shape and psnr(img, out) > 30


def test_coarser_blocks_cost_fewer_bits_there_and_the_file_says_where(scene):
    n = 64
    fine = encode_blocks(scene.image, 60, np.zeros(n, np.int64))
    half = np.where(np.arange(n) < 32, 0, 6)
    coarse = encode_blocks(scene.image, 60, half)
    assert len(coarse) < len(fine)
    a, b = decode_blocks(fine), decode_blocks(coarse)
    top = slice(0, 32)                                   # blocks 0..31 are the image's top half (rows 0..31)
    assert np.array_equal(a[top].shape, b[top].shape) and psnr(scene.image[top], b[top]) == pytest.approx(
        psnr(scene.image[top], a[top]), abs=1.0)
    assert psnr(scene.image[32:], b[32:]) < psnr(scene.image[32:], a[32:])


def test_semantic_variant_spends_bits_on_the_attended_blocks(scene):
    from tokencodec.codecs.semantic import important_patches

    keep = important_patches(scene.image)
    uniform, semantic = get_codec("blockdct"), get_codec("blockdct-semantic")
    u, s = uniform.encode(scene.image, 70), semantic.encode(scene.image, 70)
    assert len(s) < len(u)
    du, ds = uniform.decode(u), semantic.decode(s)      # one decoder: the scales travel in the file
    mask = np.repeat(np.repeat(keep, 8, 0), 8, 1)
    err = lambda d: float(((d.astype(float) - scene.image) ** 2)[mask].mean())  # noqa: E731
    assert err(ds) == pytest.approx(err(du), rel=0.25)    # the important blocks keep their quality
    with pytest.raises(CodecError, match="64×64"):
        semantic.encode(np.zeros((32, 32, 3), np.uint8), 50)


def test_corrupt_files_are_refused(scene):
    codec = get_codec("blockdct")
    data = codec.encode(scene.image, 50)
    for bad in (data[:40], b"JUNK" + data[4:], data[:-4], data + b"\0\0\0\0"):
        with pytest.raises(CodecError):
            codec.decode(bad)
