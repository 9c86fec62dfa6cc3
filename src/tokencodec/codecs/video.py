"""Video codecs with real bitstreams: H.264 (libx264), H.265 (libx265) and AV1 (SVT-AV1) through PyAV.

``encode(frames, crf)`` turns T×H×W×3 uint8 RGB frames into a Matroska file in memory; ``decode`` reads
it back into frames of the same T, H, W. The quality knob is the encoder's CRF, where — unlike the
image codecs' quality — a HIGHER value means a coarser quantizer, lower quality and a smaller file.

Colour: RGB is converted to 8-bit yuv420p with BT.601 limited-range coefficients (swscale) before
encoding, and back with the same coefficients after decoding, so the round trip is tagged and symmetric.

Odd sizes: 4:2:0 needs even width and height, so odd frames are padded by repeating the last row or
column; the original size and frame count are stored as Matroska tags and the decoder crops back.
A plain player shows the padded frames; the bitstream itself is standard.

Determinism: one thread everywhere and ``+bitexact`` muxing (no version strings or dates in the file),
so the same frames and settings give the same bytes on the same library versions.
"""

from __future__ import annotations

import functools
import io
import os
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from tokencodec.codecs.base import CodecError
from tokencodec.registry import Registry

FRAME_RATE = 30          # frames per second written into the container; kbps figures assume it
PIX_FMT = "yuv420p"
CONTAINER = "matroska"
MIN_SIZE = 16            # x265 refuses frames below 16 pixels on a side; one floor for all three
SIZE_TAG, FRAMES_TAG = "TOKENCODEC_SIZE", "TOKENCODEC_FRAMES"
# Decoders conceal damage by default; ask them (and the demuxer's CRC-32 check) to fail instead.
DECODE_OPTIONS = {"err_detect": "crccheck+bitstream+buffer+explode"}


