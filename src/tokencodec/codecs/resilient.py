"""JPEG and JPEG 2000 written with their own error-resilience tools, for lossy channels (``tokencodec.channels``).

- ``jpeg-rst``: baseline JPEG (libjpeg-turbo through Pillow) with a **restart marker** every 8 MCUs, so
  the scan splits into intervals that decode independently (the DC prediction restarts at each), and
  4:4:4 chroma (the plain ``jpeg`` codec's 4:2:0 smears the 8-pixel objects of the diagnostic scenes;
  the resilient variant should not lose for that reason). Standard Huffman tables (``optimize`` off), so
  the whole header is a function of (width, height, quality): what lets RFC 2435 (RTP/JPEG) send only
  a quality byte, and lets the channel receiver rebuild it (:mod:`tokencodec.channels.pixels`).
- ``jpeg2000-plt``: the ``jpeg2000`` codec's settings (one quality layer at a target PSNR, 9/7 wavelet)
  as a raw codestream with **PLT** markers (the length of every J2K packet), so a receiver knows where
  each packet starts and can put an empty packet in place of a lost one.

Neither is a default codec of a benchmark sweep; their bytes count the markers.
"""

from PIL import features

from tokencodec.codecs.base import PillowCodec, register_codec

RESTART_BLOCKS = 8


@register_codec("jpeg-rst")
class JPEGRestart(PillowCodec):
    pillow_format = "JPEG"
    quality_range = (1, 100)
    quality_meaning = "libjpeg quality scale"
    extension = ".jpg"
    default_sweep = False
    inner = "jpeg"              # its file format: payload_bytes parses it as a JPEG

    def save_options(self, quality):
        return {"quality": quality, "subsampling": "4:4:4", "optimize": False,
                "restart_marker_blocks": RESTART_BLOCKS}

    def settings(self):
        return {"subsampling": "4:4:4", "optimize": False, "restart_marker_blocks": RESTART_BLOCKS}

    @staticmethod
    def versions():
        return {"libjpeg-turbo": str(features.version_feature("libjpeg_turbo")),
                "libjpeg-api": str(features.version("jpg"))}


@register_codec("jpeg2000-plt")
class JPEG2000PLT(PillowCodec):
    pillow_format = "JPEG2000"
    quality_range = (15, 60)
    quality_meaning = "target PSNR of the quality layer, in dB"
    default_qualities = (22, 24, 26, 28, 30, 32, 34, 36, 38, 40)
    extension = ".j2k"
    default_sweep = False
    inner = "jpeg2000"          # its file format: payload_bytes parses it as a J2K codestream

    def save_options(self, quality):
        return {"quality_mode": "dB", "quality_layers": [quality], "irreversible": True, "mct": 1,
                "no_jp2": True, "plt": True}

    def settings(self):
        return {"quality_mode": "dB", "irreversible": True, "mct": 1, "codestream": "raw J2K", "plt": True}

    @staticmethod
    def versions():
        return {"openjpeg": str(features.version("jpg_2000"))}
