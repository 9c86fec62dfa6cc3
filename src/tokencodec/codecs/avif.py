"""AVIF (AV1 intra) through Pillow's libavif plugin."""

from PIL import features

from tokencodec.codecs.base import PillowCodec, register_codec


@register_codec("avif")
class AVIF(PillowCodec):
    pillow_format = "AVIF"
    quality_range = (0, 100)
    quality_meaning = "libavif quality (mapped to the AV1 quantizer)"
    extension = ".avif"
    speed = 6  # libavif's default

    def save_options(self, quality):
        return {"quality": quality, "speed": self.speed, "subsampling": "4:2:0"}

    def settings(self):
        return {"speed": self.speed, "subsampling": "4:2:0"}

    @staticmethod
    def versions():
        return {"libavif": str(features.version("avif"))}
