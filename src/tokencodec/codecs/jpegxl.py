"""JPEG XL through imagecodecs (libjxl); Pillow has no JPEG XL encoder."""

import imagecodecs
import numpy as np

from tokencodec.codecs.base import Codec, register_codec


@register_codec("jpegxl")
class JPEGXL(Codec):
    quality_range = (0, 100)
    quality_meaning = "libjxl quality (mapped to a butteraugli distance by libjxl)"
    extension = ".jxl"
    effort = 7  # libjxl's default

    def _encode(self, image, quality):
        return bytes(imagecodecs.jpegxl_encode(image, level=quality, effort=self.effort, numthreads=1))

    def _decode(self, data):
        image = np.asarray(imagecodecs.jpegxl_decode(data, numthreads=1))
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"decoded to {image.dtype} {image.shape}, expected 8-bit RGB")
        return image

    def settings(self):
        return {"effort": self.effort}

    @staticmethod
    def versions():
        return {"libjxl": imagecodecs.jpegxl_version(), "imagecodecs": imagecodecs.__version__}
