"""Packetised token streams: each packet decodes alone, any subset decodes to exactly the tokens it holds,
packets respect the MTU and follow the priority order, and every byte is counted."""

import numpy as np
import pytest

pytest.importorskip("constriction")

from tokencodec.entropy import TokenBitstreamError, TokenCodecProfile, decode_tokens, encode_tokens  # noqa: E402
from tokencodec.entropy.packets import (  # noqa: E402
    decode_packet,
    packetize,
    read_capture,
    read_packet_header,
    receive_tokens,
    write_capture,
)

from .test_token_codec import scalar_profile, tokens, vector_profile  # noqa: E402


def reference(profile, x, pos, grid=(16, 16), frames=1, prefix=None):
    return decode_tokens(encode_tokens(x, pos, grid, frames, profile, prefix).data, profile)


@pytest.mark.parametrize("kind", ["scalar", "vector"])
@pytest.mark.parametrize("mtu", [96, 200, 1200])
def test_every_subset_decodes_to_exactly_its_tokens(kind, mtu):
    profile = scalar_profile() if kind == "scalar" else vector_profile()
    x, pos = tokens(k=120)
    rng = np.random.default_rng(0)
    stream = packetize(x, pos, (16, 16), 1, profile, priority=rng.permutation(120), mtu=mtu)
    ref = reference(profile, x, pos)
    assert all(len(p) <= mtu for p in stream.packets)
    assert stream.total_bits == stream.header_bits + stream.coded_bits == 8 * sum(map(len, stream.packets))
    for _ in range(30):
        keep = [i for i in range(len(stream.packets)) if rng.random() < 0.6] or [0]
        sent = [stream.packets[i] for i in keep]
        sent = sent + sent[:2]                                   # duplicates are ignored
        got = receive_tokens([sent[j] for j in rng.permutation(len(sent))], profile)
        held = np.sort(np.concatenate([stream.positions[i] for i in keep]))
        assert np.array_equal(got.positions, held)
        at = np.searchsorted(ref.positions, held)
        assert np.array_equal(got.features, ref.features[at])    # bit-exact: same symbols as the container
        assert got.arrived == tuple(sorted(keep)) and got.tokens_sent == 120
        assert set(got.missing) == set(range(len(stream.packets))) - set(keep)


def test_packets_follow_the_priority_order():
    profile = scalar_profile()
    x, pos = tokens(k=60)
    priority = np.argsort(-np.linalg.norm(x, axis=1))
    stream = packetize(x, pos, (16, 16), 1, profile, priority=priority, mtu=150)
    assert len(stream.packets) > 3
    flat = np.concatenate([np.sort(pos[priority][:len(stream.positions[0])])])
    assert np.array_equal(stream.positions[0], flat)             # packet 0: the most important run
    ranks = {int(p): r for r, p in enumerate(pos[priority])}
    worst = [max(ranks[int(p)] for p in held) for held in stream.positions]
    assert worst == sorted(worst)


def test_prefix_tokens_ride_in_packet_zero():
    base = scalar_profile()
    profile = TokenCodecProfile("unit-test-cls", 1, base.quantizer, base.entropy, prefix=1)
    x, pos = tokens(k=40)
    cls = np.random.default_rng(5).laplace(0, 1, (1, x.shape[1])).astype(np.float32)
    stream = packetize(x, pos, (16, 16), 1, profile, prefix=cls, mtu=120)
    ref = reference(profile, x, pos, prefix=cls)
    assert read_packet_header(stream.packets[0])["prefix"] and not read_packet_header(stream.packets[1])["prefix"]
    assert np.array_equal(receive_tokens(list(stream.packets), profile).prefix, ref.prefix)
    assert receive_tokens(list(stream.packets[1:]), profile).prefix is None


def test_one_packet_at_a_large_mtu_costs_about_the_container():
    profile = vector_profile()
    x, pos = tokens(k=40)
    container = encode_tokens(x, pos, (16, 16), 1, profile)
    stream = packetize(x, pos, (16, 16), 1, profile, mtu=1200)
    assert len(stream.packets) == 1
    # the container's 36-byte header against a packet's ≈ 18 bytes of header and CRC
    assert abs(len(stream.packets[0]) - len(container.data)) <= 24


def test_bad_input_and_foreign_packets_are_refused():
    profile, other = scalar_profile(), scalar_profile(step=1.0)
    x, pos = tokens(k=30)
    with pytest.raises(ValueError, match="mtu"):
        packetize(x, pos, (16, 16), 1, profile, mtu=10)
    with pytest.raises(ValueError, match="one token"):
        packetize(x * 50, pos, (16, 16), 1, profile, mtu=48)
    with pytest.raises(ValueError, match="permutation"):
        packetize(x, pos, (16, 16), 1, profile, priority=np.zeros(30, dtype=int))
    stream = packetize(x, pos, (16, 16), 1, profile, mtu=200)
    with pytest.raises(TokenBitstreamError, match="profile"):
        decode_packet(stream.packets[0], other)
    with pytest.raises(TokenBitstreamError, match="no valid token packet"):
        receive_tokens([b"", b"TP\x01" + bytes(30)], profile)
    foreign = packetize(x[:10], pos[:10], (16, 16), 1, profile, mtu=200).packets[0]
    got = receive_tokens([stream.packets[0], foreign], profile)     # another stream: left out, reported
    assert len(got.rejected) == 1 and "another stream" in got.rejected[0][1]


def test_capture_round_trip_and_errors():
    data = write_capture([b"abc", b"", b"x" * 1000], {"loss": 0.1})
    cap = read_capture(data)
    assert cap.datagrams == (b"abc", b"", b"x" * 1000) and cap.meta == {"loss": 0.1}
    for bad in (b"", b"TKPC", data[:10], b"XXXX" + data[4:], data + b"x", data[:-1]):
        with pytest.raises(TokenBitstreamError):
            read_capture(bad)
