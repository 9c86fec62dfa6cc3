"""A block-transform codec with a per-block quantiser scale: the second route for semantic bit allocation.

No standard codec here lets a caller set the quantiser of each block (JPEG's tables are per image,
libjxl's and OpenJPEG's adaptive quantisation is internal), so this one is written here, as small as
a baseline can be and still be a real codec with a real bitstream:

* YCbCr (JPEG's full-range BT.601), **4:4:4** (no chroma subsampling: the small coloured objects of
  the VQA scenes are what 4:2:0 codecs lose), 8×8 orthonormal DCT-II (scipy);
* quantiser step = base(quality) × JPEG's luminance / chrominance table / 16 × 2^(s_b / 2) with a
  scale index s_b ∈ 0..7 per block (one value for Y, Cb and Cr);
* entropy coding with constriction's range coder: the scale indices under the image's own histogram
  (8 counts in the header), DC as DPCM in raster order, every coefficient under a quantised Laplace
  whose scale is per (channel, zigzag band, block scale index) context, sent as one byte each.

``blockdct`` sets every s_b = 0 (uniform allocation); ``blockdct-semantic`` gives the blocks below
the mean CLS attention of the diagnostic MLLM's tower (the importance map ``jpegxl-semantic``
uses) the index ``coarse`` (default 6: an 8× coarser step). Its decoder is the same: the scales are
in the file. The quantised-Laplace tables are built in floating point by constriction on both
sides (deterministic on one machine; the token codec's integer tables are the portable design).

Any size (edge-padded to multiples of 8, cropped back). File: magic "TBDC" | version u8 | quality u8 |
height u16 | width u16 | 8 scale counts u16 |
48 context scale codes u8 | scale-index words u32 | coefficient words u32 | the two sections (u32 words).
"""

from __future__ import annotations

import struct
from typing import ClassVar

import numpy as np

from tokencodec.codecs.base import Codec, CodecError, register_codec

