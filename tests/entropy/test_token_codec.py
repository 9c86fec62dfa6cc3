"""The token codec: quantisers, integer-table entropy models, the container; rate = every byte."""

import numpy as np
import pytest

pytest.importorskip("constriction")

from tokencodec.entropy import (  # noqa: E402
    AdaptiveCategorical,
    FactorizedTables,
    QuantizerError,
    ScalarQuantizer,
    TokenBitstreamError,
    TokenCodecProfile,
    VectorQuantizer,
    decode_tokens,
    encode_tokens,
    read_header,
)

D = 32


def scalar_profile(step=0.5, dist="laplace", seed=0):
    cal = np.random.default_rng(seed).laplace(0, 1, (4000, D)).astype(np.float32)
    q = ScalarQuantizer.fit(cal, step)
    return TokenCodecProfile("unit-test", -2, q, FactorizedTables.fit(q.quantize(cal), dist))


def vector_profile(k=32):
    cal = np.random.default_rng(1).laplace(0, 1, (1500, D)).astype(np.float32)
    vq = VectorQuantizer.fit(cal, k, iterations=5)
    return TokenCodecProfile("unit-test", -2, vq, AdaptiveCategorical.fit(vq.quantize(cal), k))


def tokens(k=48, n0=256, seed=2):
    rng = np.random.default_rng(seed)
    return rng.laplace(0, 1, (k, D)).astype(np.float32), np.sort(rng.choice(n0, k, replace=False))


@pytest.mark.parametrize("dist", ["laplace", "gaussian"])
def test_scalar_round_trip_is_exact_and_near_the_ideal_code_length(dist):
    profile = scalar_profile(dist=dist)
    x, pos = tokens(k=200)
    enc = encode_tokens(x, pos, (16, 16), 1, profile)
    dec = decode_tokens(enc.data, profile)
    q = profile.quantizer
    assert np.array_equal(dec.positions, pos) and dec.grid == (16, 16) and dec.frames == 1
    assert np.array_equal(dec.features, q.dequantize(profile.entropy.clip(q.quantize(x))[0]))
    assert np.abs(dec.features - x).max() <= q.step / 2 + 1e-6 or enc.clipped > 0
    assert enc.total_bits == enc.header_bits + enc.position_bits + enc.payload_bits   # every byte counted
    assert enc.payload_bits <= 1.005 * enc.ideal_payload_bits + 64                     # ≤ 0.5 % + a final word pair
    assert enc.header_bits == 288
    head = read_header(enc.data)
    assert head["tokens"] == 200 and head["profile"] == profile.id.hex() and head["total_bits"] == enc.total_bits


def test_a_larger_step_costs_fewer_bits():
    x, pos = tokens()
    fine = encode_tokens(x, pos, (16, 16), 1, scalar_profile(0.25))
    coarse = encode_tokens(x, pos, (16, 16), 1, scalar_profile(1.0))
    assert coarse.payload_bits < fine.payload_bits


def test_vector_quantiser_with_adaptive_indices_round_trips():
    profile = vector_profile()
    x, pos = tokens(k=40, n0=4 * 64)
    enc = encode_tokens(x, pos, (8, 8), 4, profile)
    dec = decode_tokens(enc.data, profile)
    assert np.array_equal(dec.features, profile.quantizer.dequantize(profile.quantizer.quantize(x)))
    assert dec.frames == 4 and np.array_equal(dec.positions, pos)
    assert enc.payload_bits <= 1.005 * enc.ideal_payload_bits + 64


def test_profiles_save_load_and_name_what_made_a_file(tmp_path):
    profile = scalar_profile()
    profile.save(tmp_path / "p.safetensors")
    loaded = TokenCodecProfile.load(tmp_path / "p.safetensors")
    assert loaded.id == profile.id
    x, pos = tokens()
    data = encode_tokens(x, pos, (16, 16), 1, profile).data
    assert np.array_equal(decode_tokens(data, loaded).features, decode_tokens(data, profile).features)
    with pytest.raises(TokenBitstreamError, match=r"f\.tcb: made with profile [0-9a-f]{16}, this decoder has"):
        decode_tokens(data, scalar_profile(step=0.4), "f.tcb")
    with pytest.raises(FileNotFoundError, match="profile not found"):
        TokenCodecProfile.load(tmp_path / "missing.safetensors")


def test_all_or_no_positions_cost_nothing_and_empty_selections_work():
    profile = scalar_profile()
    x, _ = tokens(k=64, n0=64)
    full = encode_tokens(x, np.arange(64), (8, 8), 1, profile)
    assert full.position_bits == 0
    empty = encode_tokens(np.zeros((0, D), np.float32), np.zeros(0, int), (8, 8), 1, profile)
    dec = decode_tokens(empty.data, profile)
    assert dec.features.shape == (0, D) and len(dec.positions) == 0


def test_bad_inputs_are_refused_with_what_is_allowed():
    profile = scalar_profile()
    x, pos = tokens()
    with pytest.raises(ValueError, match="distinct raster indices"):
        encode_tokens(x, np.zeros(len(x), int), (16, 16), 1, profile)
    with pytest.raises(ValueError, match=r"expected \[K, 32\]"):
        encode_tokens(x[:, :5], pos, (16, 16), 1, profile)
    with pytest.raises(QuantizerError, match="step"):
        ScalarQuantizer.fit(x, 0)
    with pytest.raises(QuantizerError, match="NaN"):
        profile.quantizer.quantize(np.full((2, D), np.nan, np.float32))
    data = encode_tokens(x, pos, (16, 16), 1, profile).data
    for bad, why in [(data[:10], "truncated: 10 bytes"), (data[:-3], "truncated: the header announces"),
                     (b"JUNK" + data[4:], "not a token bitstream"), (data + b"\0", "unexpected bytes"),
                     (data[:4] + b"\x07" + data[5:], "format version 7"),
                     (data[:40] + bytes([data[40] ^ 1]) + data[41:], "checksum mismatch")]:
        with pytest.raises(TokenBitstreamError, match=why):
            decode_tokens(bad, profile, "x.tcb")


def test_prefix_tokens_travel_first_and_the_profile_fixes_their_count(tmp_path):
    base = scalar_profile()
    profile = TokenCodecProfile("unit-test", 1, base.quantizer, base.entropy, prefix=1)
    assert profile.id != base.id                            # a file names whether it carries a CLS
    profile.save(tmp_path / "p.safetensors")
    assert TokenCodecProfile.load(tmp_path / "p.safetensors").prefix == 1
    x, pos = tokens(k=20)
    cls = np.random.default_rng(5).laplace(0, 1, (1, D)).astype(np.float32)
    enc = encode_tokens(x, pos, (16, 16), 1, profile, cls)
    dec = decode_tokens(enc.data, profile)
    q = profile.quantizer
    assert read_header(enc.data)["tokens"] == 20 and dec.features.shape == (20, D)
    assert np.array_equal(dec.prefix, q.dequantize(profile.entropy.clip(q.quantize(cls))[0]))
    assert np.array_equal(dec.features, decode_tokens(encode_tokens(x, pos, (16, 16), 1, base).data, base).features)
    assert enc.payload_bits > encode_tokens(x, pos, (16, 16), 1, base).payload_bits      # the CLS costs bits
    with pytest.raises(ValueError, match=r"prefix tokens \(0,\): the profile sends \[1, 32\]"):
        encode_tokens(x, pos, (16, 16), 1, profile)
    with pytest.raises(ValueError, match="prefix tokens"):
        encode_tokens(x, pos, (16, 16), 1, base, cls)
