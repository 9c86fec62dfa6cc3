"""i.i.d. packet erasure: each datagram is lost with probability ``loss``, independently of the others."""

from __future__ import annotations

import numpy as np

from tokencodec.channels.base import PacketChannel, probability, register_channel


@register_channel("erasure")
class Erasure(PacketChannel):
    def __init__(self, loss: float):
        self.loss = probability(loss, "loss")

    def lost(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.random(n) < self.loss

    def describe(self) -> dict:
        return {"name": self.name, "loss": self.loss, "model": "i.i.d. Bernoulli per datagram"}
