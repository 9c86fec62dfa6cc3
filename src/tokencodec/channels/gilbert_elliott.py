"""Bursty packet loss: the Gilbert–Elliott two-state Markov chain, set by its mean loss and mean burst length.

States Good and Bad; from Good the chain moves to Bad with probability p, from Bad back to Good with
probability r. A datagram sent in Good is lost with probability ``loss_good`` (default 0), in Bad with
``loss_bad`` (default 1: Gilbert's original model, where a burst is a stay in Bad). With those defaults
the stationary loss rate is π_B = p / (p + r) and a burst of consecutive losses lasts 1/r datagrams on
average, so ``(loss, burst)`` fix ``r = 1/burst`` and ``p = loss·r / (1 − loss)``; other per-state loss
rates are solved the same way for the mean loss (π_B·loss_bad + (1 − π_B)·loss_good = loss). The first
datagram's state is drawn from the stationary distribution, so every realisation is stationary.
"""

from __future__ import annotations

import numpy as np

from tokencodec.channels.base import ChannelError, PacketChannel, probability, register_channel


@register_channel("gilbert-elliott")
class GilbertElliott(PacketChannel):
    def __init__(self, loss: float, burst: float, loss_good: float = 0.0, loss_bad: float = 1.0):
        self.loss = probability(loss, "loss")
        if isinstance(burst, bool) or not isinstance(burst, int | float) or not burst >= 1:
            raise ChannelError(f"burst={burst!r}: the mean burst length in datagrams, a number ≥ 1")
        self.burst = float(burst)
        self.loss_good, self.loss_bad = probability(loss_good, "loss_good"), probability(loss_bad, "loss_bad")
        if not self.loss_good <= self.loss <= self.loss_bad or self.loss_good == self.loss_bad:
            raise ChannelError(f"loss={loss}: between loss_good={loss_good} and loss_bad={loss_bad} (and those differ)")
        self.r = 1.0 / self.burst
        bad = (self.loss - self.loss_good) / (self.loss_bad - self.loss_good)       # stationary P(Bad)
        self.p = bad * self.r / (1 - bad) if bad < 1 else 1.0
        if self.p > 1:
            raise ChannelError(f"loss={loss} with burst={burst}: too much loss for bursts that short "
                               f"(at most {self.burst / (1 + self.burst):.3f} of datagrams)")
        self.bad = bad

    def lost(self, n: int, rng: np.random.Generator) -> np.ndarray:
        u = rng.random((2, n))                      # [0]: state transitions, [1]: loss within the state
        state = np.empty(n, dtype=bool)             # True: Bad
        s = bool(u[0, 0] < self.bad)
        for i in range(n):
            if i:
                s = (u[0, i] >= self.r) if s else (u[0, i] < self.p)
            state[i] = s
        return u[1] < np.where(state, self.loss_bad, self.loss_good)

    def describe(self) -> dict:
        return {"name": self.name, "loss": self.loss, "burst": self.burst, "p_good_to_bad": self.p,
                "p_bad_to_good": self.r, "loss_good": self.loss_good, "loss_bad": self.loss_bad,
                "model": "Gilbert–Elliott two-state Markov chain, stationary start"}
