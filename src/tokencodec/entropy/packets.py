"""Packetised token bitstreams: tokens split into packets of at most an MTU, each decodable on its own.

The container (:mod:`~tokencodec.entropy.bitstream`) is one file: lose any byte and nothing decodes.
Over a network that drops packets, the tokens travel instead as **packets**, each carrying a small
header, its tokens' positions and payload, and its own CRC, so that **any subset of packets decodes to
exactly the tokens it holds**: a lost packet is a pruned set of tokens, which the receivers of the token
methods already handle. Packets are filled in **priority order** (the caller's ranking of the tokens:
attention, a scalable order), so packet 0 holds the most important tokens and the importance of every
packet is known (what unequal error protection needs, :mod:`tokencodec.channels.fec`).

**Packet, format version 1**::

    magic "TP" | flags u8 (version in bits 0–3, quantiser bit 4: 0 scalar / 1 vector, bit 5: carries the
    profile's prefix tokens) | profile tag 4 B (the first 4 bytes of the profile id)
    | varints (LEB128): grid h, grid w, frames, tokens K of the whole stream, packets P, this packet's
    index i, its tokens k
    | range-coder words (u32 LE): the positions bitmap over the T·h·w grid (k ones, under the (N0 − k, k)
    table), then the prefix tokens (packet 0 only) and the k tokens in raster order
    | CRC-32 of everything before, u32

The stream header (grid, K, P, the profile) is **repeated in every packet** (≈ 13 bytes at these sizes),
so no packet depends on another. The profile is named by 4 bytes of its id (the container carries 8):
one chance in 2³² that a packet made with another profile is taken for this one, against 16 bytes
saved per packet. Each packet is one range-coder stream (positions, then payload), so it pays one
final flush (up to 64 bits), not two. A vector-quantised packet restarts the adaptive index model from
its prior (packets are independent).

**Decoding** checks each packet alone — length, magic, version, CRC, the varints' lengths and ranges,
the profile tag, the payload's minimum length, the decoded positions' count — before it allocates;
:func:`receive_tokens` keeps the packets that pass and agree on the stream (same grid, K, P; no index or
position twice) and reports the others with the reason. A packet that fails its CRC is what a lossy link
delivers after bit errors: it is rejected like a lost one, not an error of the whole stream.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from tokencodec.entropy.bitstream import MAX_DIM, MAX_GRID_TOKENS, TokenBitstreamError, TokenCodecProfile
from tokencodec.entropy.models import FactorizedTables, decode_mask, encode_mask
from tokencodec.entropy.quantizers import ScalarQuantizer

MAGIC = b"TP"
VERSION = 1
CRC = struct.Struct("<I")
PROFILE_TAG = 4                     # bytes of the profile id in every packet
DEFAULT_MTU = 1200                  # bytes: a UDP payload that fits an IPv6 minimum-MTU path with room to spare
MIN_MTU = 48
MAX_PACKETS = 1 << 16
FIXED = len(MAGIC) + 1 + PROFILE_TAG
MAX_VARINT = 3                      # bytes: every field is < 2^21


def varint(n: int) -> bytes:
    """LEB128: 7 bits per byte, the high bit set on every byte but the last."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes, pos: int, name: str) -> tuple[int, int]:
    """(value, next position); raises TokenBitstreamError on a varint longer than MAX_VARINT or cut short."""
    value = 0
    for j in range(MAX_VARINT):
        if pos + j >= len(data):
            raise TokenBitstreamError(f"{name}: truncated header")
        byte = data[pos + j]
        value |= (byte & 0x7F) << (7 * j)
        if not byte & 0x80:
            return value, pos + j + 1
    raise TokenBitstreamError(f"{name}: a header field longer than {MAX_VARINT} bytes")


