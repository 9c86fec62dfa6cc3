"""Payload-only sizes of real bitstreams: the coded image data without the container and headers.

On tiny images the container dominates (a 64×64 baseline JPEG carries ~600 bytes of quantisation and
Huffman tables), so a study should report the payload beside the whole file. ``payload_bytes`` parses
each format exactly (no estimates); ``container_overhead`` is ``len(data) - payload_bytes``. Input that
does not parse raises ``ValueError`` naming the codec and what is malformed.

The rule per format (what is counted as payload; everything else in the file is overhead):

``jpeg``
    The entropy-coded segment of every scan: the bytes after each SOS segment header up to the next
    marker that is neither RST0–7 nor a stuffed ``FF 00``. RST markers and stuffing bytes inside the scan
    count as payload (they are part of the entropy-coded data the decoder walks). SOI, APPn (JFIF), COM,
    DQT, SOF, DHT, DRI, the SOS headers and EOI are overhead; DQT and DHT count as overhead because
    they are tables, not coded image data. Bytes after EOI are overhead too.
``webp``
    The data of the one VP8 or VP8L chunk minus its frame header: VP8 (lossy) 10 bytes for the key
    frame (3-byte frame tag, 3-byte start code ``9d 01 2a``, 2+2 bytes of width/height); VP8L
    (lossless) 5 bytes (signature ``2f`` and 28+4 bits of size/alpha/version). The VP8 first partition
    (modes and probabilities) is coded data and counts as payload. The RIFF header, VP8X, ALPH, ICCP,
    EXIF, XMP, other chunks and the RIFF pad byte are overhead. Animated WebP is rejected.
``avif``, ``heic``
    The bytes of the coded image item(s) located through ``iloc``: the primary item's extents (from
    ``pitm``), or for a derived primary item (``grid``/``iden``/``iovl``) the extents of the coded
    items it references through ``iref``/``dimg``, counted once each. For AVIF this is the AV1 OBU
    data; for HEIC the length-prefixed slice NAL units in ``mdat`` (the 4-byte NAL length fields
    included). All boxes — ftyp, meta, hdlr, pitm, iloc, iinf, iprp/ipco (av1C/hvcC with the HEVC
    VPS/SPS/PPS, ispe, colr, pixi …), the mdat box header — and any Exif/XMP/thumbnail/alpha items
    are overhead.
``jpeg2000``
    Pillow writes a ``.jp2`` file (JP2 signature, ftyp, jp2h boxes around a ``jp2c`` codestream box);
    a raw J2K codestream (``FF4F FF51``) is accepted too. Payload is the tile-part bit-stream after
    each SOD marker up to the end of its tile-part as given by the SOT ``Psot`` length (``Psot = 0``:
    up to EOC). This includes the packet headers that live in the bit-stream. The JP2 boxes, SOC, the
    main header (SIZ, COD, QCD, COM, …), the SOT/tile-part headers (PLT etc.), SOD and EOC are
    overhead.
``jpegxl``
    A bare codestream (``FF 0A``, what imagecodecs writes) or the ISOBMFF container (``jxlc`` or
    ``jxlp`` boxes hold the codestream). The codestream is parsed exactly: SizeHeader, ImageMetadata,
    CustomTransformData, then per frame the FrameHeader and TOC. Payload is the sum of the TOC's
    section sizes over all frames (LfGlobal, LfGroups, HfGlobal, PassGroups — entropy-coded data,
    including their global quantisation/context-tree parts). Overhead is the signature, the image
    headers, frame headers, TOCs, padding and the container boxes. The parse is checked: the last
    frame must end exactly at the end of the codestream, else ``ValueError``. Codestreams this parser
    does not split — an embedded ICC profile, a preview frame, a permuted TOC — raise ``ValueError``
    saying so rather than returning a guess.
``blockdct``, ``blockdct-semantic``
    tokencodec's own block-transform file: the two range-coded sections (the per-block scale indices
    and the coefficients) are payload; the fixed 82-byte header (size, quality, the scale-index
    histogram and the 48 context scales) is overhead.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["container_overhead", "has_payload_parser", "payload_bytes"]


def has_payload_parser(codec: str) -> bool:
    """Whether ``payload_bytes`` can split this codec's files (a plug-in codec usually cannot: its whole file
    then counts as payload)."""
    from tokencodec.codecs.base import CODECS

    return codec in _PARSERS or (codec in CODECS and getattr(CODECS.get(codec), "inner", "") in _PARSERS)


def payload_bytes(codec: str, data: bytes) -> int:
    """Bytes of coded image data in ``data`` (a whole file written by ``codec``), per the rules above.

    A machine-guided variant (``jpegxl-semantic``) writes its inner codec's standard file: that codec's rule."""
    from tokencodec.codecs.base import CODECS

    if codec not in _PARSERS and codec in CODECS and getattr(CODECS.get(codec), "inner", ""):
        codec = CODECS.get(codec).inner
    try:
        parse = _PARSERS[codec]
    except KeyError:
        raise ValueError(f"payload_bytes: no payload parser for codec {codec!r} "
                         f"(known: {', '.join(sorted(_PARSERS))})") from None
    data = bytes(data)
    try:
        payload = parse(data)
    except _Malformed as err:
        raise ValueError(f"{codec}: malformed bitstream ({len(data)} bytes): {err}") from None
    except (IndexError, struct.error) as err:  # a read ran past the end
        raise ValueError(f"{codec}: truncated bitstream ({len(data)} bytes): {err}") from None
    if not 0 <= payload <= len(data):
        raise ValueError(f"{codec}: parsed payload {payload} is outside the {len(data)}-byte file")
    return payload


def container_overhead(codec: str, data: bytes) -> int:
    """``len(data) - payload_bytes(codec, data)``: headers, tables and container boxes."""
    return len(data) - payload_bytes(codec, data)


class _Malformed(Exception):
    pass


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Malformed(what)


# ---------------------------------------------------------------------------------------------- JPEG

_RST = range(0xD0, 0xD8)
_STANDALONE = {0x01, *_RST}  # TEM, RSTn: markers without a length field


def _jpeg(data: bytes) -> int:
    n = len(data)
    _need(data[:2] == b"\xff\xd8", "no SOI marker (FF D8) at the start")
    i, payload, scans, frame = 2, 0, 0, False
    while True:
        _need(i < n, "ends before EOI (FF D9)")
        _need(data[i] == 0xFF, f"expected a marker at offset {i}, found byte {data[i]:#04x}")
        while i < n and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        _need(i < n, "ends inside a marker")
        marker = data[i]
        i += 1
        if marker == 0xD9:  # EOI; anything after it is overhead
            break
        _need(marker not in (0x00, 0xD8), f"unexpected marker FF {marker:02X} at offset {i - 2}")
        if marker in _STANDALONE:
            continue
        _need(i + 2 <= n, f"marker FF {marker:02X} at offset {i - 2} has no length")
        length = int.from_bytes(data[i:i + 2], "big")
        _need(length >= 2 and i + length <= n,
              f"segment FF {marker:02X} at offset {i - 2} has length {length} past the end")
        frame |= marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
        i += length
        if marker != 0xDA:
            continue
        _need(frame, "SOS before any SOF")
        start = i
        while True:  # entropy-coded segment: up to a marker that is not stuffing (FF 00) or RSTn
            i = data.find(b"\xff", i)
            _need(0 <= i < n - 1, f"scan starting at offset {start} runs to the end without a marker (no EOI)")
            if data[i + 1] == 0x00 or data[i + 1] in _RST:
                i += 2
                continue
            break
        payload += i - start
        scans += 1
    _need(scans > 0, "no SOS scan before EOI")
    return payload


# ---------------------------------------------------------------------------------------------- WebP

def _webp(data: bytes) -> int:
    _need(len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP", "no RIFF/WEBP header")
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    _need(riff_end <= len(data), f"RIFF size {riff_end - 8} runs past the {len(data)}-byte file")
    i, coded = 12, []
    while i < riff_end:
        _need(i + 8 <= riff_end, f"chunk header at offset {i} is cut off")
        fourcc, size = data[i:i + 4], int.from_bytes(data[i + 4:i + 8], "little")
        body = i + 8
        _need(body + size <= riff_end, f"chunk {fourcc!r} at offset {i} runs past the RIFF end")
        _need(fourcc not in (b"ANIM", b"ANMF"), "animated WebP is not supported")
        if fourcc == b"VP8 ":
            _need(size >= 10, "VP8 chunk shorter than its 10-byte key-frame header")
            _need(data[body] & 1 == 0, "VP8 frame is not a key frame")
            _need(data[body + 3:body + 6] == b"\x9d\x01\x2a", "VP8 key frame lacks the start code 9d 01 2a")
            first_part = int.from_bytes(data[body:body + 3], "little") >> 5
            _need(10 + first_part <= size, f"VP8 first partition ({first_part} bytes) runs past the chunk")
            coded.append(size - 10)
        elif fourcc == b"VP8L":
            _need(size >= 5 and data[body] == 0x2F, "VP8L chunk lacks the 0x2f signature")
            coded.append(size - 5)
        i = body + size + (size & 1)
    _need(len(coded) == 1, f"expected one VP8/VP8L chunk, found {len(coded)}")
    return coded[0]


# ------------------------------------------------------------------------------------- ISOBMFF/HEIF

def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in data[start:end]."""
    out, i = [], start
    while i < end:
        _need(i + 8 <= end, f"box header at offset {i} is cut off")
        size, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        head = 8
        if size == 1:
            _need(i + 16 <= end, f"box {kind!r} at offset {i} lacks its 64-bit size")
            size, head = int.from_bytes(data[i + 8:i + 16], "big"), 16
        elif size == 0:
            size = end - i
        _need(size >= head and i + size <= end, f"box {kind!r} at offset {i} has size {size} past its parent")
        out.append((kind, i + head, i + size))
        i += size
    return out


