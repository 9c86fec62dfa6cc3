"""The token bitstream: a profile (quantiser + entropy model, fitted once) and a versioned container.

A **profile** (:class:`TokenCodecProfile`) is what encoder and decoder share, like a codec's
tables: the model and layer the tokens come from, the quantiser and the entropy model, saved as
one safetensors file. Its id (the first 8 bytes of a SHA-256 over its canonical bytes) goes into
every file, so a file decoded with another profile is refused, never mis-decoded. The tables are
not repeated per file; the rate counts every byte of the file.

**Container, format version 1** (little-endian)::

    magic "TKCB" | version u8 | quantiser u8 (0 scalar, 1 vector) | profile id 8 B
    | grid h u16 | grid w u16 | frames u16 | tokens K u32 | position words u32 | payload words u32
    | positions (range-coder words, u32 each) | payload (u32 words) | CRC-32 of everything before, u32

Header 32 bytes + CRC 4 (``header_bits`` = 288); ``position_bits`` and ``payload_bits`` are the two
sections. The kept positions are a bitmap over the T·h·w grid (:func:`~tokencodec.entropy.models.encode_mask`);
tokens are stored in raster order, after the profile's ``prefix`` tokens (tokens outside the grid that
every file carries, e.g. a ViT classifier's CLS: the profile fixes their count, so the header does not).
The decoder checks, in order: length, magic, version, the
section lengths against the file length (truncation), the checksum, the profile id, then every
header field against its allowed range *before* allocating anything; each failure is a
:class:`TokenBitstreamError` naming the file (when given) and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tokencodec.entropy.models import MAX_ALPHABET, AdaptiveCategorical, FactorizedTables, decode_mask, encode_mask
from tokencodec.entropy.quantizers import ScalarQuantizer, VectorQuantizer

MAGIC = b"TKCB"
VERSION = 1
HEADER = struct.Struct("<4sBB8sHHHIII")         # 32 bytes
CRC = struct.Struct("<I")
MAX_GRID_TOKENS = 1 << 16                       # T·h·w a decoder accepts (32 frames of 24×24 fit)
MAX_DIM = 1 << 14
QUANTIZERS = {0: "scalar", 1: "vector"}


class TokenBitstreamError(ValueError):
    """A file that is not a valid token bitstream for this profile; the message says why."""


@dataclass(frozen=True)
class TokenCodecProfile:
    """Quantiser + entropy model for the tokens of one model at one layer."""

    model: str                      # e.g. "diagnostic-mllm-<weights id>"
    layer: int                      # the layer the tokens come from (the model's own convention)
    quantizer: ScalarQuantizer | VectorQuantizer
    entropy: FactorizedTables | AdaptiveCategorical
    prefix: int = 0                 # tokens outside the grid sent first in every file (a CLS)

    def __post_init__(self) -> None:
        q, e = self.quantizer, self.entropy
        if isinstance(q, ScalarQuantizer) != isinstance(e, FactorizedTables):
            raise ValueError("a scalar quantiser takes FactorizedTables; a vector quantiser an AdaptiveCategorical")
        if isinstance(q, ScalarQuantizer) and e.dim != q.dim:
            raise ValueError(f"entropy tables for {e.dim} channels, quantiser for {q.dim}")
        if isinstance(q, VectorQuantizer) and len(e.prior) != q.size:
            raise ValueError(f"index model over {len(e.prior)} symbols, codebook of {q.size}")
        if not 0 <= self.prefix <= 16:
            raise ValueError(f"prefix={self.prefix}: 0 to 16 tokens outside the grid")

    @property
    def dim(self) -> int:
        return self.quantizer.dim

    def arrays(self) -> dict[str, np.ndarray]:
        q, e = self.quantizer, self.entropy
        if isinstance(q, ScalarQuantizer):
            out = {"mean": q.mean, "step": np.array([q.step], dtype=np.float64), "lo": e.lo,
                   "sizes": np.array([len(c) for c in e.counts], dtype=np.int32),
                   "counts": np.concatenate(e.counts).astype(np.uint32)}
        else:
            out = {"codebook": q.codebook, "prior": e.prior}
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def meta(self) -> dict[str, str]:
        meta = {"format": "tokencodec-profile-1", "model": self.model, "layer": str(self.layer),
                "quantizer": self.quantizer.kind}
        return {**meta, "prefix": str(self.prefix)} if self.prefix else meta   # ids of prefix-free profiles unchanged

    @cached_property
    def id(self) -> bytes:
        """8 bytes identifying the profile's exact tables (what a file names)."""
        h = hashlib.sha256(json.dumps(self.meta(), sort_keys=True).encode())
        for k, v in sorted(self.arrays().items()):
            h.update(k.encode() + str(v.dtype).encode() + repr(v.shape).encode() + v.tobytes())
        return h.digest()[:8]

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        save_file(self.arrays(), str(path), metadata=self.meta())

    @classmethod
    def load(cls, path: str | Path) -> TokenCodecProfile:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"token codec profile not found: {path}")
        with safe_open(str(path), framework="numpy") as f:
            meta, a = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if meta.get("format") != "tokencodec-profile-1":
            raise ValueError(f"{path}: not a tokencodec profile (format {meta.get('format')!r})")
        if meta["quantizer"] == "scalar":
            ends = np.cumsum(a["sizes"])[:-1]
            quantizer = ScalarQuantizer(a["mean"], float(a["step"][0]))
            entropy = FactorizedTables(a["lo"], tuple(np.split(a["counts"], ends)))
        else:
            quantizer, entropy = VectorQuantizer(a["codebook"]), AdaptiveCategorical(a["prior"])
        return cls(meta["model"], int(meta["layer"]), quantizer, entropy, int(meta.get("prefix", 0)))