@dataclass(frozen=True)
class TokenPackets:
    """A packetised token stream: packets in priority order and what each holds."""

    packets: tuple[bytes, ...]          # packet i holds the i-th run of tokens in priority order
    positions: tuple[np.ndarray, ...]   # the raster positions each packet holds
    header_bits: int                    # magic, flags, tag, varints and CRC of every packet
    position_bits: float                # ideal bits of the positions bitmaps (inside the coded words)
    ideal_bits: float                   # ideal bits of the payload
    mtu: int

    @property
    def total_bits(self) -> int:
        return 8 * sum(len(p) for p in self.packets)

    @property
    def coded_bits(self) -> int:
        """Bits of the range-coder words (positions, payload and each packet's final flush)."""
        return self.total_bits - self.header_bits

    def report(self) -> dict:
        return {"packets": len(self.packets), "bytes": sum(len(p) for p in self.packets),
                "total_bits": self.total_bits, "header_bits": self.header_bits, "coded_bits": self.coded_bits,
                "ideal_position_bits": self.position_bits, "ideal_bits": self.ideal_bits, "mtu": self.mtu,
                "largest_packet": max(len(p) for p in self.packets)}


@dataclass(frozen=True)
class PacketContent:
    """One decoded packet."""

    index: int
    packets: int
    grid: tuple[int, int]
    frames: int
    tokens: int                         # K of the whole stream
    positions: np.ndarray               # [k] raster
    features: np.ndarray                # [k, D] float32
    prefix: np.ndarray | None           # [P, D] when this packet carries the profile's prefix tokens

    def stream(self) -> tuple:
        return self.grid, self.frames, self.tokens, self.packets


@dataclass(frozen=True)
class ReceivedTokens:
    """The tokens of the packets that arrived, in raster order, and what did not arrive."""

    features: np.ndarray                # [k, D] float32
    positions: np.ndarray               # [k] int64 raster
    grid: tuple[int, int]
    frames: int
    profile: bytes                      # the 4-byte tag the packets carry
    tokens_sent: int                    # K of the whole stream
    packets_sent: int
    arrived: tuple[int, ...]            # packet indices accepted (priority ranks)
    rejected: tuple[tuple[int, str], ...] = ()   # (position in the input list, why) of packets not used
    prefix: np.ndarray | None = None

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(sorted(set(range(self.packets_sent)) - set(self.arrived)))

    def report(self) -> dict:
        return {"tokens_sent": self.tokens_sent, "tokens_received": int(len(self.positions)),
                "packets_sent": self.packets_sent, "packets_received": len(self.arrived),
                "missing_packets": list(self.missing), "positions": self.positions.tolist(),
                "prefix_received": self.prefix is not None,
                "rejected": [{"datagram": i, "why": why} for i, why in self.rejected]}


def _kind(profile: TokenCodecProfile) -> int:
    return 0 if isinstance(profile.quantizer, ScalarQuantizer) else 1


def _symbols(profile: TokenCodecProfile, x: np.ndarray) -> np.ndarray:
    if not len(x):
        return np.zeros((0, profile.dim), dtype=np.int32)
    symbols = profile.quantizer.quantize(x)
    if isinstance(profile.entropy, FactorizedTables):
        symbols = profile.entropy.clip(symbols)[0]
    return symbols


def _packet(profile: TokenCodecProfile, stream: tuple[int, ...], index: int, n0: int, cells: np.ndarray,
            symbols: np.ndarray, prefix_symbols: np.ndarray | None) -> tuple[bytes, float, float]:
    """(packet bytes, ideal position bits, ideal payload bits) for tokens at raster ``cells`` (sorted)."""
    import constriction

    h, w, t, k_total, count = stream
    mask = np.zeros(n0, dtype=bool)
    mask[cells] = True
    enc = constriction.stream.queue.RangeEncoder()
    pos_bits = encode_mask(enc, mask)
    body = symbols if prefix_symbols is None else np.concatenate([prefix_symbols, symbols])
    pay_bits = profile.entropy.encode(enc, body) if len(body) else 0.0
    flags = VERSION | (_kind(profile) << 4) | ((prefix_symbols is not None) << 5)
    head = MAGIC + bytes([flags]) + profile.id[:PROFILE_TAG] + b"".join(
        varint(v) for v in (h, w, t, k_total, count, index, len(cells)))
    data = head + np.asarray(enc.get_compressed(), dtype="<u4").tobytes()
    return data + CRC.pack(zlib.crc32(data)), pos_bits, pay_bits


