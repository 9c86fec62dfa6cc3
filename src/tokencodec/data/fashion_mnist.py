"""Fashion-MNIST (Xiao et al. 2017): 60 000 + 10 000 real 28×28 greyscale images in 10 classes.

Where it comes from, in order: an explicit folder; ``$TOKENCODEC_FASHION_MNIST``; Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``). Each of the four idx files is
checked against the SHA-256 shipped here (those of the official release, which Debian packages
unchanged); a mismatch is refused. The idx format is a few lines of NumPy: a magic number, the
dimensions, then raw unsigned bytes (no library for it is worth a dependency).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from tokencodec.data.images import DatasetError

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
ENV_FOLDER = "TOKENCODEC_FASHION_MNIST"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
FILES = {  # split → (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
INSTALL = ("install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
           "`bash scripts/system-deps.sh` does it), or set $TOKENCODEC_FASHION_MNIST to a folder holding "
           + ", ".join(SHA256))


def fashion_mnist_folder(folder: str | Path | None = None) -> Path:
    """The folder holding the four verified idx files, or a DatasetError saying how to get them."""
    candidates = [Path(folder)] if folder is not None else (
        [Path(os.environ[ENV_FOLDER])] if os.environ.get(ENV_FOLDER) else [DEBIAN_FOLDER])
    where = candidates[0]
    missing = [name for name in SHA256 if not (where / name).is_file()]
    if missing:
        raise DatasetError(f"Fashion-MNIST not found in {where} (missing {', '.join(missing)}); {INSTALL}")
    for name, digest in SHA256.items():
        actual = hashlib.sha256((where / name).read_bytes()).hexdigest()
        if actual != digest:
            raise DatasetError(f"{where / name}: SHA-256 {actual} does not match the Fashion-MNIST release "
                               f"{digest}; refusing to use it")
    return where


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip) as a uint8 array: magic 0x0000 08 <ndim>, ndim big-endian sizes, the bytes."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 8:
        raise DatasetError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: {body.size} bytes for shape {shape}; the file is truncated")
    return body.reshape(shape)


def load_fashion_mnist(split: str = "test", folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N] int64) of ``split`` ("train" or "test")."""
    if split not in FILES:
        raise DatasetError(f"unknown Fashion-MNIST split {split!r}; known: {', '.join(FILES)}")
    where = fashion_mnist_folder(folder)
    images, labels = (read_idx(where / name) for name in FILES[split])
    if len(images) != len(labels):
        raise DatasetError(f"{where}: {len(images)} images but {len(labels)} labels in split {split!r}")
    return images, labels.astype(np.int64)


__all__ = ["CLASSES", "load_fashion_mnist", "fashion_mnist_folder", "read_idx"]