@dataclass(frozen=True)
class DecodedTokens:
    features: np.ndarray            # [K, D] float32, raster order
    positions: np.ndarray           # [K] int64 raster indices into the T·h·w grid
    grid: tuple[int, int]
    frames: int
    profile: bytes
    prefix: np.ndarray | None = None    # [P, D] the profile's tokens outside the grid (None when P = 0)


@dataclass(frozen=True)
class EncodedTokens:
    data: bytes
    header_bits: int
    position_bits: int
    payload_bits: int
    ideal_position_bits: float
    ideal_payload_bits: float
    clipped: int                    # scalar symbols clipped into their tables (overload)

    @property
    def total_bits(self) -> int:
        return 8 * len(self.data)

    def report(self) -> dict:
        return {"bytes": len(self.data), "total_bits": self.total_bits, "header_bits": self.header_bits,
                "position_bits": self.position_bits, "payload_bits": self.payload_bits,
                "ideal_position_bits": self.ideal_position_bits, "ideal_bits": self.ideal_payload_bits,
                "clipped": self.clipped}


def _words(encoder) -> np.ndarray:
    return np.asarray(encoder.get_compressed(), dtype="<u4")


def encode_tokens(features: np.ndarray, positions: np.ndarray, grid: tuple[int, int], frames: int,
                  profile: TokenCodecProfile, prefix: np.ndarray | None = None) -> EncodedTokens:
    """Quantise and entropy-code K tokens [K, D] at their raster positions in a T·h·w grid, after the
    profile's ``prefix`` tokens [P, D] (required when the profile has P > 0)."""
    import constriction

    x = np.asarray(features, dtype=np.float32)
    pos = np.asarray(positions, dtype=np.int64)
    h, w = int(grid[0]), int(grid[1])
    n0 = h * w * int(frames)
    if x.ndim != 2 or x.shape[1] != profile.dim or pos.shape != (x.shape[0],):
        raise ValueError(f"tokens {x.shape} at positions {pos.shape}: expected [K, {profile.dim}] and [K]")
    if not (1 <= n0 <= MAX_GRID_TOKENS) or max(h, w, frames) > 0xFFFF:
        raise ValueError(f"grid {grid} × {frames} frames: 1 to {MAX_GRID_TOKENS} grid cells, sides ≤ 65535")
    if len(pos) and (pos.min() < 0 or pos.max() >= n0 or len(np.unique(pos)) != len(pos)):
        raise ValueError(f"positions must be distinct raster indices in [0, {n0}) (a selection, not merged tokens)")
    order = np.argsort(pos, kind="stable")
    x, pos = x[order], pos[order]
    if profile.prefix or prefix is not None:
        pre = np.asarray(prefix if prefix is not None else (), dtype=np.float32)
        if pre.shape != (profile.prefix, profile.dim):
            raise ValueError(f"prefix tokens {pre.shape}: the profile sends [{profile.prefix}, {profile.dim}]")
        x = np.concatenate([pre, x])
    mask = np.zeros(n0, dtype=bool)
    mask[pos] = True
    penc = constriction.stream.queue.RangeEncoder()
    ideal_pos = encode_mask(penc, mask)
    symbols = profile.quantizer.quantize(x) if len(x) else np.zeros((0, profile.dim), dtype=np.int32)
    clipped = 0
    if isinstance(profile.entropy, FactorizedTables):
        symbols, clipped = profile.entropy.clip(symbols)
    yenc = constriction.stream.queue.RangeEncoder()
    ideal_payload = profile.entropy.encode(yenc, symbols) if len(x) else 0.0
    pw, yw = _words(penc), _words(yenc)
    kind = 0 if isinstance(profile.quantizer, ScalarQuantizer) else 1
    head = HEADER.pack(MAGIC, VERSION, kind, profile.id, h, w, int(frames), len(pos), len(pw), len(yw))
    body = head + pw.tobytes() + yw.tobytes()
    data = body + CRC.pack(zlib.crc32(body))
    return EncodedTokens(data, 8 * (HEADER.size + CRC.size), 32 * len(pw), 32 * len(yw), ideal_pos, ideal_payload,
                         clipped)


