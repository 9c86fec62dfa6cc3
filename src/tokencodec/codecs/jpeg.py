"""Baseline JPEG through Pillow (libjpeg-turbo), the usual anchor of codec comparisons."""

from PIL import features

from tokencodec.codecs.base import PillowCodec, register_codec


@register_codec("jpeg")
class JPEG(PillowCodec):
    pillow_format = "JPEG"
    quality_range = (1, 100)
    quality_meaning = "libjpeg quality scale"
    extension = ".jpg"

    # Pillow's defaults as CompressAI's anchor uses them: 4:2:0 chroma, standard Huffman tables.
    def save_options(self, quality):
        return {"quality": quality, "subsampling": "4:2:0", "optimize": False}

    def settings(self):
        return {"subsampling": "4:2:0", "optimize": False}

    @staticmethod
    def versions():
        return {"libjpeg-turbo": str(features.version_feature("libjpeg_turbo")),
                "libjpeg-api": str(features.version("jpg"))}