def packetize(features: np.ndarray, positions: np.ndarray, grid: tuple[int, int], frames: int,
              profile: TokenCodecProfile, prefix: np.ndarray | None = None, priority: np.ndarray | None = None,
              mtu: int = DEFAULT_MTU) -> TokenPackets:
    """K tokens [K, D] at raster ``positions`` → packets of at most ``mtu`` bytes.

    ``priority``: the token indices (into ``features``) from most to least important (default: raster
    order); packet 0 takes the longest run from the front that fits, and so on. The profile's prefix
    tokens (e.g. a ViT's CLS) ride in packet 0. Raises ValueError when one token (with the header) does
    not fit in the MTU.
    """
    x = np.asarray(features, dtype=np.float32)
    pos = np.asarray(positions, dtype=np.int64)
    h, w, t = int(grid[0]), int(grid[1]), int(frames)
    n0 = h * w * t
    if not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < MIN_MTU:
        raise ValueError(f"mtu={mtu!r}: an integer ≥ {MIN_MTU} bytes")
    if x.ndim != 2 or x.shape[1] != profile.dim or pos.shape != (x.shape[0],):
        raise ValueError(f"tokens {x.shape} at positions {pos.shape}: expected [K, {profile.dim}] and [K]")
    if not 1 <= n0 <= MAX_GRID_TOKENS or len(pos) >= MAX_GRID_TOKENS:
        raise ValueError(f"grid {grid} × {frames} frames: 1 to {MAX_GRID_TOKENS} cells, fewer than "
                         f"{MAX_GRID_TOKENS} tokens")
    if len(pos) and (pos.min() < 0 or pos.max() >= n0 or len(np.unique(pos)) != len(pos)):
        raise ValueError(f"positions must be distinct raster indices in [0, {n0})")
    order = np.arange(len(pos)) if priority is None else np.asarray(priority, dtype=np.int64)
    if sorted(order.tolist()) != list(range(len(pos))):
        raise ValueError(f"priority must be a permutation of the {len(pos)} token indices")
    pre = None
    if profile.prefix or prefix is not None:
        pre = np.asarray(prefix if prefix is not None else (), dtype=np.float32)
        if pre.shape != (profile.prefix, profile.dim):
            raise ValueError(f"prefix tokens {pre.shape}: the profile sends [{profile.prefix}, {profile.dim}]")
    symbols = _symbols(profile, x)
    pre_symbols = None if pre is None else _symbols(profile, pre)
    cost = _token_bits(profile, symbols)
    # every field but the count is known now; the count's varint is reserved at its largest (≤ K packets)
    k_total = len(pos)
    runs: list[np.ndarray] = []
    start = 0
    stream0 = (h, w, t, k_total, max(1, k_total))
    while start < k_total or not runs:
        left = k_total - start
        if left == 0:                       # no tokens (K = 0): one packet tells the receiver the stream
            runs.append(order[:0])
            break
        rest, index = order[start:], len(runs)
        first = pre_symbols if not runs else None

        def size(n: int, rest=rest, first=first, index=index) -> int:
            by_cell = np.argsort(pos[rest[:n]], kind="stable")
            return len(_packet(profile, stream0, index, n0, pos[rest[:n]][by_cell], symbols[rest[:n]][by_cell],
                               first)[0])

        lo = _largest_fit(size, left, _estimate(cost[rest], n0, mtu), mtu)
        runs.append(rest[:lo])
        start += lo
    stream = (h, w, t, k_total, len(runs))
    packets, held = [], []
    head_bits, pos_bits, pay_bits = 0, 0.0, 0.0
    for i, take in enumerate(runs):
        by_cell = np.argsort(pos[take], kind="stable")
        cells, sym = pos[take][by_cell], symbols[take][by_cell]
        data, pb, yb = _packet(profile, stream, i, n0, cells, sym, pre_symbols if i == 0 else None)
        packets.append(data)
        held.append(cells)
        head_bits += 8 * (_header_length(data) + CRC.size)
        pos_bits, pay_bits = pos_bits + pb, pay_bits + yb
    return TokenPackets(tuple(packets), tuple(held), head_bits, pos_bits, pay_bits, mtu)


