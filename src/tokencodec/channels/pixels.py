"""Pixel files over a lossy channel: split into packets of at most an MTU as each format allows, and rebuilt
by the receiver from what arrives. What each decoder then does with a loss is stated here and measured
in the tests.

- ``jpeg-rst`` (JPEG with a restart marker every 8 MCUs, :mod:`tokencodec.codecs.resilient`): packets
  hold whole **restart intervals** (an interval longer than a packet is split into fragments; any lost
  fragment loses the interval). The header (tables, frame, scan) is not sent: with standard Huffman
  tables it is a function of (width, height, quality), which every packet carries, so the receiver
  rebuilds it (what RFC 2435, RTP/JPEG, does with its Q byte). For a lost interval the receiver writes
  an interval of **all-zero blocks** (DC difference 0, then end-of-block, in the standard tables: 14
  bits per 4:4:4 MCU) and its restart marker, so libjpeg-turbo (through Pillow) decodes flat mid-grey
  8×8 blocks there (the DC prediction restarts at each interval) and every later interval **in
  place**. (Given the intervals back to back it would decode the next interval one slot too early, or
  lose its place after more than two missing; given the marker alone it decodes the first MCU from
  the zero bits it pads with, a garbled block, then grey.)
- ``jpeg2000-plt`` (J2K codestream with PLT markers): packets hold whole **J2K packets** (the PLT gives
  their lengths; a J2K packet longer than a transport packet is split). The main header is rebuilt from
  (width, height, quality) like JPEG's (OpenJPEG writes the same SIZ/COD/QCD/COM for any content at one
  setting); the receiver writes a new tile-part header without PLT and puts a **zero-length J2K packet**
  (one byte 0x00: "no code-block included") in place of each lost one. With one quality layer every
  code-block appears in one packet only, so the codestream stays valid and OpenJPEG (through Pillow)
  decodes it with the lost precinct's subband coefficients at zero: a lost high-resolution packet
  blurs, a lost lowest-resolution packet shifts a colour component's level.
- Every other codec (``jpegxl``, ``webp``, ``avif``, ``heic``, plain ``jpeg`` and ``jpeg2000``): the file is
  one unit split at MTU boundaries; any lost packet and the file is incomplete. libjxl through
  imagecodecs refuses an incomplete JPEG XL file (``JXL_DEC_NEED_MORE_INPUT``); its progressive
  decoding of partial files is not reachable through imagecodecs' whole-file decoder. So a loss means
  no image.

When nothing decodes, the receiver has **no image**: :func:`no_image` (a uniform mid-grey image of the
sample's size) is what the observer is shown, for pixel and token routes alike.

**Pixel packet, version 1**::

    magic 0x50 | version u8 | kind u8 (0 whole file, 1 JPEG intervals, 2 J2K packets) | width u16 | height u16
    | quality u8 | units u16 | first unit u16 | n u8 (units in the packet; 0: a fragment of one unit)
    | [fragment index u8, fragments u8 when n = 0] | [the first n − 1 unit lengths, varints] | data | CRC-32
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tokencodec.entropy.packets import read_varint, varint

PIXEL_MAGIC = 0x50
VERSION = 1
HEAD = struct.Struct("<BBBHHBHHB")
CRC = struct.Struct("<I")
KINDS = {"jpeg-rst": 1, "jpeg2000-plt": 2}
RST = bytes(range(0xD0, 0xD8))
MAX_FRAGMENTS = 255


class PixelPacketError(ValueError):
    """A pixel file that cannot be packetised as its format allows, or a malformed pixel packet."""


def no_image(shape: tuple[int, ...]) -> np.ndarray:
    """The receiver's answer when nothing decodes: a uniform mid-grey image (128) of the sample's shape."""
    return np.full(shape, 128, dtype=np.uint8)


@lru_cache(maxsize=64)
def implied_header(codec: str, width: int, height: int, quality: int) -> bytes:
    """The header a codec writes for any image of this size at this quality (a grey image's header)."""
    from tokencodec.codecs import get_codec

    data = get_codec(codec).encode(np.full((height, width, 3), 128, dtype=np.uint8), quality)
    return _jpeg_split(data)[0] if codec == "jpeg-rst" else _j2k_split(data)[0]


def _jpeg_split(data: bytes) -> tuple[bytes, list[bytes]]:
    """(header through the SOS segment, restart intervals each with its closing RST marker)."""
    sos = data.find(b"\xff\xda")
    if sos < 0 or not data.endswith(b"\xff\xd9"):
        raise PixelPacketError("jpeg-rst: no scan (SOS) or no EOI")
    start = sos + 2 + struct.unpack_from(">H", data, sos + 2)[0]
    scan, units, begin = data[start:-2], [], 0
    i = scan.find(b"\xff")
    while i >= 0:
        if i + 1 < len(scan) and scan[i + 1] in RST:
            units.append(scan[begin:i + 2])
            begin = i + 2
        i = scan.find(b"\xff", i + 2)
    units.append(scan[begin:])
    return data[:start], units


def _j2k_split(data: bytes) -> tuple[bytes, list[bytes]]:
    """(main header through the last marker before SOT, the J2K packets of the one tile-part per PLT)."""
    sot = data.find(b"\xff\x90")
    if not data.startswith(b"\xff\x4f\xff\x51") or sot < 0:
        raise PixelPacketError("jpeg2000-plt: not a raw J2K codestream (SOC, SIZ) or no tile-part (SOT)")
    psot = struct.unpack_from(">I", data, sot + 6)[0]
    if data[sot + psot:] != b"\xff\xd9":
        raise PixelPacketError("jpeg2000-plt: one tile-part then EOC expected")
    i, lengths = sot + 12, []
    while data[i:i + 2] != b"\xff\x93":
        size = struct.unpack_from(">H", data, i + 2)[0]
        if data[i:i + 2] == b"\xff\x58":                 # PLT: Zplt, then 7-bit groups, high bit = more
            value = 0
            for byte in data[i + 5:i + 2 + size]:
                value = (value << 7) | (byte & 0x7F)
                if not byte & 0x80:
                    lengths.append(value)
                    value = 0
        i += 2 + size
        if i >= sot + psot:
            raise PixelPacketError("jpeg2000-plt: no SOD in the tile-part header")
    body = data[i + 2:sot + psot]
    if not lengths or sum(lengths) != len(body):
        raise PixelPacketError(f"jpeg2000-plt: PLT lengths add up to {sum(lengths)}, the tile-part holds {len(body)}")
    ends = np.cumsum([0, *lengths])
    return data[:sot], [body[ends[j]:ends[j + 1]] for j in range(len(lengths))]


def _grey_interval(mcus: int) -> bytes:
    """Entropy-coded data of ``mcus`` 4:4:4 MCUs whose blocks are all zero, under the standard Huffman tables
    (JPEG Annex K): luma DC category 0 '00', luma end-of-block '1010', chroma DC '00', chroma end-of-block
    '00'; padded with 1 bits, 0xFF bytes stuffed."""
    bits = ("00" + "1010" + "00" + "00" + "00" + "00") * mcus
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for i in range(0, len(bits), 8):
        out.append(int(bits[i:i + 8], 2))
        if out[-1] == 0xFF:
            out.append(0)
    return bytes(out)


def split(codec: str, data: bytes, width: int, height: int, quality: int) -> list[bytes]:
    """The units of a file: restart intervals, J2K packets, or the whole file; the header must be implied."""
    if codec not in KINDS:
        return [bytes(data)]
    header, units = (_jpeg_split if codec == "jpeg-rst" else _j2k_split)(bytes(data))
    if header != implied_header(codec, width, height, quality):
        raise PixelPacketError(f"{codec}: this file's header differs from the one implied by its size and quality")
    return units


def join(codec: str, units: list[bytes | None], width: int, height: int, quality: int) -> bytes | None:
    """The file the receiver hands its decoder (lost units replaced as the format allows), or None."""
    if codec not in KINDS:
        return units[0] if len(units) == 1 and units[0] is not None else None
    header = implied_header(codec, width, height, quality)
    if codec == "jpeg-rst":
        from tokencodec.codecs.resilient import RESTART_BLOCKS

        last, mcus = len(units) - 1, -(-width // 8) * -(-height // 8)
        scan = b"".join(u if u is not None else _grey_interval(min(RESTART_BLOCKS, mcus - RESTART_BLOCKS * j))
                        + (b"\xff" + bytes([0xD0 + j % 8]) if j < last else b"") for j, u in enumerate(units))
        return header + scan + b"\xff\xd9"
    body = b"".join(u if u is not None else b"\x00" for u in units)
    sot = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 12 + 2 + len(body), 0, 1)
    return header + sot + b"\xff\x93" + body + b"\xff\xd9"


def packetize(codec: str, data: bytes, width: int, height: int, quality: int, mtu: int) -> list[bytes]:
    """Pixel packets of at most ``mtu`` bytes holding whole units (a unit too long is fragmented)."""
    units = split(codec, data, width, height, quality)
    kind = KINDS.get(codec, 0)
    fixed = HEAD.size + 2 + CRC.size                    # + fragment fields
    if mtu < fixed + 16 or len(units) > 0xFFFF or max(width, height) > 0xFFFF or not 0 <= quality <= 255:
        raise PixelPacketError(f"mtu={mtu} (at least {fixed + 16}), {len(units)} units, {width}×{height}, q {quality}")
    out, j = [], 0
    while j < len(units):
        n, size = 1, HEAD.size + CRC.size + len(units[j])
        while j + n < len(units):
            grow = len(varint(len(units[j + n - 1]))) + len(units[j + n])
            if size + grow > mtu:
                break
            size, n = size + grow, n + 1
        if size <= mtu:
            lengths = b"".join(varint(len(u)) for u in units[j:j + n - 1])
            out.append(_packet(kind, width, height, quality, len(units), j, n, lengths + b"".join(units[j:j + n])))
            j += n
            continue
        room = mtu - fixed
        pieces = [units[j][i:i + room] for i in range(0, len(units[j]), room)]
        if len(pieces) > MAX_FRAGMENTS:
            raise PixelPacketError(f"a {len(units[j])}-byte unit needs more than {MAX_FRAGMENTS} packets at mtu={mtu}")
        for f, piece in enumerate(pieces):
            out.append(_packet(kind, width, height, quality, len(units), j, 0, bytes([f, len(pieces)]) + piece))
        j += 1
    return out


def _packet(kind: int, width: int, height: int, quality: int, total: int, first: int, n: int, rest: bytes) -> bytes:
    body = HEAD.pack(PIXEL_MAGIC, VERSION, kind, width, height, quality, total, first, n) + rest
    return body + CRC.pack(zlib.crc32(body))


@dataclass(frozen=True)
class Reassembled:
    data: bytes | None          # the file for the decoder (None: nothing to decode)
    units: int
    units_received: int
    rejected: int


def reassemble(codec: str, datagrams: list[bytes]) -> Reassembled:
    """Collect the units of valid pixel packets (CRC, fields, one stream) and join them."""
    stream, whole, fragments, rejected = None, {}, {}, 0
    for d in datagrams:
        try:
            params, first, n, rest = _parse(d)
        except PixelPacketError:
            rejected += 1
            continue
        if stream is None:
            stream = params
        if params != stream or first + max(n, 1) > params[-1]:
            rejected += 1
            continue
        if n == 0:
            f, count = rest[0], rest[1]
            fragments.setdefault((first, count), {})[f] = rest[2:]
            continue
        pos, lengths = 0, []
        try:
            for _ in range(n - 1):
                value, pos = read_varint(rest, pos, "pixel packet")
                lengths.append(value)
        except ValueError:
            rejected += 1
            continue
        if sum(lengths) > len(rest) - pos:
            rejected += 1
            continue
        for u in range(n):
            size = lengths[u] if u < n - 1 else len(rest) - pos
            whole[first + u] = rest[pos:pos + size]
            pos += size
    if stream is None:
        return Reassembled(None, 0, 0, rejected)
    kind, width, height, quality, total = stream
    for (unit, count), pieces in fragments.items():
        if len(pieces) == count and set(pieces) == set(range(count)):
            whole.setdefault(unit, b"".join(pieces[f] for f in range(count)))
    units = [whole.get(j) for j in range(total)]
    return Reassembled(join(codec, units, width, height, quality), total, sum(u is not None for u in units), rejected)


def _parse(d: bytes):
    if len(d) < HEAD.size + CRC.size or d[0] != PIXEL_MAGIC or d[1] != VERSION:
        raise PixelPacketError("not a pixel packet")
    if zlib.crc32(d[:-CRC.size]) != CRC.unpack_from(d, len(d) - CRC.size)[0]:
        raise PixelPacketError("checksum mismatch")
    _, _, kind, width, height, quality, total, first, n = HEAD.unpack_from(d)
    rest = d[HEAD.size:-CRC.size]
    if n == 0 and (len(rest) < 2 or not rest[0] < rest[1]):
        raise PixelPacketError("bad fragment fields")
    return (kind, width, height, quality, total), first, n, rest


def decode_received(codec: str, datagrams: list[bytes],
                    shape: tuple[int, ...]) -> tuple[np.ndarray | None, Reassembled]:
    """(decoded image, or None when the decoder fails or nothing arrived; what was reassembled)."""
    from tokencodec.codecs import CodecError, get_codec

    got = reassemble(codec, datagrams)
    if got.data is None:
        return None, got
    try:
        image = get_codec(codec).decode(got.data)
    except CodecError:
        return None, got
    return (image if image.shape == tuple(shape) else None), got


__all__ = ["KINDS", "PixelPacketError", "Reassembled", "decode_received", "implied_header", "join", "no_image",
           "packetize", "reassemble", "split"]
