"""Forward error correction over packets: RaptorQ (RFC 6330, the ``raptorq`` package), with unequal protection.

Datagrams are protected in **classes** of consecutive packets in priority order (class 0 the most
important). Each class is one RaptorQ source block: its packets, each prefixed with its length (u16) and
zero-padded to one symbol of T bytes (T the same for every class, a multiple of 8), are the source
symbols; the encoder adds ``repair[c]`` repair symbols. RaptorQ is systematic: the source datagrams go
out **unpadded** (the receiver pads them back), so FEC costs the repair symbols plus a small header per
datagram. A class whose received symbols suffice (≥ its k source symbols, almost always enough) is
rebuilt whole; otherwise its source datagrams that arrived are still used as they are.

**Equal protection** is one class over all packets; **unequal protection (UEP)** puts the first
``share`` of the packets (at least one) in class 0 and gives it ``weight`` of the repair symbols, the
rest to class 1 — the same number of repair symbols of the same size, so the same total bits.

**FEC datagram, version 1**::

    magic 0xFE | block (class) u8 | source symbols k u8 | symbol size T u16 | symbol id (ESI) u16
    | the symbol: (length u16 + packet) for a source symbol (unpadded), T bytes for a repair symbol
    | CRC-32 of everything before, u32

The CRC lets a receiver drop a datagram with bit errors (RaptorQ corrects erasures, not errors).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

FEC_MAGIC = 0xFE
HEAD = struct.Struct("<BBBHH")                    # magic, block, k, T, esi
CRC = struct.Struct("<I")
OVERHEAD = HEAD.size + CRC.size                   # bytes a datagram gains (source symbols: + 2 length bytes)
MAX_SOURCE = 255                                  # source packets per class (the header's k is one byte)


class FECError(ValueError):
    """A protection plan that cannot be built; the message says why."""


def symbol_size(packets: Sequence[bytes]) -> int:
    """T: the largest packet plus its 2-byte length, rounded up to a multiple of 8 (RaptorQ's alignment)."""
    longest = max((len(p) for p in packets), default=0) + 2
    return -(-longest // 8) * 8


def datagram_bytes(packets: Sequence[bytes], repair: int) -> int:
    """Bytes on the wire of ``packets`` with ``repair`` repair symbols (any split into classes)."""
    return sum(len(p) + 2 + OVERHEAD for p in packets) + repair * (symbol_size(packets) + OVERHEAD)


def repair_for_budget(packets: Sequence[bytes], budget: int) -> int:
    """The most repair symbols that keep ``packets`` + repair within ``budget`` bytes (0 when none fit)."""
    spare = budget - datagram_bytes(packets, 0)
    return max(0, spare // (symbol_size(packets) + OVERHEAD))


def uep_classes(n: int, repair: int, share: float, weight: float) -> tuple[list[int], list[int]]:
    """(packets per class, repair per class): the first ``share`` of n packets (≥ 1) get ``weight`` of the
    repair symbols (rounded), the others the rest; one class when every packet is in the first."""
    first = min(n, max(1, round(share * n)))
    if first == n:
        return [n], [repair]
    top = min(repair, round(weight * repair))
    return [first, n - first], [top, repair - top]


def protect(packets: Sequence[bytes], classes: Sequence[int], repair: Sequence[int]) -> list[bytes]:
    """FEC datagrams: for each class in order, its source datagrams then its repair datagrams."""
    import raptorq

    if sum(classes) != len(packets) or len(classes) != len(repair) or min(classes, default=1) < 1:
        raise FECError(f"classes {list(classes)} must split the {len(packets)} packets, one repair count each")
    if max(classes) > MAX_SOURCE or len(classes) > 255:
        raise FECError(f"at most {MAX_SOURCE} packets per class and 255 classes; got {list(classes)}")
    t = symbol_size(packets)
    if t > 0xFFFF:
        raise FECError(f"a {t}-byte symbol; at most 65535")
    out, start = [], 0
    for block, (k, r) in enumerate(zip(classes, repair, strict=True)):
        units = [struct.pack("<H", len(p)) + bytes(p) for p in packets[start:start + k]]
        start += k
        for esi, unit in enumerate(units):
            out.append(_datagram(block, k, t, esi, unit))
        if r:
            data = b"".join(u.ljust(t, b"\0") for u in units)
            encoded = raptorq.Encoder.with_defaults(data, t).get_encoded_packets(r)
            for p in encoded[k:]:
                esi = int.from_bytes(p[1:4], "big")
                if p[0] != 0 or len(p) != 4 + t or esi > 0xFFFF:
                    raise FECError(f"raptorq returned an unexpected packet (block {p[0]}, {len(p)} bytes)")
                out.append(_datagram(block, k, t, esi, bytes(p[4:])))
    return out


def _datagram(block: int, k: int, t: int, esi: int, symbol: bytes) -> bytes:
    body = HEAD.pack(FEC_MAGIC, block, k, t, esi) + symbol
    return body + CRC.pack(zlib.crc32(body))


def is_fec(datagram: bytes) -> bool:
    return len(datagram) > 0 and datagram[0] == FEC_MAGIC


@dataclass(frozen=True)
class Recovered:
    packets: list[bytes]                # the source packets recovered, in priority order within each class
    blocks: dict[int, dict]             # per class: k, symbols received, decoded (bool)
    rejected: int                       # datagrams dropped (CRC, malformed, inconsistent)


def recover(datagrams: Sequence[bytes]) -> Recovered:
    """The source packets that FEC datagrams deliver (datagrams of other kinds are passed through)."""
    import raptorq

    blocks: dict[int, dict] = {}
    passed, rejected = [], 0
    for d in datagrams:
        if not is_fec(d):
            passed.append(bytes(d))
            continue
        if len(d) < OVERHEAD or zlib.crc32(d[:-CRC.size]) != CRC.unpack_from(d, len(d) - CRC.size)[0]:
            rejected += 1
            continue
        _, block, k, t, esi = HEAD.unpack_from(d)
        symbol = bytes(d[HEAD.size:-CRC.size])
        info = blocks.setdefault(block, {"k": k, "t": t, "symbols": {}})
        ok = (k, t) == (info["k"], info["t"]) and k >= 1 and t >= 8 and t % 8 == 0 and len(symbol) <= t
        if not ok or (esi >= k and len(symbol) != t) or (esi < k and not _unit(symbol)):
            rejected += 1
            continue
        info["symbols"].setdefault(esi, symbol)
    out = list(passed)
    report = {}
    for block in sorted(blocks):
        info = blocks[block]
        k, t, symbols = info["k"], info["t"], info["symbols"]
        have = {esi: s for esi, s in symbols.items() if esi < k}
        decoded = False
        if len(have) < k <= len(symbols):
            decoder = raptorq.Decoder.with_defaults(k * t, t)
            data = None
            for esi, s in sorted(symbols.items()):
                data = decoder.decode(b"\0" + esi.to_bytes(3, "big") + s.ljust(t, b"\0"))
                if data is not None:
                    break
            if data is not None:
                units = [data[i * t:(i + 1) * t] for i in range(k)]
                have = {i: u for i, u in enumerate(units) if _unit(u)} | have
                decoded = True
        out.extend(_unit(have[esi]) for esi in sorted(have))
        report[block] = {"k": k, "received": len(symbols), "source_received": sum(e < k for e in symbols),
                         "decoded": decoded or len([e for e in symbols if e < k]) == k}
    return Recovered([p for p in out if p], report, rejected)


def _unit(symbol: bytes) -> bytes:
    """The packet inside a source symbol (length u16 + packet + zero padding), or b"" when malformed."""
    if len(symbol) < 2:
        return b""
    (n,) = struct.unpack_from("<H", symbol)
    return symbol[2:2 + n] if 2 + n <= len(symbol) and n else b""


__all__ = ["FECError", "OVERHEAD", "Recovered", "datagram_bytes", "is_fec", "protect", "recover",
           "repair_for_budget", "symbol_size", "uep_classes"]