def _largest_fit(size, left: int, guess: int, mtu: int) -> int:
    """The largest n in [1, left] with size(n) ≤ mtu (sizes grow with n), starting from an estimate:
    a few steps of one token around it, then bisection if the estimate was far off."""
    sizes: dict[int, int] = {}

    def fits(n: int) -> bool:
        if n not in sizes:
            sizes[n] = size(n)
        return sizes[n] <= mtu

    if not fits(1):
        raise ValueError(f"mtu={mtu}: one token needs a {sizes[1]}-byte packet under this profile")
    lo, hi = 1, left + 1                    # fits(lo); the largest n that fits lies in [lo, hi)
    n = min(max(guess, 1), left)
    for _ in range(3):
        if fits(n):
            lo = n
            if n == left or not fits(n + 1):
                return n
            lo, n = n + 1, n + 2
        else:
            hi, n = n, n - 1
        if n <= lo or n >= hi:
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _token_bits(profile: TokenCodecProfile, symbols: np.ndarray) -> np.ndarray:
    """[K] the ideal bits of each token under the profile's tables (the adaptive model: under its prior)."""
    if not len(symbols):
        return np.zeros(0)
    e = profile.entropy
    if isinstance(e, FactorizedTables):
        idx = (symbols - e.lo).astype(np.int64)
        return -np.sum([e._log2p[c][idx[:, c]] for c in range(e.dim)], axis=0)
    prior = e.prior.astype(np.float64)
    return -np.log2(prior[symbols.reshape(len(symbols), -1)[:, 0]] / prior.sum())


def _estimate(bits: np.ndarray, n0: int, mtu: int) -> int:
    """How many of the tokens whose ideal bits are ``bits`` (in order) an MTU-sized packet likely holds."""
    n = np.arange(1, len(bits) + 1)
    p = np.clip(n / n0, 1e-12, 1 - 1e-12)
    positions = np.where(n < n0, n0 * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)), 0.0)
    coded = 4 * np.ceil((positions + np.cumsum(bits) + 64) / 32)
    fit = np.flatnonzero(FIXED + 7 + coded + CRC.size <= mtu)
    return int(fit[-1]) + 1 if len(fit) else 1


def _header_length(data: bytes) -> int:
    pos = FIXED
    for _ in range(7):
        pos = read_varint(data, pos, "packet")[1]
    return pos


