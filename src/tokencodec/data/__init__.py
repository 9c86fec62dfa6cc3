"""Image data sets: Kodak, any folder, and the embedded default (scikit-image photos)."""

from tokencodec.data.images import (
    DatasetError,
    ImageConversionWarning,
    ImageItem,
    ImageReadError,
    read_image,
)
from tokencodec.data.sets import load_dataset

__all__ = ["DatasetError", "ImageConversionWarning", "ImageItem", "ImageReadError", "load_dataset", "read_image"]
