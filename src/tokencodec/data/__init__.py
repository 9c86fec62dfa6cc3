"""Image data sets: Kodak, any folder, and the embedded default (scikit-image photos)."""

from tokencodec.data.images import (
    ON_ERROR,
    DatasetError,
    ImageConversionWarning,
    ImageItem,
    ImageReadError,
    ImageSkippedWarning,
    read_errors,
    read_image,
)
from tokencodec.data.sets import load_dataset

__all__ = ["ON_ERROR", "DatasetError", "ImageConversionWarning", "ImageItem", "ImageReadError", "ImageSkippedWarning",
           "load_dataset", "read_errors", "read_image"]
