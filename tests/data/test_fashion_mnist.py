"""Fashion-MNIST from Debian's package (the README set-up installs it): verified, parsed, refused when wrong."""

import gzip

import numpy as np
import pytest

from tokencodec.data.fashion_mnist import SHA256, fashion_mnist_folder, load_fashion_mnist, read_idx
from tokencodec.data.images import DatasetError


def test_the_installed_data_set_is_verified_and_parsed():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10   # balanced test split
    train, train_labels = load_fashion_mnist("train")
    assert train.shape == (60000, 28, 28) and len(train_labels) == 60000
    assert 0.28 < train.mean() / 255 < 0.29                                           # the known pixel mean


def test_missing_or_tampered_files_are_refused_with_the_install_line(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_folder(tmp_path)
    monkeypatch.setenv("TOKENCODEC_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DatasetError, match=str(tmp_path)):
        load_fashion_mnist("test")
    for name in SHA256:
        (tmp_path / name).write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x01\x07"))
    with pytest.raises(DatasetError, match="does not match the Fashion-MNIST release"):
        load_fashion_mnist("test")
    with pytest.raises(DatasetError, match="unknown Fashion-MNIST split 'dev'"):
        load_fashion_mnist("dev")


def test_idx_reader_checks_its_header_and_length(tmp_path):
    good = tmp_path / "a.gz"
    good.write_bytes(gzip.compress(b"\0\0\x08\x02\0\0\0\x02\0\0\0\x03" + bytes(range(6))))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "b.gz"
    short.write_bytes(gzip.compress(b"\0\0\x08\x01\0\0\0\x09\x01"))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(short)
    bad = tmp_path / "c.gz"
    bad.write_bytes(gzip.compress(b"PK\x03\x04"))
    with pytest.raises(DatasetError, match="not an idx file"):
        read_idx(bad)