def read_packet_header(data: bytes, name: str = "<packet>") -> dict:
    """The checked header fields of one packet (raises TokenBitstreamError)."""
    def fail(why: str):
        raise TokenBitstreamError(f"{name}: {why}")

    if not isinstance(data, bytes | bytearray | memoryview):
        fail(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < FIXED + 7 + CRC.size:
        fail(f"truncated: {len(data)} bytes, a token packet has at least {FIXED + 7 + CRC.size}")
    if data[:2] != MAGIC:
        fail(f"not a token packet (magic {data[:2]!r}, expected {MAGIC!r})")
    flags = data[2]
    if flags & 0x0F != VERSION or flags & 0xC0:
        fail(f"packet format version {flags & 0x0F} (flags {flags:#04x}); this decoder reads version {VERSION}")
    if zlib.crc32(data[:-CRC.size]) != CRC.unpack_from(data, len(data) - CRC.size)[0]:
        fail("corrupt: checksum mismatch")
    pos, fields = FIXED, []
    for _ in range(7):
        value, pos = read_varint(data, pos, name)
        fields.append(value)
    h, w, t, k_total, count, index, k = fields
    if min(h, w, t) < 1 or h * w * t > MAX_GRID_TOKENS:
        fail(f"grid {h}×{w} × {t} frames outside the allowed 1 to {MAX_GRID_TOKENS} cells")
    if k_total >= min(h * w * t + 1, MAX_GRID_TOKENS) or k > k_total:
        fail(f"{k} tokens in the packet, {k_total} in the stream, for a grid of {h * w * t} cells")
    if not 1 <= count <= MAX_PACKETS or index >= count or count > max(1, k_total):
        fail(f"packet {index} of {count} for {k_total} tokens")
    body = len(data) - CRC.size - pos
    if body % 4:
        fail(f"{body} bytes of coded words, not a multiple of 4")
    return {"format_version": VERSION, "quantizer": "scalar" if not flags & 0x10 else "vector",
            "prefix": bool(flags & 0x20), "profile_tag": data[3:3 + PROFILE_TAG].hex(), "grid": [h, w],
            "frames": t, "tokens": k_total, "packets": count, "index": index, "packet_tokens": k,
            "header_bytes": pos + CRC.size, "words": body // 4}


def decode_packet(data: bytes, profile: TokenCodecProfile, name: str = "<packet>") -> PacketContent:
    """Decode one packet made with ``profile`` (raises TokenBitstreamError, never anything else)."""
    import constriction

    head = read_packet_header(data, name)
    if bytes.fromhex(head["profile_tag"]) != profile.id[:PROFILE_TAG]:
        raise TokenBitstreamError(f"{name}: made with profile {head['profile_tag']}…, this decoder has "
                                  f"{profile.id.hex()} (another model, layer or quantiser)")
    if head["quantizer"] != profile.quantizer.kind or profile.dim > MAX_DIM:
        raise TokenBitstreamError(f"{name}: quantiser {head['quantizer']} does not match the profile's")
    if head["prefix"] and (head["index"] != 0 or not profile.prefix):
        raise TokenBitstreamError(f"{name}: prefix tokens in packet {head['index']} (only packet 0 of a "
                                  "profile with a prefix carries them)")
    h, w = head["grid"]
    n0, k, p = h * w * head["frames"], head["packet_tokens"], profile.prefix if head["prefix"] else 0
    bits = 32 * head["words"]
    if isinstance(profile.entropy, FactorizedTables) and bits + 64 < (k + p) * profile.entropy.min_bits_per_token():
        raise TokenBitstreamError(f"{name}: {k} + {p} tokens cannot fit in {bits} coded bits")
    words = np.frombuffer(bytes(data), dtype="<u4", count=head["words"], offset=head["header_bytes"] - CRC.size)
    try:
        dec = constriction.stream.queue.RangeDecoder(words.astype(np.uint32))
        mask = decode_mask(dec, n0, k)
        if int(mask.sum()) != k:
            raise TokenBitstreamError(f"{name}: the positions hold {int(mask.sum())} tokens, the header {k}")
        if k + p:
            features = profile.quantizer.dequantize(profile.entropy.decode(dec, k + p))
        else:
            features = np.zeros((0, profile.dim), dtype=np.float32)
    except TokenBitstreamError:
        raise
    except Exception as err:   # constriction reports an exhausted or inconsistent stream as a plain error
        raise TokenBitstreamError(f"{name}: the entropy-coded data does not decode ({err})") from None
    return PacketContent(head["index"], head["packets"], (h, w), head["frames"], head["tokens"],
                         np.flatnonzero(mask), features[p:], features[:p] if p else None)


def receive_tokens(packets: list[bytes], profile: TokenCodecProfile, name: str = "<packets>") -> ReceivedTokens:
    """The tokens of every valid packet among ``packets`` (any subset, any order, duplicates allowed).

    The first valid packet fixes the stream (grid, K, packet count); a packet that disagrees, repeats
    an index or a position, or fails its own checks is left out and reported in ``rejected``. Raises
    TokenBitstreamError when no packet is valid (nothing of the stream arrived).
    """
    accepted: dict[int, PacketContent] = {}
    rejected: list[tuple[int, str]] = []
    stream, seen = None, np.zeros(0, dtype=bool)
    for i, data in enumerate(packets):
        try:
            content = decode_packet(data, profile, f"{name}[{i}]")
        except TokenBitstreamError as err:
            rejected.append((i, str(err)))
            continue
        if stream is None:
            stream = content.stream()
            seen = np.zeros(content.grid[0] * content.grid[1] * content.frames, dtype=bool)
        if content.stream() != stream:
            rejected.append((i, f"another stream (grid, frames, tokens, packets {content.stream()}, not {stream})"))
        elif content.index in accepted:
            rejected.append((i, f"packet {content.index} again"))
        elif seen[content.positions].any():
            rejected.append((i, f"packet {content.index} repeats positions another packet holds"))
        else:
            accepted[content.index] = content
            seen[content.positions] = True
    if stream is None:
        raise TokenBitstreamError(f"{name}: no valid token packet among {len(packets)}"
                                  + (f" (first: {rejected[0][1]})" if rejected else ""))
    got = [accepted[j] for j in sorted(accepted)]
    positions = np.concatenate([c.positions for c in got])
    features = np.concatenate([c.features for c in got]).reshape(-1, profile.dim)
    order = np.argsort(positions, kind="stable")
    prefix = accepted[0].prefix if 0 in accepted else None
    grid, frames, k_total, count = stream
    return ReceivedTokens(features[order], positions[order], grid, frames, profile.id[:PROFILE_TAG], k_total, count,
                          tuple(sorted(accepted)), tuple(rejected), prefix)


# -- a file of datagrams (what a receiver captured) -----------------------------------------------------

CAPTURE_MAGIC = b"TKPC"
CAPTURE_HEAD = struct.Struct("<4sBI")
MAX_DATAGRAM = 1 << 16


@dataclass(frozen=True)
class Capture:
    """Datagrams as received (any kind: token packets, FEC packets), with how many were sent."""

    datagrams: tuple[bytes, ...]
    meta: dict = field(default_factory=dict)


def write_capture(datagrams, meta: dict | None = None) -> bytes:
    """``"TKPC"`` | version u8 | count u32 | (length u16, bytes) × count | a JSON line of metadata."""
    import json

    out = [CAPTURE_HEAD.pack(CAPTURE_MAGIC, 1, len(datagrams))]
    for d in datagrams:
        if len(d) >= MAX_DATAGRAM:
            raise ValueError(f"a datagram of {len(d)} bytes; at most {MAX_DATAGRAM - 1}")
        out.append(struct.pack("<H", len(d)) + bytes(d))
    out.append(json.dumps(meta or {}, sort_keys=True).encode())
    return b"".join(out)


def read_capture(data: bytes, name: str = "<capture>") -> Capture:
    """Parse a capture file (raises TokenBitstreamError naming what is malformed)."""
    import json

    if len(data) < CAPTURE_HEAD.size or data[:4] != CAPTURE_MAGIC:
        raise TokenBitstreamError(f"{name}: not a packet capture (magic {bytes(data[:4])!r}, "
                                  f"expected {CAPTURE_MAGIC!r})")
    _, version, count = CAPTURE_HEAD.unpack_from(data)
    if version != 1:
        raise TokenBitstreamError(f"{name}: capture version {version}; this reader reads version 1")
    pos, out = CAPTURE_HEAD.size, []
    for i in range(count):
        if pos + 2 > len(data):
            raise TokenBitstreamError(f"{name}: truncated at datagram {i} of {count}")
        (n,) = struct.unpack_from("<H", data, pos)
        if pos + 2 + n > len(data):
            raise TokenBitstreamError(f"{name}: datagram {i} announces {n} bytes, {len(data) - pos - 2} remain")
        out.append(bytes(data[pos + 2:pos + 2 + n]))
        pos += 2 + n
    try:
        meta = json.loads(bytes(data[pos:]).decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TokenBitstreamError(f"{name}: the metadata after the datagrams is not JSON") from None
    if not isinstance(meta, dict):
        raise TokenBitstreamError(f"{name}: the metadata after the datagrams is not a JSON object")
    return Capture(tuple(out), meta)


__all__ = ["CAPTURE_MAGIC", "DEFAULT_MTU", "MAGIC", "Capture", "PacketContent", "ReceivedTokens", "TokenPackets",
           "decode_packet", "packetize", "read_capture", "read_packet_header", "receive_tokens", "write_capture"]
