"""Image data sets: Kodak, any folder, and the embedded default (scikit-image photos)."""

from tokencodec.data.images import (
    ON_ERROR,
    DatasetError,
    ImageConversionWarning,
    ImageItem,
    ImageReadError,
    ImageSkippedWarning,
    load_dataset,
    read_errors,
    read_image,
)

__all__ = ["ON_ERROR", "DatasetError", "ImageConversionWarning", "ImageItem", "ImageReadError", "ImageSkippedWarning",
           "load_dataset", "read_errors", "read_image"]