def _child(data: bytes, boxes, kind: bytes, where: str, required: bool = True):
    found = [b for b in boxes if b[0] == kind]
    _need(len(found) <= 1, f"more than one {kind.decode()} box in {where}")
    _need(found or not required, f"no {kind.decode()} box in {where}")
    return found[0] if found else None


def _uint(data: bytes, i: int, size: int) -> tuple[int, int]:
    _need(i + size <= len(data), f"field at offset {i} is cut off")
    return (int.from_bytes(data[i:i + size], "big") if size else 0), i + size


def _heif(data: bytes, brands: tuple[bytes, ...], coded_types: tuple[bytes, ...]) -> int:
    top = _boxes(data, 0, len(data))
    _need(top and top[0][0] == b"ftyp", "does not start with an ftyp box")
    _, fs, fe = top[0]
    compatible = {data[fs:fs + 4]} | {data[j:j + 4] for j in range(fs + 8, fe - 3, 4)}
    _need(any(b in compatible for b in brands), f"ftyp brands {sorted(compatible)} include none of {brands}")
    _, ms, me = _child(data, top, b"meta", "the file")
    meta = _boxes(data, ms + 4, me)  # meta is a FullBox

    _, ps, pe = _child(data, meta, b"pitm", "meta")
    primary, _ = _uint(data, ps + 4, 2 if data[ps] == 0 else 4)

    types: dict[int, bytes] = {}
    _, is_, ie = _child(data, meta, b"iinf", "meta")
    count_size = 2 if data[is_] == 0 else 4
    for kind, s, _e in _boxes(data, is_ + 4 + count_size, ie):
        if kind == b"infe":
            version = data[s]
            _need(version >= 2, f"infe version {version} (< 2) is not supported")
            item, j = _uint(data, s + 4, 2 if version == 2 else 4)
            types[item] = data[j + 2:j + 6]

    dimg: dict[int, list[int]] = {}
    iref = _child(data, meta, b"iref", "meta", required=False)
    if iref:
        _, rs, re_ = iref
        id_size = 2 if data[rs] == 0 else 4
        for kind, s, e in _boxes(data, rs + 4, re_):
            src, j = _uint(data, s, id_size)
            count, j = _uint(data, j, 2)
            refs = [_uint(data, j + k * id_size, id_size)[0] for k in range(count)]
            _need(j + count * id_size <= e, f"iref {kind.decode()} entry of item {src} is cut off")
            if kind == b"dimg":
                dimg.setdefault(src, []).extend(refs)

    idat = _child(data, meta, b"idat", "meta", required=False)
    extents: dict[int, list[tuple[int, int]]] = {}
    _, ls, le = _child(data, meta, b"iloc", "meta")
    version = data[ls]
    _need(version <= 2, f"iloc version {version} is unknown")
    j = ls + 4
    offset_size, length_size = data[j] >> 4, data[j] & 15
    base_size, index_size = data[j + 1] >> 4, (data[j + 1] & 15) if version else 0
    for s in (offset_size, length_size, base_size, index_size):
        _need(s in (0, 4, 8), f"iloc field size {s} is not 0, 4 or 8")
    count, j = _uint(data, j + 2, 2 if version < 2 else 4)
    for _ in range(count):
        item, j = _uint(data, j, 2 if version < 2 else 4)
        method = 0
        if version:
            method, j = _uint(data, j, 2)
            method &= 15
        j += 2  # data_reference_index
        base, j = _uint(data, j, base_size)
        n_ext, j = _uint(data, j, 2)
        spans = []
        for _ in range(n_ext):
            j += index_size
            off, j = _uint(data, j, offset_size)
            length, j = _uint(data, j, length_size)
            if method == 0:
                begin = base + off
                length = length or len(data) - begin
                _need(begin + length <= len(data), f"item {item} extent [{begin}, +{length}) lies past the file")
            elif method == 1:
                _need(idat is not None, f"item {item} is stored in idat but meta has no idat box")
                begin = idat[1] + base + off
                length = length or idat[2] - begin
                _need(begin + length <= idat[2], f"item {item} extent lies past the idat box")
            else:
                raise _Malformed(f"item {item} uses iloc construction method {method} (item offsets)")
            spans.append((begin, length))
        _need(j <= le, "iloc box is cut off")
        extents[item] = spans

    coded, todo, seen = [], [primary], set()
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        kind = types.get(item)
        _need(kind is not None, f"item {item} has no infe entry")
        if kind in (b"grid", b"iden", b"iovl"):
            _need(item in dimg, f"derived item {item} ({kind.decode()}) has no dimg references")
            todo.extend(dimg[item])
        else:
            _need(kind in coded_types, f"image item {item} has type {kind!r}, expected one of {coded_types}")
            _need(item in extents and extents[item], f"coded item {item} has no iloc extents")
            coded.append(item)
    mdats = [(s, e) for kind, s, e in top if kind == b"mdat"]
    if idat:
        mdats.append(idat[1:])
    total = 0
    for item in coded:
        for begin, length in extents[item]:
            _need(any(s <= begin and begin + length <= e for s, e in mdats),
                  f"item {item} extent [{begin}, +{length}) is not inside an mdat or idat box")
            total += length
    return total