class VideoCodec(ABC):
    """A video encoder reached through PyAV; subclasses set the encoder name and its options."""

    name: ClassVar[str] = ""
    encoder: ClassVar[str] = ""                              # libavcodec encoder name
    bitstream: ClassVar[str] = ""                            # the coding format (libavcodec's canonical name)
    quality_range: ClassVar[tuple[int, int]] = (0, 51)       # inclusive CRF range
    quality_meaning: ClassVar[str] = "CRF: higher is coarser quantization, lower quality, smaller file"
    higher_quality_value_is_better: ClassVar[bool] = False   # the knob's direction, for sweeps and plots
    default_qualities: ClassVar[tuple[int, ...]] = (18, 23, 28, 33, 38, 43)
    preset: ClassVar[str] = "medium"
    gop_size: ClassVar[int] = 32        # frames per keyframe interval; our sequences fit in one GOP
    max_b_frames: ClassVar[int | None] = 3
    extension: ClassVar[str] = ".mkv"
    min_coded_size: ClassVar[int] = 0   # smaller frames are edge-padded to this, then cropped back

    @abstractmethod
    def encoder_options(self, crf: int) -> dict[str, str]:
        """libavcodec options for this encoder at ``crf`` (threads fixed to 1 for reproducible files)."""

    def settings(self) -> dict[str, Any]:
        """Everything but the CRF that shapes the bitstream, recorded in provenance."""
        return {"encoder": self.encoder, "bitstream": self.bitstream, "pix_fmt": PIX_FMT, "container": CONTAINER,
                "gop_size": self.gop_size, "preset": self.preset, "rate_control": "crf",
                "quality_knob": f"crf {self.quality_range[0]}..{self.quality_range[1]} ({self.quality_meaning})",
                "max_b_frames": self.max_b_frames, "frame_rate": FRAME_RATE, "threads": 1,
                "colour": "BT.601 limited range (swscale), rgb24 <-> yuv420p",
                "odd_sizes": "padded to even by edge repetition, cropped back on decode",
                "min_coded_size": self.min_coded_size,
                "options": {k: v for k, v in self.encoder_options(0).items() if k != "crf"}}

    def versions(self) -> dict[str, str]:
        """PyAV, the FFmpeg libraries it bundles, and the encoder library where its bitstream names it."""
        import av

        found = {"av": av.__version__, "ffmpeg": str(getattr(av, "ffmpeg_version_info", ""))}
        found.update({lib: ".".join(map(str, v)) for lib, v in av.library_versions.items()})
        found[self.encoder] = _encoder_version(self.encoder)
        return found

    def check_quality(self, quality: int) -> int:
        lo, hi = self.quality_range
        if isinstance(quality, bool) or not float(quality).is_integer() or not lo <= quality <= hi:
            raise CodecError(f"{self.name}: quality {quality!r} is outside the allowed range "
                             f"[{lo}, {hi}] ({self.quality_meaning})")
        return int(quality)

    def check_frames(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
            raise CodecError(f"{self.name}: expected T×H×W×3 uint8 RGB frames with T ≥ 1, got "
                             f"{frames.dtype} {frames.shape}")
        h, w = frames.shape[1:3]
        if h < MIN_SIZE or w < MIN_SIZE:
            raise CodecError(f"{self.name}: frames of {w}×{h} pixels are too small; "
                             f"width and height must be at least {MIN_SIZE}")
        return np.ascontiguousarray(frames)

    def encode(self, frames: np.ndarray, quality: int) -> bytes:
        """Encode T×H×W×3 uint8 RGB frames at CRF ``quality`` into a Matroska file."""
        import av

        frames = self.check_frames(frames)
        crf = self.check_quality(quality)
        t, h, w = frames.shape[:3]
        padded = _pad(frames, self.min_coded_size)
        buf = io.BytesIO()
        with av.open(buf, "w", format=CONTAINER, options={"fflags": "+bitexact"}) as out:
            out.metadata[SIZE_TAG] = f"{w}x{h}"
            out.metadata[FRAMES_TAG] = str(t)
            stream = out.add_stream(self.encoder, rate=FRAME_RATE, options=self.encoder_options(crf))
            stream.width, stream.height, stream.pix_fmt = padded.shape[2], padded.shape[1], PIX_FMT
            stream.codec_context.thread_count = 1
            _tag_bt601(stream.codec_context)
            stream.codec_context.gop_size = self.gop_size
            if self.max_b_frames is not None:
                stream.codec_context.max_b_frames = self.max_b_frames
            bsf = self.bitstream_filter(stream)
            for i, frame in enumerate([*padded, None]):
                yuv = None
                if frame is not None:
                    yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                        format=PIX_FMT, dst_colorspace="ITU601", dst_color_range="MPEG")
                    yuv.pts = i  # in the stream's 1/FRAME_RATE time base
                for packet in stream.encode(yuv):
                    out.mux(bsf.filter(packet) if bsf else packet)
            if bsf:
                out.mux(bsf.filter(None))
        return buf.getvalue()

    def bitstream_filter(self, stream):
        """A libavcodec bitstream filter applied to each packet before muxing, or None."""
        return None

    def decode(self, data: bytes) -> np.ndarray:
        """Frames (T×H×W×3 uint8 RGB) of a file written by ``encode``; damage raises ``CodecError``."""
        import av

        if not isinstance(data, bytes | bytearray) or not data:
            raise CodecError(f"{self.name}: expected a non-empty bitstream (bytes), got {type(data).__name__} "
                             f"of length {len(data) if hasattr(data, '__len__') else '?'}")
        try:
            with av.open(io.BytesIO(data), "r", options=DECODE_OPTIONS) as src:
                if not src.streams.video:
                    raise CodecError("the file has no video stream")
                stream = src.streams.video[0]
                # Whichever decoder FFmpeg picks for the format (libdav1d or its own av1) is fine.
                found = stream.codec_context.codec.canonical_name
                if found != self.bitstream:
                    raise CodecError(f"the video stream is {found}, not {self.bitstream}")
                stream.codec_context.thread_count = 1
                stream.codec_context.options = dict(DECODE_OPTIONS)
                tags = dict(src.metadata)
                frames = [f.reformat(format="rgb24", src_colorspace="ITU601", src_color_range="MPEG").to_ndarray()
                          for f in src.decode(stream)]
        except CodecError as err:
            raise CodecError(f"{self.name}: cannot decode a {len(data)}-byte bitstream ({err})") from None
        except Exception as err:  # PyAV raises assorted av.error types (InvalidData, EOF, I/O) for damaged input
            reason = getattr(err, "strerror", None) or str(err)
            raise CodecError(f"{self.name}: cannot decode a {len(data)}-byte bitstream: not a complete, undamaged "
                             f"{CONTAINER} file with a {self.bitstream} stream ({reason})") from None
        return self._crop(np.stack(frames) if frames else None, tags, len(data))

    def _crop(self, frames: np.ndarray | None, tags: dict[str, str], n_bytes: int) -> np.ndarray:
        """Check the frame count and crop the padding back using the tags ``encode`` wrote."""
        where = f"{self.name}: {n_bytes}-byte bitstream"
        if frames is None:
            raise CodecError(f"{where} holds no decodable frame")
        try:
            w, h = (int(v) for v in tags[SIZE_TAG].split("x"))
            t = int(tags[FRAMES_TAG])
        except (KeyError, ValueError):
            return frames  # a file from elsewhere: nothing to crop, nothing to check against
        if frames.shape[0] != t:
            raise CodecError(f"{where} decoded to {frames.shape[0]} of its {t} frames (truncated or damaged)")
        if frames.shape[1] < h or frames.shape[2] < w:
            raise CodecError(f"{where}: decoded frames are {frames.shape[2]}×{frames.shape[1]}, "
                             f"smaller than the recorded {w}×{h}")
        return np.ascontiguousarray(frames[:, :h, :w])


