"""RaptorQ FEC: recovery from erasures, the systematic fallback, unequal protection at equal bits."""

import os

import numpy as np
import pytest

pytest.importorskip("raptorq")

from tokencodec.channels.fec import (  # noqa: E402
    OVERHEAD,
    datagram_bytes,
    protect,
    recover,
    repair_for_budget,
    symbol_size,
    uep_classes,
)


def packets(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return [os.urandom(int(s)) for s in rng.integers(40, 120, n)]


def test_any_k_plus_two_symbols_rebuild_every_packet():
    src = packets()
    wire = protect(src, [10], [6])
    assert len(wire) == 16
    rng = np.random.default_rng(0)
    for _ in range(100):
        keep = sorted(rng.permutation(16)[:12])                  # 4 of 16 lost: k + 2 symbols arrive
        got = recover([wire[i] for i in keep])
        assert sorted(got.packets) == sorted(src) and got.blocks[0]["decoded"]


def test_exactly_k_symbols_almost_always_suffice_and_too_few_keep_the_sources_that_arrived():
    src = packets()
    wire = protect(src, [10], [6])
    rng = np.random.default_rng(1)
    full = sum(sorted(recover([wire[i] for i in sorted(rng.permutation(16)[:10])]).packets) == sorted(src)
               for _ in range(200))
    assert full >= 190                                           # RaptorQ: ~1 % failures at exactly k
    few = recover(wire[:4] + wire[10:13])                        # 7 symbols for k = 10: no decode
    assert sorted(few.packets) == sorted(src[:4]) and not few.blocks[0]["decoded"]


def test_a_corrupted_datagram_is_dropped_not_decoded():
    src = packets(4)
    wire = protect(src, [4], [2])
    bad = bytearray(wire[0])
    bad[len(bad) // 2] ^= 0x10
    got = recover([bytes(bad), *wire[1:4]])
    assert got.rejected == 1 and src[0] not in got.packets[:0] and sorted(got.packets) == sorted(src[1:])


def test_unequal_protection_spends_the_same_bits_and_protects_the_first_packets_more():
    src = packets(12)
    repair = 6
    classes, per_class = uep_classes(12, repair, 0.25, 0.75)
    assert classes == [3, 9] and per_class == [4, 2] and sum(per_class) == repair
    eep, uep = protect(src, [12], [repair]), protect(src, classes, per_class)
    assert sum(map(len, eep)) == sum(map(len, uep)) == datagram_bytes(src, repair)   # equal bits exactly
    # at 40 % i.i.d. loss the first three packets arrive (or are rebuilt) more often under UEP
    rng = np.random.default_rng(3)
    hits = {"eep": 0, "uep": 0}
    for _ in range(300):
        lost = rng.random(len(eep)) < 0.4
        for name, wire in (("eep", eep), ("uep", uep)):
            got = set(recover([d for d, gone in zip(wire, lost, strict=True) if not gone]).packets)
            hits[name] += all(p in got for p in src[:3])
    assert hits["uep"] > hits["eep"] + 30, hits


def test_a_budget_is_never_exceeded():
    src = packets(8)
    for budget in (0, 500, datagram_bytes(src, 0), 2_000, 5_000):
        r = repair_for_budget(src, budget)
        assert r == 0 or datagram_bytes(src, r) <= budget < datagram_bytes(src, r + 1)
    assert symbol_size(src) % 8 == 0 and OVERHEAD == 11