def read_header(data: bytes, name: str = "<bytes>") -> dict:
    """The checked header fields of a bitstream (raises TokenBitstreamError)."""
    def fail(why: str):
        raise TokenBitstreamError(f"{name}: {why}")

    if not isinstance(data, bytes | bytearray | memoryview):
        fail(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER.size + CRC.size:
        fail(f"truncated: {len(data)} bytes, a token bitstream has at least {HEADER.size + CRC.size}")
    magic, version, kind, pid, h, w, t, k, pw, yw = HEADER.unpack_from(data)
    if magic != MAGIC:
        fail(f"not a token bitstream (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        fail(f"format version {version}; this decoder reads version {VERSION}")
    expected = HEADER.size + 4 * (pw + yw) + CRC.size
    if len(data) < expected:
        fail(f"truncated: the header announces {expected} bytes, the file has {len(data)}")
    if len(data) > expected:
        fail(f"{len(data) - expected} unexpected bytes after the end of the bitstream")
    if zlib.crc32(data[:-CRC.size]) != CRC.unpack_from(data, len(data) - CRC.size)[0]:
        fail("corrupt: checksum mismatch")
    if kind not in QUANTIZERS:
        fail(f"unknown quantiser code {kind}; known: {QUANTIZERS}")
    if min(h, w, t) < 1 or h * w * t > MAX_GRID_TOKENS:
        fail(f"grid {h}×{w} × {t} frames outside the allowed 1 to {MAX_GRID_TOKENS} cells")
    if k > h * w * t:
        fail(f"{k} tokens for a grid of {h * w * t} cells")
    return {"format_version": version, "quantizer": QUANTIZERS[kind], "profile": pid.hex(), "grid": [h, w],
            "frames": t, "tokens": k, "position_words": pw, "payload_words": yw,
            "header_bits": 8 * (HEADER.size + CRC.size), "position_bits": 32 * pw, "payload_bits": 32 * yw,
            "total_bits": 8 * len(data)}


def decode_tokens(data: bytes, profile: TokenCodecProfile, name: str = "<bytes>") -> DecodedTokens:
    """Decode a bitstream made with ``profile`` (raises TokenBitstreamError, never anything else)."""
    import constriction

    head = read_header(data, name)
    if bytes.fromhex(head["profile"]) != profile.id:
        raise TokenBitstreamError(f"{name}: made with profile {head['profile']}, this decoder has "
                                  f"{profile.id.hex()} (another model, layer or quantiser)")
    if head["quantizer"] != profile.quantizer.kind or profile.dim > MAX_DIM:
        raise TokenBitstreamError(f"{name}: quantiser {head['quantizer']} does not match the profile's")
    h, w = head["grid"]
    n0, k, p = h * w * head["frames"], head["tokens"], profile.prefix
    pw, yw = head["position_words"], head["payload_words"]
    if isinstance(profile.entropy, FactorizedTables) and 32 * yw + 64 < (k + p) * profile.entropy.min_bits_per_token():
        raise TokenBitstreamError(f"{name}: {k} + {p} tokens cannot fit in {32 * yw} payload bits (at least "
                                  f"{profile.entropy.min_bits_per_token():.1f} bits per token under this profile)")
    words = np.frombuffer(bytes(data), dtype="<u4", count=pw + yw, offset=HEADER.size)
    try:
        mask = decode_mask(constriction.stream.queue.RangeDecoder(words[:pw].astype(np.uint32)), n0, k)
        if int(mask.sum()) != k:
            raise TokenBitstreamError(f"{name}: the positions hold {int(mask.sum())} tokens, the header {k}")
        if k + p:
            ydec = constriction.stream.queue.RangeDecoder(words[pw:].astype(np.uint32))
            features = profile.quantizer.dequantize(profile.entropy.decode(ydec, k + p))
        else:
            features = np.zeros((0, profile.dim), dtype=np.float32)
    except TokenBitstreamError:
        raise
    except Exception as err:   # constriction reports an exhausted or inconsistent stream as a plain error
        raise TokenBitstreamError(f"{name}: the entropy-coded data does not decode ({err})") from None
    return DecodedTokens(features[p:], np.flatnonzero(mask), (h, w), head["frames"], bytes.fromhex(head["profile"]),
                         features[:p] if p else None)


__all__ = ["MAGIC", "MAX_ALPHABET", "VERSION", "DecodedTokens", "EncodedTokens", "TokenBitstreamError",
           "TokenCodecProfile", "decode_tokens", "encode_tokens", "read_header"]
