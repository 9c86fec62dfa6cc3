"""Bit errors: every bit of a datagram flips independently with probability ``ber`` (a binary symmetric channel).

The number of flipped bits in an L-byte datagram is drawn as Binomial(8L, ber) and their places
uniformly without repetition: the same law as one draw per bit, at a cost that does not grow with L
when ber is small. The receiver's per-datagram CRC-32 then drops a corrupted datagram, so at BER b an
L-byte datagram arrives with probability (1 − b)^(8L): long packets suffer more.
"""

from __future__ import annotations

import numpy as np

from tokencodec.channels.base import BitChannel, probability, register_channel


@register_channel("bit-errors")
class BitErrors(BitChannel):
    def __init__(self, ber: float):
        self.ber = probability(ber, "ber", 0.5)

    def corrupt(self, datagram: bytes, rng: np.random.Generator) -> bytes:
        bits = 8 * len(datagram)
        flips = int(rng.binomial(bits, self.ber)) if bits else 0
        if not flips:
            return datagram
        where = rng.choice(bits, flips, replace=False)
        out = np.frombuffer(datagram, dtype=np.uint8).copy()
        np.bitwise_xor.at(out, where // 8, (1 << (where % 8)).astype(np.uint8))
        return out.tobytes()

    def describe(self) -> dict:
        return {"name": self.name, "ber": self.ber, "model": "binary symmetric, i.i.d. bits"}
