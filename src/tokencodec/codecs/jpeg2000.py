"""JPEG 2000 through Pillow (OpenJPEG), lossy 9/7 wavelet with the irreversible colour transform.

OpenJPEG has no 0–100 quality scale; its rate knob here is the target PSNR of the single
quality layer (``quality_mode="dB"``), so the quality is in dB and still "higher is better".
"""

from PIL import features

from tokencodec.codecs.base import PillowCodec, register_codec


@register_codec("jpeg2000")
class JPEG2000(PillowCodec):
    pillow_format = "JPEG2000"
    quality_range = (15, 60)
    quality_meaning = "target PSNR of the quality layer, in dB"
    default_qualities = (22, 24, 26, 28, 30, 32, 34, 36, 38, 40)
    extension = ".jp2"

    def save_options(self, quality):
        return {"quality_mode": "dB", "quality_layers": [quality], "irreversible": True, "mct": 1,
                "no_jp2": False}

    def settings(self):
        return {"quality_mode": "dB", "irreversible": True, "mct": 1}

    @staticmethod
    def versions():
        return {"openjpeg": str(features.version("jpg_2000"))}