# ------------------------------------------------------------------------------------------ JPEG 2000

def _j2k_codestream(data: bytes, start: int, end: int) -> int:
    _need(data[start:start + 4] == b"\xff\x4f\xff\x51", "codestream does not start with SOC, SIZ")
    i = start + 2
    payload, tile_parts = 0, 0
    while True:  # main header: marker segments up to the first SOT
        _need(i + 4 <= end, "main header runs past the codestream")
        _need(data[i] == 0xFF, f"expected a marker at offset {i}")
        marker = data[i + 1]
        if marker == 0x90:
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        _need(length >= 2, f"marker FF {marker:02X} at offset {i} has length {length}")
        i += 2 + length
    while True:
        _need(i + 2 <= end, "codestream ends without EOC (FF D9)")
        if data[i:i + 2] == b"\xff\xd9":
            break
        _need(data[i:i + 2] == b"\xff\x90", f"expected SOT or EOC at offset {i}")
        _need(i + 12 <= end, f"SOT at offset {i} is cut off")
        lsot, psot = int.from_bytes(data[i + 2:i + 4], "big"), int.from_bytes(data[i + 6:i + 10], "big")
        _need(lsot == 10, f"SOT at offset {i} has length {lsot}, not 10")
        if psot == 0:  # last tile-part: runs up to EOC
            _need(data[end - 2:end] == b"\xff\xd9", "Psot = 0 but the codestream does not end with EOC")
            part_end = end - 2
        else:
            part_end = i + psot
        _need(part_end <= end, f"tile-part at offset {i} (Psot {psot}) runs past the codestream")
        j = i + 12
        while True:  # tile-part header up to SOD
            _need(j + 2 <= part_end and data[j] == 0xFF, f"tile-part header at offset {i} has no SOD")
            if data[j + 1] == 0x93:
                break
            _need(j + 4 <= part_end, f"tile-part header at offset {i} is cut off")
            j += 2 + int.from_bytes(data[j + 2:j + 4], "big")
        payload += part_end - (j + 2)
        tile_parts += 1
        i = part_end
    _need(tile_parts > 0, "no tile-part (SOT) in the codestream")
    return payload


