"""Pixel codecs behind one interface (``Codec``) and one registry (``CODECS``)."""

from tokencodec.codecs import (  # noqa: F401  (registry)
    avif,
    blockdct,
    heic,
    jpeg,
    jpeg2000,
    jpegxl,
    resilient,
    semantic,
    webp,
)
from tokencodec.codecs.base import CODECS, Codec, CodecError, get_codec, register_codec
from tokencodec.codecs.payload import container_overhead, payload_bytes


def plain_codecs() -> list[str]:
    """The standard codecs (not the machine-guided variants that read a model): what a benchmark sweeps
    by default."""
    return [n for n in CODECS.names() if CODECS.get(n).default_sweep and not CODECS.get(n).machine_guided]


__all__ = ["CODECS", "Codec", "CodecError", "container_overhead", "get_codec", "payload_bytes", "plain_codecs",
           "register_codec"]
