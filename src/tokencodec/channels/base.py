"""Channels: what a network does to a sequence of datagrams. One file per model, registered in ``CHANNELS``.

A channel is a pure function of its parameters and a seeded ``numpy.random.Generator``: the same seed
gives the same losses, so two schemes sent over "the same channel" see the same loss pattern on their
first packets (common random numbers), and every realisation can be replayed from provenance.

Why not scikit-commpy (the communications library on PyPI): its ``bec``/``bsc`` draw from numpy's
global random state (no per-call generator, so no replayable realisation per sample and process), act
on single bits, and it has no bursty (Gilbert–Elliott) packet model; these models are a few lines each,
written against ``numpy.random.Generator`` and tested for their statistics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from tokencodec.registry import Registry


class ChannelError(ValueError):
    """A channel parameter out of range; the message names it and what is allowed."""


class PacketChannel(ABC):
    """Loses whole datagrams: ``lost(n, rng)`` → [n] bool, True where datagram i does not arrive."""

    name: ClassVar[str] = ""

    @abstractmethod
    def lost(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...


class BitChannel(ABC):
    """Corrupts the bits of datagrams that arrive (a CRC at the receiver then drops them)."""

    name: ClassVar[str] = ""

    @abstractmethod
    def corrupt(self, datagram: bytes, rng: np.random.Generator) -> bytes: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...


CHANNELS: Registry[type] = Registry("channel")


def register_channel(name: str):
    return CHANNELS.register_named(name)


def probability(value: Any, name: str, high: float = 1.0) -> float:
    """A float in [0, high], or ChannelError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise ChannelError(f"{name}={value!r}: a number in [0, {high:g}]")
    return float(value)


__all__ = ["CHANNELS", "BitChannel", "ChannelError", "PacketChannel", "probability", "register_channel"]