# x264 and x265 write their version into an SEI of the first frame (which encode() leaves out); PyAV has
# no other way to ask. SVT-AV1 writes none into the bitstream and only logs it.
_VERSION_PATTERNS = {"libx264": rb"x264 - (core \d+(?: r\d+ [0-9a-f]+)?)",
                     "libx265": rb"x265 \(build \d+\) - ([\w.+\-]+)"}


@functools.cache
def _encoder_version(encoder: str) -> str:
    import av

    if encoder not in _VERSION_PATTERNS:
        return "not reported by the bitstream or PyAV (see the encoder's log)"
    buf = io.BytesIO()
    with av.open(buf, "w", format=CONTAINER) as out:
        stream = out.add_stream(encoder, rate=FRAME_RATE, options={"x265-params": "log-level=error"}
                                if encoder == "libx265" else {})
        stream.width = stream.height = MIN_SIZE
        stream.pix_fmt = PIX_FMT
        frame = av.VideoFrame.from_ndarray(np.zeros((MIN_SIZE, MIN_SIZE, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame.reformat(format=PIX_FMT)), *stream.encode(None)]:
            out.mux(packet)
    found = re.search(_VERSION_PATTERNS[encoder], buf.getvalue())
    return found.group(1).decode() if found else "unknown"


def _tag_bt601(context) -> None:
    """Mark the stream as BT.601 limited range, the conversion encode() uses, so other players agree."""
    # libavutil's enum values: AVCOL_SPC/PRI/TRC_SMPTE170M = 6 (BT.601 525-line), AVCOL_RANGE_MPEG = 1.
    context.colorspace = context.color_primaries = context.color_trc = 6
    context.color_range = 1


def _pad(frames: np.ndarray, at_least: int = 0) -> np.ndarray:
    """Edge-pad to even sides (4:2:0) of at least ``at_least`` pixels; decode crops back."""
    h, w = frames.shape[1:3]
    ph, pw = max(at_least, h + h % 2) - h, max(at_least, w + w % 2) - w
    ph, pw = ph + (h + ph) % 2, pw + (w + pw) % 2
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


VIDEO_CODECS: Registry[type[VideoCodec]] = Registry("video codec")


def register_video_codec(name: str):
    return VIDEO_CODECS.register_named(name)


def get_video_codec(name: str) -> VideoCodec:
    return VIDEO_CODECS.get(name)()


@register_video_codec("h264")
class H264(VideoCodec):
    encoder, bitstream = "libx264", "h264"
    quality_range = (0, 51)
    quality_meaning = "x264 CRF 0..51: higher is coarser quantization, lower quality, smaller file (0 is lossless)"

    def encoder_options(self, crf):
        return {"crf": str(crf), "preset": self.preset, "x264-params": "threads=1:scenecut=0"}

    def bitstream_filter(self, stream):
        # x264 writes its version and full option string as an SEI (~0.7 kB) into the first frame; it
        # carries no picture data and would dominate small files, so it is removed (NAL type 6).
        import av

        return av.BitStreamFilterContext("filter_units=remove_types=6", stream)

    def settings(self):
        return {**super().settings(), "sei": "x264 info SEI removed (filter_units=remove_types=6)"}


@register_video_codec("h265")
class H265(VideoCodec):
    encoder, bitstream = "libx265", "hevc"
    quality_range = (0, 51)
    quality_meaning = "x265 CRF 0..51: higher is coarser quantization, lower quality, smaller file"
    # x265 4.2 as PyAV 18 bundles it corrupts its heap on some clips smaller than one 64×64 CTU (seen at
    # 48×48: "free(): invalid next size"), so smaller frames are edge-padded to 64 and cropped back
    min_coded_size = 64

    def encoder_options(self, crf):
        # info=0: no version/option SEI, as for x264; pools/frame-threads=1: one thread.
        return {"crf": str(crf), "preset": self.preset,
                "x265-params": "pools=1:frame-threads=1:info=0:scenecut=0:log-level=error"}


@register_video_codec("av1")
class AV1(VideoCodec):
    encoder, bitstream = "libsvtav1", "av1"
    quality_range = (1, 63)
    quality_meaning = "SVT-AV1 CRF 1..63: higher is coarser quantization, lower quality, smaller file"
    default_qualities = (23, 30, 37, 44, 51, 58)
    preset = "8"                # SVT-AV1 presets run 0 (slowest) .. 13; 8 keeps sweeps to minutes on 2 cores
    max_b_frames = None         # SVT-AV1 uses its own hierarchical (random-access) structure, not B-frames

    def encoder_options(self, crf):
        os.environ.setdefault("SVT_LOG", "1")     # errors only: SVT-AV1 prints its whole configuration per encode
        return {"crf": str(crf), "preset": self.preset, "svtav1-params": "lp=1:scd=0"}

    def settings(self):
        return {**super().settings(), "prediction_structure": "SVT-AV1 random access (hierarchical)"}


__all__ = ["AV1", "FRAME_RATE", "H264", "H265", "PIX_FMT", "VIDEO_CODECS", "VideoCodec", "get_video_codec",
           "register_video_codec"]
