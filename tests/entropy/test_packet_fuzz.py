"""Fuzzing the packet receiver: ≥ 10 000 mutated packet sets (packets dropped, reordered, duplicated, and
some mutated by bit flips, truncation, inserted bytes, shuffled words, header bytes at extremes, random
spans). Each set is refused with TokenBitstreamError (nothing valid) or decodes to **the correct subset**:
exactly the tokens of the intact packets it holds, never other tokens; never another exception, each
under a time bound. A second round sets header varints to extremes and recomputes the CRC, so the field
checks (not only the CRC) are exercised."""

import time
import zlib

import numpy as np
import pytest

pytest.importorskip("constriction")

from tokencodec.entropy import TokenBitstreamError, decode_tokens, encode_tokens  # noqa: E402
from tokencodec.entropy.packets import CRC, FIXED, packetize, receive_tokens  # noqa: E402

from .test_token_codec import scalar_profile, tokens, vector_profile  # noqa: E402

TIME_BOUND_S = 1.0


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(6)
    if kind == 0:
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(len(b))
            b[i] ^= 1 << rng.integers(8)
    elif kind == 1:
        b = b[:rng.integers(len(b))]
    elif kind == 2:
        i = rng.integers(len(b) + 1)
        b[i:i] = rng.integers(0, 256, rng.integers(1, 17)).astype(np.uint8).tobytes()
    elif kind == 3:
        body = b[FIXED:-CRC.size]
        words = [body[j:j + 4] for j in range(0, len(body), 4)]
        rng.shuffle(words)
        b[FIXED:-CRC.size] = b"".join(words)
    elif kind == 4:
        i = rng.integers(min(len(b), FIXED + 8))
        b[i] = [0, 255, 1, 127, 128][rng.integers(5)]
    else:
        i = rng.integers(len(b))
        j = min(len(b), i + rng.integers(1, 33))
        b[i:j] = rng.integers(0, 256, j - i).astype(np.uint8).tobytes()
    return bytes(b)


@pytest.fixture(scope="module", params=["scalar", "vector"])
def stream(request):
    profile = scalar_profile() if request.param == "scalar" else vector_profile()
    k = 40 if request.param == "scalar" else 160                  # at least 4 packets either way
    x, pos = tokens(k=k, n0=4 * 64)
    mtu = 120 if request.param == "scalar" else 48
    packets = packetize(x, pos, (8, 8), 4, profile, priority=np.random.default_rng(3).permutation(k), mtu=mtu)
    ref = decode_tokens(encode_tokens(x, pos, (8, 8), 4, profile).data, profile)
    assert len(packets.packets) >= 4
    return profile, packets, ref


def receive_or_refuse(sent, intact, profile, packets, ref):
    start = time.perf_counter()
    try:
        got = receive_tokens(sent, profile)
    except TokenBitstreamError:
        outcome = "refused"
    else:
        held = np.sort(np.concatenate([packets.positions[i] for i in got.arrived]))
        exact = (np.array_equal(got.positions, held) and set(got.arrived) <= intact
                 and np.array_equal(got.features, ref.features[np.searchsorted(ref.positions, held)]))
        outcome = "subset" if exact else "wrong"
    assert time.perf_counter() - start < TIME_BOUND_S
    return outcome


def test_ten_thousand_mutated_packet_sets_give_the_correct_subset_or_a_clean_error(stream):
    profile, packets, ref = stream
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "subset": 0, "wrong": 0}
    for _ in range(10_000):
        n = len(packets.packets)
        chosen = [int(i) for i in rng.permutation(n)[:rng.integers(1, n + 1)]]
        sent, intact = [], set()
        for i in chosen:
            data = packets.packets[i]
            if rng.random() < 0.5:
                m = mutate(data, rng)
                sent.append(m)
                if m == data:
                    intact.add(i)
            else:
                sent.append(data)
                intact.add(i)
        if rng.random() < 0.1:
            sent.append(sent[0])
        outcome = receive_or_refuse(sent, intact, profile, packets, ref)
        outcomes[outcome] += 1
    assert outcomes["wrong"] == 0, outcomes              # a mutated packet never adds or changes a token
    assert outcomes["subset"] > 5_000 and outcomes["refused"] > 500, outcomes


def test_header_extremes_with_a_valid_crc_are_refused_or_decode_to_the_declared_shape(stream):
    profile, packets, ref = stream
    rng = np.random.default_rng(1)
    seen = {"refused": 0, "decoded": 0}
    for _ in range(1_000):
        b = bytearray(packets.packets[rng.integers(len(packets.packets))])
        for _ in range(rng.integers(1, 3)):
            i = FIXED + rng.integers(8)                   # the varints: grid, frames, K, P, index, k
            b[i] = [0, 1, 2, 127, 128, 255, int(rng.integers(256))][rng.integers(7)]
        body = bytes(b[:-CRC.size])
        start = time.perf_counter()
        try:
            got = receive_tokens([body + CRC.pack(zlib.crc32(body))], profile)
        except TokenBitstreamError:
            seen["refused"] += 1
        else:
            seen["decoded"] += 1
            assert got.features.shape == (len(got.positions), profile.dim)
            assert got.positions.max(initial=-1) < got.grid[0] * got.grid[1] * got.frames
        assert time.perf_counter() - start < TIME_BOUND_S
    assert seen["refused"] > 0 and sum(seen.values()) == 1_000
