"""Lossy WebP (VP8 intra) through Pillow (libwebp)."""

from PIL import features

from tokencodec.codecs.base import PillowCodec, register_codec


@register_codec("webp")
class WebP(PillowCodec):
    pillow_format = "WEBP"
    quality_range = (0, 100)
    quality_meaning = "libwebp quality factor"
    extension = ".webp"
    method = 4  # libwebp's default speed/size trade-off

    def save_options(self, quality):
        return {"quality": quality, "method": self.method, "lossless": False}

    def settings(self):
        return {"method": self.method}

    @staticmethod
    def versions():
        return {"libwebp": str(features.version("webp"))}
