"""Image data sets: Kodak, any folder, and the embedded default (scikit-image photos)."""

from tokencodec.data.images import DatasetError, ImageItem, ImageReadError, load_dataset, read_image

__all__ = ["DatasetError", "ImageItem", "ImageReadError", "load_dataset", "read_image"]
