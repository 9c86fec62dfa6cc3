"""HEIC (HEVC intra) through pillow-heif: x265 encoder, libde265 decoder."""

import io

import numpy as np
import pillow_heif
from PIL import Image

from tokencodec.codecs.base import Codec, register_codec


@register_codec("heic")
class HEIC(Codec):
    quality_range = (0, 100)
    quality_meaning = "libheif quality (mapped to the x265 QP)"
    extension = ".heic"

    def _encode(self, image, quality):
        buf = io.BytesIO()
        pillow_heif.from_pillow(Image.fromarray(image)).save(buf, quality=quality, chroma=420)
        return buf.getvalue()

    def _decode(self, data):
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        return np.asarray(heif.to_pillow().convert("RGB"))

    def settings(self):
        return {"chroma": "4:2:0"}

    @staticmethod
    def versions():
        return {"libheif": pillow_heif.libheif_version(), "pillow-heif": pillow_heif.__version__}