def _jpeg2000(data: bytes) -> int:
    if data[:4] == b"\xff\x4f\xff\x51":
        return _j2k_codestream(data, 0, len(data))
    _need(data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n", "neither a JP2 signature box nor a J2K codestream")
    _, s, e = _child(data, _boxes(data, 0, len(data)), b"jp2c", "the JP2 file")
    return _j2k_codestream(data, s, e)


# ------------------------------------------------------------------------------------------- JPEG XL

class _Bits:
    """LSB-first bit reader over a JPEG XL codestream."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos * 8  # pos in bits

    def u(self, n: int) -> int:
        value = 0
        for k in range(n):
            byte = self.pos >> 3
            _need(byte < len(self.data), "codestream headers run past the end")
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << k
            self.pos += 1
        return value

    def bool(self) -> bool:
        return bool(self.u(1))

    def u32(self, *dist: tuple[int, int]) -> int:
        """U32 with four distributions, each (bits, offset); bits 0 means the constant offset."""
        bits, offset = dist[self.u(2)]
        return self.u(bits) + offset

    def u64(self) -> int:
        sel = self.u(2)
        if sel == 0:
            return 0
        if sel == 1:
            return 1 + self.u(4)
        if sel == 2:
            return 17 + self.u(8)
        value, shift = self.u(12), 12
        while self.bool():
            if shift == 60:
                return value | self.u(4) << 60
            value |= self.u(8) << shift
            shift += 8
        return value

    def enum(self) -> int:
        return self.u32((0, 0), (0, 1), (4, 2), (6, 18))

    def f16(self, count: int = 1) -> None:
        self.u(16 * count)

    def pad_to_byte(self) -> None:
        self.pos = (self.pos + 7) & ~7

    def extensions(self) -> None:
        mask = self.u64()
        skip = sum(self.u64() for k in range(64) if mask >> k & 1)
        self.pos += skip

    def name(self) -> None:
        self.u(8 * self.u32((0, 0), (4, 0), (5, 16), (10, 48)))


def _jxl_size(r: _Bits, dist: tuple, div8_dist: Callable[[], int] | None = None) -> tuple[int, int]:
    small = r.bool()
    ysize = div8_dist() * 8 if small and div8_dist else ((1 + r.u(5)) * 8 if small else r.u32(*dist))
    ratio = r.u(3)
    if ratio == 0:
        xsize = div8_dist() * 8 if small and div8_dist else ((1 + r.u(5)) * 8 if small else r.u32(*dist))
    else:
        num, den = ((1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1))[ratio - 1]
        xsize = ysize * num // den
    return xsize, ysize


_SIZE = ((9, 1), (13, 1), (18, 1), (30, 1))


def _jxl_bit_depth(r: _Bits) -> None:
    if r.bool():  # float samples
        r.u32((0, 32), (0, 16), (0, 24), (6, 1))
        r.u(4)
    else:
        r.u32((0, 8), (0, 10), (0, 12), (6, 1))


def _jxl_customxy(r: _Bits) -> None:
    for _ in range(2):
        r.u32((19, 0), (19, 524288), (20, 1048576), (21, 2097152))


def _jxl_image_headers(r: _Bits) -> dict:
    xsize, ysize = _jxl_size(r, _SIZE)
    meta = {"xsize": xsize, "ysize": ysize, "xyb": True, "extra": 0, "animation": False, "timecodes": False}
    if not r.bool():  # ImageMetadata.all_default
        extra_fields = r.bool()
        if extra_fields:
            r.u(3)  # orientation
            if r.bool():  # intrinsic size
                _jxl_size(r, _SIZE)
            if r.bool():
                raise _Malformed("has a preview frame, which this parser does not split")
            if r.bool():  # AnimationHeader
                meta["animation"] = True
                r.u32((0, 100), (0, 1000), (10, 1), (30, 1))
                r.u32((0, 1), (8, 1), (10, 1), (30, 1))
                r.u32((0, 0), (3, 0), (16, 0), (32, 0))
                meta["timecodes"] = r.bool()
        _jxl_bit_depth(r)
        r.bool()  # modular_16_bit_buffer_sufficient
        meta["extra"] = r.u32((0, 0), (0, 1), (4, 2), (12, 1))
        for _ in range(meta["extra"]):
            if r.bool():  # ExtraChannelInfo.all_default (alpha)
                continue
            kind = r.enum()
            _jxl_bit_depth(r)
            r.u32((0, 0), (0, 3), (0, 4), (3, 1))  # dim_shift
            r.name()
            if kind == 0:
                r.bool()  # alpha_associated
            elif kind == 2:
                r.f16(4)  # spot colour
            elif kind == 5:
                r.u32((0, 1), (2, 0), (4, 3), (8, 19))  # cfa_channel
        meta["xyb"] = r.bool()
        if not r.bool():  # ColourEncoding.all_default
            if r.bool():
                raise _Malformed("embeds an ICC profile, which this parser does not split")
            space = r.enum()
            if space != 2:  # white point unless XYB
                if r.enum() == 2:
                    _jxl_customxy(r)
            if space not in (1, 2):  # primaries unless grey or XYB
                if r.enum() == 2:
                    for _ in range(3):
                        _jxl_customxy(r)
            if space != 2:  # transfer function
                if r.bool():
                    r.u(24)
                else:
                    r.enum()
            r.enum()  # rendering intent
        if extra_fields and not r.bool():  # ToneMapping.all_default
            r.f16(3)
            r.bool()
        r.extensions()
    if not r.bool():  # CustomTransformData.all_default
        if meta["xyb"] and not r.bool():  # OpsinInverseMatrix.all_default
            r.f16(16)
        mask = r.u(3)
        r.f16((15 if mask & 1 else 0) + (55 if mask & 2 else 0) + (210 if mask & 4 else 0))
    r.pad_to_byte()
    return meta


def _jxl_frame(r: _Bits, meta: dict) -> tuple[int, bool]:
    """Parse one FrameHeader and TOC; returns (sum of section sizes, is_last)."""
    frame_type, modular, is_last = 0, False, True
    upsampling, group_shift, passes, lf_level = 1, 1, 1, 0
    xsize, ysize = meta["xsize"], meta["ysize"]
    extra = meta["extra"]
    if not r.bool():  # FrameHeader.all_default
        frame_type, modular, flags = r.u(2), r.bool(), r.u64()
        use_lf_frame = bool(flags & 32)
        ycbcr = False if meta["xyb"] else r.bool()
        if ycbcr and not use_lf_frame:
            r.u(6)  # chroma subsampling
        if not use_lf_frame:
            upsampling = r.u32((0, 1), (0, 2), (0, 4), (0, 8))
            for _ in range(extra):
                r.u32((0, 1), (0, 2), (0, 4), (0, 8))
        if modular:
            group_shift = r.u(2)
        if not modular and meta["xyb"]:
            r.u(6)  # x_qm_scale, b_qm_scale
        if frame_type != 2:  # Passes, unless ReferenceOnly
            passes = r.u32((0, 1), (0, 2), (0, 3), (3, 4))
            if passes != 1:
                num_ds = r.u32((0, 0), (0, 1), (0, 2), (1, 3))
                r.u(2 * (passes - 1))  # shift per pass but the last
                for _ in range(num_ds):
                    r.u32((0, 1), (0, 2), (0, 4), (0, 8))
                for _ in range(num_ds):
                    r.u32((0, 0), (0, 1), (0, 2), (3, 0))
        if frame_type == 1:
            lf_level = 1 + r.u(2)
        x0 = y0 = 0
        custom = False
        if frame_type != 1:
            custom = r.bool()
            if custom:
                enc = ((8, 0), (11, 256), (14, 2304), (30, 18688))
                if frame_type in (0, 3):
                    x0, y0 = r.u32(*enc), r.u32(*enc)
                    x0, y0 = (x0 >> 1) ^ -(x0 & 1), (y0 >> 1) ^ -(y0 & 1)
                xsize, ysize = r.u32(*enc), r.u32(*enc)
        full = not custom or (x0 == 0 and y0 == 0 and xsize == meta["xsize"] and ysize == meta["ysize"])
        mode, duration = 0, 0
        if frame_type in (0, 3):
            for k in range(1 + extra):  # BlendingInfo for the colour channels, then each extra channel
                m = r.u32((0, 0), (0, 1), (0, 2), (2, 3))
                mode = m if k == 0 else mode
                if extra > 0 and m in (2, 3):
                    r.u32((0, 0), (0, 1), (0, 2), (3, 3))  # alpha_channel
                    r.bool()  # clamp
                if m != 0 or not full:
                    r.u(2)  # source
            if meta["animation"]:
                duration = r.u32((0, 0), (0, 1), (8, 0), (32, 0))
                if meta["timecodes"]:
                    r.u(32)
            is_last = r.bool()
        else:
            is_last = False
        save_as_ref = 0
        if frame_type != 1 and not is_last:
            save_as_ref = r.u(2)
        if frame_type == 2 or (full and frame_type in (0, 3) and mode == 0
                               and (duration == 0 or save_as_ref != 0) and not is_last):
            r.bool()  # save_before_color_transform
        r.name()
        if not r.bool():  # RestorationFilter.all_default
            if r.bool() and r.bool():  # gab, gab_custom
                r.f16(6)
            if r.u(2):  # epf_iters
                if not modular and r.bool():
                    r.f16(8)
                if r.bool():
                    r.f16(5)
                if r.bool():
                    r.f16(3 if modular else 4)
                if modular:
                    r.f16()
            r.extensions()
        r.extensions()
    xsize = -(-xsize // upsampling) if frame_type != 1 else xsize
    ysize = -(-ysize // upsampling) if frame_type != 1 else ysize
    if lf_level:
        xsize, ysize = -(-xsize // (1 << 3 * lf_level)), -(-ysize // (1 << 3 * lf_level))
    group = 128 << group_shift
    groups = -(-xsize // group) * -(-ysize // group)
    lf_groups = -(-xsize // (8 * group)) * -(-ysize // (8 * group))
    entries = 1 if groups == 1 and passes == 1 else 2 + lf_groups + groups * passes
    if r.bool():
        raise _Malformed("has a permuted TOC, which this parser does not split")
    r.pad_to_byte()
    total = sum(r.u32((10, 0), (14, 1024), (22, 17408), (30, 4211712)) for _ in range(entries))
    r.pad_to_byte()
    return total, is_last


def _jxl_codestream(cs: bytes) -> int:
    _need(cs[:2] == b"\xff\x0a", "codestream does not start with FF 0A")
    r = _Bits(cs, 2)
    meta = _jxl_image_headers(r)
    payload = 0
    for _ in range(1 << 16):
        sections, is_last = _jxl_frame(r, meta)
        payload += sections
        end = (r.pos >> 3) + sections
        _need(end <= len(cs), f"frame sections ({sections} bytes) run past the {len(cs)}-byte codestream")
        r.pos = end * 8
        if is_last:
            break
    _need(r.pos >> 3 == len(cs), f"the last frame ends at byte {r.pos >> 3}, "
                                 f"not at the end of the {len(cs)}-byte codestream")
    return payload


def _jpegxl(data: bytes) -> int:
    if data[:2] == b"\xff\x0a":
        return _jxl_codestream(data)
    _need(data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n", "neither a JXL codestream (FF 0A) nor a JXL container")
    parts = []
    for kind, s, e in _boxes(data, 0, len(data)):
        if kind == b"jxlc":
            parts.append((-1, data[s:e]))
        elif kind == b"jxlp":
            _need(e - s >= 4, "jxlp box lacks its index")
            parts.append((int.from_bytes(data[s:s + 4], "big") & 0x7FFFFFFF, data[s + 4:e]))
    _need(parts, "container has no jxlc or jxlp box")
    _need(len(parts) == 1 or all(k >= 0 for k, _ in parts), "container mixes jxlc and jxlp boxes")
    return _jxl_codestream(b"".join(p for _, p in sorted(parts, key=lambda kp: kp[0])))


def _blockdct(data: bytes) -> int:
    from tokencodec.codecs.blockdct import HEAD, MAGIC

    if data[:4] != MAGIC or len(data) < HEAD.size:
        raise _Malformed("not a blockdct file")
    *_, scale_words, coef_words = HEAD.unpack_from(data)
    if HEAD.size + 4 * (scale_words + coef_words) != len(data):
        raise _Malformed("section lengths do not add up to the file")
    return 4 * (scale_words + coef_words)


_PARSERS: dict[str, Callable[[bytes], int]] = {
    "jpeg": _jpeg,
    "webp": _webp,
    "avif": lambda d: _heif(d, (b"avif", b"avis"), (b"av01",)),
    "heic": lambda d: _heif(d, (b"heic", b"heix", b"mif1", b"heim", b"heis"), (b"hvc1", b"hev1")),
    "jpeg2000": _jpeg2000,
    "jpegxl": _jpegxl,
    "blockdct": _blockdct,
    "blockdct-semantic": _blockdct,
}
