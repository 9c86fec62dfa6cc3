"""Pixel codecs behind one interface (``Codec``) and one registry (``CODECS``)."""

from tokencodec.codecs import avif, heic, jpeg, jpeg2000, jpegxl, webp  # noqa: F401  (fill the registry)
from tokencodec.codecs.base import CODECS, Codec, CodecError, get_codec, register_codec
from tokencodec.codecs.payload import container_overhead, payload_bytes

__all__ = ["CODECS", "Codec", "CodecError", "container_overhead", "get_codec", "payload_bytes", "register_codec"]