MAGIC, VERSION = b"TBDC", 1
HEAD = struct.Struct("<4sBBHH8H48BII")
BLOCK, SCALES, BANDS = 8, 8, 8
MAX_SYMBOL = 4095                       # |quantised coefficient| (DC residuals included) is clipped to this
LUMA = np.array([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                 [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                 [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                 [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], float)
CHROMA = np.full((8, 8), 99.0)
CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
# zigzag band of each coefficient: 0 = DC, then AC by (u + v) in 7 groups
BAND = np.minimum((np.add.outer(np.arange(8), np.arange(8)) + 1) // 2, BANDS - 1)
BAND[0, 0] = 0


def base_step(quality: int) -> float:
    """JPEG's quality → table scaling (libjpeg's formula), as a step multiplier."""
    s = 5000 / quality if quality < 50 else 200 - 2 * quality
    return max(s, 1.0) / 100


def to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    return rgb.astype(np.float64) @ m.T - np.array([128.0, 0.0, 0.0])


def to_rgb(ycc: np.ndarray) -> np.ndarray:
    m = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])
    return np.clip(np.rint((ycc + np.array([128.0, 0.0, 0.0])) @ m.T), 0, 255).astype(np.uint8)


def blocks_of(plane: np.ndarray) -> np.ndarray:
    """[H, W] → [B, 8, 8] in raster order (H, W multiples of 8)."""
    h, w = plane.shape
    return plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)


def plane_of(blocks: np.ndarray, h: int, w: int) -> np.ndarray:
    return blocks.reshape(h // 8, w // 8, 8, 8).transpose(0, 2, 1, 3).reshape(h, w)


def steps(quality: int, scale_index: np.ndarray) -> np.ndarray:
    """[3, B, 8, 8] quantiser steps."""
    tables = np.stack([LUMA, CHROMA, CHROMA]) * base_step(quality)
    return tables[:, None] * (2.0 ** (scale_index / 2))[None, :, None, None]


CONTEXTS = 3 * BANDS * 2


def contexts(scale_index: np.ndarray) -> np.ndarray:
    """[3, B, 8, 8] context of every coefficient: (channel, zigzag band, fine or coarse block), one of
    CONTEXTS (the scale index enters as fine (0) or not, so the Laplace scales fit 48 header bytes)."""
    c = np.arange(3)[:, None, None, None]
    return ((c * BANDS + BAND[None, None]) * 2 + np.minimum(scale_index, 1)[None, :, None, None])


def _scale_code(b: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(8 * np.log2(np.maximum(b, 1e-3)) + 64), 0, 255).astype(np.uint8)


def _scale_of(code: np.ndarray) -> np.ndarray:
    return 2.0 ** ((code.astype(np.float64) - 64) / 8)


def encode_blocks(image: np.ndarray, quality: int, scale_index: np.ndarray) -> bytes:
    """The file of an H×W×3 image (edge-padded to multiples of 8) with one scale index per 8×8 block."""
    import constriction
    from scipy.fft import dctn

    h0, w0 = image.shape[:2]
    image = np.pad(image, ((0, -h0 % 8), (0, -w0 % 8), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    if len(scale_index) != (h // 8) * (w // 8):
        raise ValueError(f"{len(scale_index)} scale indices for {(h // 8) * (w // 8)} blocks")
    ycc = to_ycbcr(image)
    coef = np.stack([dctn(blocks_of(ycc[..., c]), axes=(1, 2), norm="ortho") for c in range(3)])
    q = np.rint(coef / steps(quality, scale_index)).astype(np.int64)
    q[:, :, 0, 0] = np.diff(q[:, :, 0, 0], axis=1, prepend=0)          # DC as DPCM along the raster
    q = np.clip(q, -MAX_SYMBOL, MAX_SYMBOL)
    slot = contexts(scale_index)
    codes = np.zeros(CONTEXTS, np.uint8)        # per context the Laplace MLE scale (mean |x|), one byte each
    for k in range(CONTEXTS):
        sel = q[slot == k]
        codes[k] = _scale_code(np.array(np.abs(sel).mean() if sel.size else 1.0))
    counts = np.bincount(scale_index, minlength=SCALES).astype(np.uint16)
    senc = constriction.stream.queue.RangeEncoder()
    senc.encode(scale_index.astype(np.int32), constriction.stream.model.Categorical(
        counts.astype(np.float64) / counts.sum(), perfect=False))
    cenc = constriction.stream.queue.RangeEncoder()
    flat, scales = q.reshape(-1).astype(np.int32), _scale_of(codes)[slot.reshape(-1)]
    cenc.encode(flat, constriction.stream.model.QuantizedLaplace(-MAX_SYMBOL, MAX_SYMBOL), np.zeros(len(flat)),
                scales)
    sw, cw = (np.asarray(e.get_compressed(), dtype="<u4") for e in (senc, cenc))
    return HEAD.pack(MAGIC, VERSION, quality, h0, w0, *counts, *codes, len(sw), len(cw)) + sw.tobytes() + cw.tobytes()


def decode_blocks(data: bytes) -> np.ndarray:
    import constriction
    from scipy.fft import idctn

    if len(data) < HEAD.size:
        raise CodecError(f"truncated: {len(data)} bytes, the header alone has {HEAD.size}")
    fields = HEAD.unpack_from(data)
    magic, version, quality, h0, w0 = fields[:5]
    h, w = h0 + -h0 % 8, w0 + -w0 % 8
    counts, codes = np.array(fields[5:13]), np.array(fields[13:61], np.uint8)
    nsw, ncw = fields[61:63]
    if magic != MAGIC or version != VERSION:
        raise CodecError(f"not a blockdct version-{VERSION} file (magic {magic!r}, version {version})")
    if not h0 or not w0 or not 1 <= quality <= 100:
        raise CodecError(f"header fields out of range: {w0}×{h0}, quality {quality}")
    n = (h // 8) * (w // 8)
    if counts.sum() != n or len(data) != HEAD.size + 4 * (nsw + ncw):
        raise CodecError(f"inconsistent header: {counts.sum()} block scales for {n} blocks, or "
                         f"{len(data)} bytes for {HEAD.size + 4 * (nsw + ncw)}")
    words = np.frombuffer(data, "<u4", nsw + ncw, HEAD.size).astype(np.uint32)
    sdec = constriction.stream.queue.RangeDecoder(words[:nsw])
    scale_index = np.asarray(sdec.decode(constriction.stream.model.Categorical(
        counts.astype(np.float64) / counts.sum(), perfect=False), n), dtype=np.int64)
    slot = contexts(scale_index)
    cdec = constriction.stream.queue.RangeDecoder(words[nsw:])
    flat = np.asarray(cdec.decode(constriction.stream.model.QuantizedLaplace(-MAX_SYMBOL, MAX_SYMBOL),
                                  np.zeros(slot.size), _scale_of(codes)[slot.reshape(-1)]), dtype=np.int64)
    q = flat.reshape(3, n, 8, 8)
    q[:, :, 0, 0] = np.cumsum(q[:, :, 0, 0], axis=1)
    coef = q * steps(quality, scale_index)
    planes = [plane_of(idctn(coef[c], axes=(1, 2), norm="ortho"), h, w) for c in range(3)]
    return to_rgb(np.stack(planes, -1))[:h0, :w0]


class BlockDCT(Codec):
    quality_range = (1, 100)
    quality_meaning = "JPEG-style quality 1..100 (libjpeg's table scaling); higher is finer"
    extension = ".tbdc"

    def settings(self):
        return {"transform": "8×8 DCT-II, YCbCr 4:4:4", "tables": "JPEG Annex K luminance / chrominance",
                "block_scales": "2^(s/2), s in 0..7 per block", "entropy": "constriction range coder: "
                "categorical scale indices, quantised Laplace coefficients per (channel, band, fine/coarse)"}

    @staticmethod
    def versions():
        from importlib.metadata import version

        return {"constriction": version("constriction"), "scipy": version("scipy")}

    default_sweep = False     # a baseline for semantic allocation, not one of the benchmark's standard codecs

    def scale_indices(self, image: np.ndarray) -> np.ndarray:
        return np.zeros(-(-image.shape[0] // 8) * -(-image.shape[1] // 8), dtype=np.int64)

    def _encode(self, image, quality):
        return encode_blocks(image, quality, self.scale_indices(image))

    def _decode(self, data):
        return decode_blocks(bytes(data))


@register_codec("blockdct")
class BlockDCTUniform(BlockDCT):
    """Every block at the same quantiser scale (the baseline of the semantic variant)."""


@register_codec("blockdct-semantic")
class BlockDCTSemantic(BlockDCT):
    """Blocks below the diagnostic tower's mean CLS attention at an 8× coarser step (scale index 6)."""

    machine_guided = True
    coarse: ClassVar[int] = 6

    def settings(self):
        from tokencodec.codecs.semantic import _weights_id

        return {**super().settings(), "importance": "diagnostic-mllm tower, last layer, CLS attention",
                "rule": f"blocks below the mean attention at scale index {self.coarse}", "weights": _weights_id()}

    def scale_indices(self, image):
        from tokencodec.codecs.semantic import SIZE, important_patches

        if image.shape != (SIZE, SIZE, 3):
            raise CodecError(f"{self.name}: the importance map is the diagnostic MLLM's, whose input is "
                             f"{SIZE}×{SIZE}; got an image of shape {image.shape}")
        return np.where(important_patches(image).reshape(-1), 0, self.coarse).astype(np.int64)


__all__ = ["BlockDCT", "BlockDCTSemantic", "BlockDCTUniform", "decode_blocks", "encode_blocks"]
