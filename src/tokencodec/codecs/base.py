"""One interface for pixel codecs with real bitstreams: encode an image at a quality into bytes,
decode bytes into an image. Adding a codec is one file with a class registered in ``CODECS``."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from tokencodec.registry import Registry


class CodecError(ValueError):
    """A quality out of range, or a bitstream the decoder refuses; the message says which."""


class Codec(ABC):
    name: ClassVar[str] = ""
    quality_range: ClassVar[tuple[int, int]] = (0, 100)  # inclusive; higher is better quality
    quality_meaning: ClassVar[str] = "encoder quality"
    default_qualities: ClassVar[tuple[int, ...]] = (5, 15, 25, 35, 45, 55, 65, 75, 85, 95)
    extension: ClassVar[str] = ".bin"
    machine_guided: ClassVar[bool] = False   # reads a model to decide where bits go (not a plain codec benchmark)
    default_sweep: ClassVar[bool] = True     # one of the standard codecs a benchmark sweeps by default

    def settings(self) -> dict[str, Any]:
        """Encoder options other than quality, recorded in provenance."""
        return {}

    @staticmethod
    def versions() -> dict[str, str]:
        """Versions of the native libraries that produce the bitstream."""
        return {}

    def check_quality(self, quality: int) -> int:
        lo, hi = self.quality_range
        if isinstance(quality, bool) or not float(quality).is_integer() or not lo <= quality <= hi:
            raise CodecError(f"{self.name}: quality {quality!r} is outside the allowed range "
                             f"[{lo}, {hi}] ({self.quality_meaning})")
        return int(quality)

    def encode(self, image: np.ndarray, quality: int) -> bytes:
        """Encode an H×W×3 uint8 RGB image."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise CodecError(f"{self.name}: expected an H×W×3 uint8 RGB array, got {image.dtype} "
                             f"{image.shape}")
        return self._encode(np.ascontiguousarray(image), self.check_quality(quality))

    def decode(self, data: bytes) -> np.ndarray:
        try:
            image = self._decode(data)
        except Exception as err:  # decoders raise assorted types for corrupt input
            raise CodecError(f"{self.name}: cannot decode a {len(data)}-byte bitstream ({err})") from err
        return np.asarray(image, dtype=np.uint8)

    @abstractmethod
    def _encode(self, image: np.ndarray, quality: int) -> bytes: ...

    @abstractmethod
    def _decode(self, data: bytes) -> np.ndarray: ...


class PillowCodec(Codec):
    """A codec reached through Pillow's ``Image.save(format=...)``."""

    pillow_format: ClassVar[str] = ""

    def save_options(self, quality: int) -> dict[str, Any]:
        return {"quality": quality}

    def _encode(self, image: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=self.pillow_format, **self.save_options(quality))
        return buf.getvalue()

    def _decode(self, data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != self.pillow_format:
                raise CodecError(f"bitstream is {im.format}, not {self.pillow_format}")
            return np.asarray(im.convert("RGB"))


CODECS: Registry[type[Codec]] = Registry("codec", group="tokencodec.codecs")


def register_codec(name: str):
    return CODECS.register_named(name)


def get_codec(name: str) -> Codec:
    return CODECS.get(name)()
