"""Odd images are read honestly: 16-bit scaled, alpha composited with a warning, names unique."""

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from tokencodec.data import ImageConversionWarning, load_dataset, read_image


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 256).reshape(64, 256) * 4).astype(np.uint16)  # 0 … 65532
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with pytest.warns(ImageConversionWarning, match="g16.png: I;16 samples scaled to 8 bits"):
        image = read_image(tmp_path / "g16.png")
    assert image.shape == (64, 256, 3) and (image == 255).mean() < 0.01  # clipping read 89 % as 255
    assert np.array_equal(image[..., 0], np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8))


def test_16_bit_rgb_png_keeps_its_low_byte(tmp_path):
    ramp = (np.arange(64 * 256).reshape(64, 256) * 4).astype(np.uint16)
    rgb = np.stack([ramp, ramp // 2, 65535 - ramp], -1)
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb))
    with pytest.warns(ImageConversionWarning, match="16-bit samples scaled"):
        image = read_image(tmp_path / "rgb16.png")
    assert np.array_equal(image, np.rint(rgb.astype(np.float64) * 255 / 65535).astype(np.uint8))


def test_alpha_is_composited_over_white_with_a_warning(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0], rgba[:5, :, 3], rgba[5:, :, 3] = 200, 255, 128
    Image.fromarray(rgba).save(tmp_path / "a.png")
    with pytest.warns(ImageConversionWarning, match="a.png: alpha composited over a white background"):
        image = read_image(tmp_path / "a.png")
    assert image[0, 0].tolist() == [200, 0, 0]                              # opaque: as stored
    assert image[9, 9].tolist() == [227, 127, 127]                          # half transparent over white


def test_plain_rgb_reads_without_warnings(tmp_path, photo):
    import warnings

    Image.fromarray(photo).save(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(read_image(tmp_path / "p.png"), photo)


def test_per_image_keys_are_unique_file_names(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo).save(tmp_path / "a.jpg")
    assert [i.name for i in load_dataset(str(tmp_path))] == ["a.jpg", "a.png"]  # not one shared "a"
