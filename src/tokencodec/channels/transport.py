"""The ``channel`` pipeline module: a token stream or a pixel file sent as packets over a lossy channel.

Sender: packets of at most ``mtu`` bytes (token packets in priority order,
:mod:`tokencodec.entropy.packets`; pixel packets as the format allows, :mod:`.pixels`), then optional
RaptorQ FEC (:mod:`.fec`: ``fec`` repair symbols per source packet, or as many as fit a ``budget`` of
bytes per image; ``uep`` for unequal protection). Channel: i.i.d. erasure at ``loss`` (``burst`` = 1),
or Gilbert–Elliott bursts with mean length ``burst``; then bit errors at ``ber`` (a datagram with a bad
CRC is dropped). Receiver: FEC recovery, then the tokens of the packets that arrived (a lost packet is a
pruned set of tokens) or the pixel file rebuilt and decoded; when nothing decodes, the observer is shown
:func:`~.pixels.no_image` (uniform grey).

Every realisation is seeded by (``seed``, the sample's digest, the loss, the channel's parameters), so
every scheme sent for one sample at one loss meets the same loss pattern on its first datagrams, and
a rerun gives the same numbers.

Rates (on top of the observer's): ``bits``/``bytes``/``bpp`` are what went on the wire (packet headers
and FEC included: the equal-bits axis); ``file_bytes`` the container or pixel file; ``packet_bytes``
the packets before FEC; ``fec_bytes`` the FEC datagrams' extra bytes; ``datagrams``, ``repair`` (repair
symbols among them), ``datagrams_lost``;
``delivered`` the fraction of tokens (or pixel units) that reached the receiver; ``decoded`` 1 when the
receiver had something to show, 0 for "no image".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from tokencodec.channels.base import ChannelError, probability
from tokencodec.entropy.packets import DEFAULT_MTU, MIN_MTU

PRIORITIES = ("attention", "scalable", "raster")
CHANNEL_RATES = ("file_bytes", "packet_bytes", "fec_bytes", "datagrams", "repair", "datagrams_lost", "delivered",
                 "decoded")
FEC_ROOM = 20           # bytes a packet leaves for the FEC header, length and symbol rounding when FEC is on


class NothingReceived(Exception):
    """No token of the stream arrived (or not the prefix a receiver needs): the receiver has no image."""


@dataclass(frozen=True)
class ChannelSpec:
    """The options of a ``channel`` in a study file (``losses`` is the knob swept)."""

    losses: tuple[float, ...] = (0.0,)
    burst: float = 1.0                  # mean burst length in datagrams; 1: i.i.d. losses
    ber: float = 0.0                    # bit error rate on the datagrams that arrive
    mtu: int = DEFAULT_MTU
    fec: float = 0.0                    # RaptorQ repair symbols per source packet (rounded up)
    budget: int = 0                     # bytes per image on the wire: repair symbols fill it (instead of fec)
    uep: bool = False                   # unequal protection: the first uep_share of packets get uep_weight
    uep_share: float = 0.25             # of the repair symbols
    uep_weight: float = 0.75
    priority: str = "attention"         # token packets' order: attention | scalable | raster
    seed: int = 0

    @classmethod
    def parse(cls, raw: Any, where: str = "channel") -> ChannelSpec:
        """A checked spec from a mapping (a study file's ``channel``); ChannelError names the key."""
        if not isinstance(raw, dict):
            raise ChannelError(f"{where}: a mapping with keys {cls.keys()}, got {raw!r}")
        unknown = set(raw) - set(cls.keys())
        if unknown:
            raise ChannelError(f"{where}: unknown keys {sorted(unknown)}; allowed: {cls.keys()}")
        values = dict(raw)
        if "losses" in values:
            losses = values["losses"]
            if not isinstance(losses, list | tuple) or not losses:
                raise ChannelError(f"{where}: losses must be a non-empty list of loss rates in [0, 1], got {losses!r}")
            values["losses"] = tuple(probability(v, f"{where}: losses[{i}]") for i, v in enumerate(losses))
            if max(values["losses"]) >= 1:
                raise ChannelError(f"{where}: a loss rate of 1 delivers nothing; use rates in [0, 1)")
        spec = cls(**{k: v for k, v in values.items()})
        spec.check(where)
        return spec

    @classmethod
    def keys(cls) -> list[str]:
        return sorted(f.name for f in fields(cls))

    def check(self, where: str = "channel") -> None:
        def number(name: str, low: float, integer: bool = False, high: float = math.inf) -> None:
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high
            if not ok or (integer and not float(v).is_integer()):
                kind = "an integer" if integer else "a number"
                raise ChannelError(f"{where}: {name}={v!r}: {kind} in [{low:g}, {high:g}]")

        number("burst", 1.0)
        probability(self.ber, f"{where}: ber", 0.5)
        number("mtu", MIN_MTU + (FEC_ROOM if self.protected else 0), integer=True, high=65_000)
        number("fec", 0.0, high=16.0)
        number("budget", 0, integer=True)
        number("uep_share", 0.0, high=1.0)
        number("uep_weight", 0.0, high=1.0)
        number("seed", 0, integer=True)
        if not isinstance(self.uep, bool):
            raise ChannelError(f"{where}: uep={self.uep!r}: true or false")
        if self.uep and not self.protected:
            raise ChannelError(f"{where}: uep needs FEC (give fec > 0 or a budget)")
        if self.fec and self.budget:
            raise ChannelError(f"{where}: give fec (repair per packet) or budget (bytes per image), not both")
        if self.priority not in PRIORITIES:
            raise ChannelError(f"{where}: priority={self.priority!r}; allowed: {', '.join(PRIORITIES)}")
        for loss in self.losses:
            self.packet_channel(loss)               # Gilbert–Elliott refuses too much loss for short bursts

    @property
    def protected(self) -> bool:
        return bool(self.fec or self.budget)

    def packet_channel(self, loss: float):
        from tokencodec.channels.erasure import Erasure
        from tokencodec.channels.gilbert_elliott import GilbertElliott

        return Erasure(loss) if self.burst == 1 else GilbertElliott(loss, self.burst)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["losses"] = list(self.losses)
        return out

    def describe(self, loss: float) -> dict[str, Any]:
        """What one point's channel was (for provenance)."""
        from tokencodec.channels.bit_errors import BitErrors

        out = {"packets": self.packet_channel(loss).describe(), "mtu": self.mtu, "seed": self.seed,
               "fec": "raptorq" if self.protected else None}
        if self.ber:
            out["bits"] = BitErrors(self.ber).describe()
        return out


def realisation(spec: ChannelSpec, key: str, loss: float) -> tuple[np.random.Generator, np.random.Generator]:
    """(generator for packet losses, generator for bit errors) of one sample at one loss rate."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    seq = np.random.SeedSequence([spec.seed, digest, round(loss * 1e9), round(spec.burst * 1e6),
                                  round(spec.ber * 1e15)])
    a, b = seq.spawn(2)
    return np.random.default_rng(a), np.random.default_rng(b)


def source_mtu(spec: ChannelSpec) -> int:
    """The largest packet the sender makes: the MTU, less room for the FEC header when FEC is on."""
    return spec.mtu - (FEC_ROOM if spec.protected else 0)


def protect_packets(packets: list[bytes], spec: ChannelSpec) -> tuple[list[bytes], int]:
    """Sender: the datagrams for ``packets`` (priority order) with the spec's FEC, and the repair count."""
    from tokencodec.channels.fec import protect, repair_for_budget, uep_classes

    k = len(packets)
    repair = repair_for_budget(packets, spec.budget) if spec.budget else math.ceil(spec.fec * k)
    if not repair:
        return list(packets), 0
    classes, per_class = uep_classes(k, repair, spec.uep_share, spec.uep_weight) if spec.uep else ([k], [repair])
    return protect(packets, classes, per_class), repair


def through_channel(wire: list[bytes], spec: ChannelSpec, loss: float, key: str) -> tuple[list[bytes], np.ndarray]:
    """Channel: (the datagrams that arrive, possibly with bit errors; the lost mask)."""
    from tokencodec.channels.bit_errors import BitErrors

    packet_rng, bit_rng = realisation(spec, key, loss)
    lost = spec.packet_channel(loss).lost(len(wire), packet_rng)
    bits = BitErrors(spec.ber) if spec.ber else None
    return [bits.corrupt(d, bit_rng) if bits else d for d, gone in zip(wire, lost, strict=True) if not gone], lost


def send(packets: list[bytes], spec: ChannelSpec, loss: float, key: str) -> tuple[list[bytes], dict[str, float]]:
    """Packets (priority order) → FEC → channel → the source packets the receiver gets back, and rates."""
    from tokencodec.channels.fec import recover

    wire, repair = protect_packets(packets, spec)
    arrived, lost = through_channel(wire, spec, loss, key)
    received = recover(arrived).packets if repair else arrived
    wire_bytes, packet_bytes = sum(len(d) for d in wire), sum(len(p) for p in packets)
    return received, {"bytes": float(wire_bytes), "bits": 8.0 * wire_bytes, "packet_bytes": float(packet_bytes),
                      "fec_bytes": float(wire_bytes - packet_bytes) if repair else 0.0,
                      "datagrams": float(len(wire)), "datagrams_lost": float(lost.sum()), "repair": float(repair)}


def token_priority(batch, kept, how: str) -> np.ndarray:
    """The kept tokens' indices (into ``kept``) from most to least important.

    ``attention``: the encoder's CLS attention (mean attention received without a CLS) to each token,
    from the batch the selection ran on; where the batch has no attention (EfficientNet-Lite0's feature
    map), the token's feature norm (the token-norm proxy). ``scalable``: the scalable method's embedded
    order (coarse lattice first, attention within a level). ``raster``: raster order.
    """
    positions = kept.positions[0].cpu().numpy()
    if how == "raster":
        return np.arange(len(positions))
    n0 = batch.num_original
    cells = batch.positions[0].cpu().numpy()
    has_attention = any(s in batch.signals for s in ("cls_attention", "mean_attention"))
    if how == "scalable" and has_attention:
        from tokencodec.tokens.compress.scalable import embedded_order

        order = embedded_order(batch)[0].cpu().numpy()
        rank = np.full(n0, n0, dtype=np.int64)
        rank[cells[order]] = np.arange(len(order))
        return np.argsort(rank[positions], kind="stable")
    if has_attention:
        from tokencodec.tokens.compress.visionzip import guiding_attention

        score = guiding_attention(batch, "channel")[0].float().cpu().numpy()
    else:
        score = batch.features[0].float().norm(dim=-1).cpu().numpy()
    by_cell = np.full(n0, -np.inf)
    by_cell[cells] = score
    return np.argsort(-by_cell[positions], kind="stable")


class TokenTransport:
    """Set on a ``coded`` method by the pipeline: the coded tokens travel as packets over the channel.

    Called with (the batch the selection ran on, the kept tokens, the container, the profile); returns
    the decoded tokens that arrived (a :class:`~tokencodec.entropy.bitstream.DecodedTokens`) and sets
    ``rates``; raises :class:`NothingReceived` when no packet (or not the prefix a receiver needs) arrived.
    """

    def __init__(self, spec: ChannelSpec, loss: float, key: str):
        self.spec, self.loss, self.key = spec, loss, key
        self.rates: dict[str, float] = {}

    def __call__(self, batch, kept, encoded, profile):
        from tokencodec.entropy import DecodedTokens, TokenBitstreamError
        from tokencodec.entropy.packets import packetize, receive_tokens

        prefix = kept.cls.float().cpu().numpy().reshape(profile.prefix, -1) if profile.prefix else None
        args = (kept.features[0].float().cpu().numpy(), kept.positions[0].cpu().numpy(), batch.grid, batch.frames,
                profile, prefix, token_priority(batch, kept, self.spec.priority), source_mtu(self.spec))
        stream = _packetized(args, packetize)
        received, rates = send(list(stream.packets), self.spec, self.loss, self.key)
        k = sum(len(p) for p in stream.positions)
        self.rates = {**rates, "file_bytes": float(len(encoded.data)), "delivered": 0.0, "decoded": 0.0,
                      "payload_bytes": (encoded.position_bits + encoded.payload_bits) / 8}
        try:
            got = receive_tokens(received, profile)
        except TokenBitstreamError:
            raise NothingReceived("no token packet arrived") from None
        if profile.prefix and got.prefix is None:
            raise NothingReceived("the packet with the prefix tokens (the CLS) was lost")
        if not len(got.positions):
            raise NothingReceived("no token arrived")
        self.rates.update(delivered=len(got.positions) / max(k, 1), decoded=1.0)
        return DecodedTokens(got.features, got.positions, got.grid, got.frames, profile.id, got.prefix)


_PACKETS: dict[str, Any] = {}           # the same tokens at every loss rate of a sample: packetised once


def _packetized(args: tuple, packetize):
    """``packetize(*args)``, remembered for the last few token sets (the sweep sends one set at every loss)."""
    x, pos, grid, frames, profile, prefix, priority, mtu = args
    h = hashlib.sha256(repr((x.shape, grid, frames, mtu)).encode() + profile.id)
    for a in (x, pos, priority, prefix):
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    key = h.hexdigest()
    if key not in _PACKETS:
        if len(_PACKETS) >= 32:
            _PACKETS.pop(next(iter(_PACKETS)))
        _PACKETS[key] = packetize(*args)
    return _PACKETS[key]


def transmit_image(codec: str, data: bytes, shape: tuple[int, ...], quality: int, spec: ChannelSpec, loss: float,
                   key: str) -> tuple[np.ndarray | None, dict[str, float]]:
    """A pixel file over the channel: (the decoded image, or None for no image; rates)."""
    from tokencodec.channels.pixels import decode_received, packetize

    height, width = shape[:2]
    packets = packetize(codec, data, width, height, quality, source_mtu(spec))
    received, rates = send(packets, spec, loss, key)
    image, got = decode_received(codec, received, shape)
    rates.update(file_bytes=float(len(data)), delivered=got.units_received / max(got.units, 1),
                 decoded=float(image is not None))
    return image, rates


__all__ = ["CHANNEL_RATES", "PRIORITIES", "ChannelSpec", "NothingReceived", "TokenTransport", "protect_packets",
           "realisation", "send", "source_mtu", "through_channel", "token_priority", "transmit_image"]
