"""Human metrics checked against independent computations (scikit-image, and NumPy/SciPy by hand)."""

import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tokencodec.metrics.human import human_metrics, ms_ssim, psnr, ssim


@pytest.fixture(scope="module")
def pair(photo):
    rng = np.random.default_rng(0)
    noisy = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
    return photo, noisy


def test_psnr_by_hand_and_against_skimage(pair):
    ref = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(ref, ref + 1) == pytest.approx(10 * np.log10(255**2))  # MSE 1
    assert psnr(ref, ref) == float("inf")
    assert psnr(*pair) == pytest.approx(peak_signal_noise_ratio(*pair, data_range=255), abs=1e-9)


def test_ssim_against_skimage(pair):
    expected = structural_similarity(*pair, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    # skimage crops a 5-pixel border slightly differently from the valid convolution: ~1e-5.
    assert ssim(*pair) == pytest.approx(expected, abs=1e-4)


def _gauss(size=11, sigma=1.5):
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_cs(x, y):
    g = _gauss()

    def blur(a):
        return convolve2d(convolve2d(a, g[None, :], mode="valid"), g[:, None], mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return (((2 * mx * my + c1) / (mx**2 + my**2 + c1)) * cs).mean(), cs.mean()


def _ms_ssim_reference(a, b):
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]  # Wang et al. 2003
    per_channel = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        value = 1.0
        for i, w in enumerate(weights):
            s, cs = _ssim_cs(x, y)
            value *= max(s if i == 4 else cs, 0) ** w
            x = x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean((1, 3))  # 2×2 average pooling
            y = y.reshape(y.shape[0] // 2, 2, y.shape[1] // 2, 2).mean((1, 3))
        per_channel.append(value)
    return float(np.mean(per_channel))


def test_ms_ssim_against_an_independent_implementation(pair):
    # float32 maps (as pytorch_msssim): the value moves by ~2e-6 with the thread count's summation order
    assert ms_ssim(*pair) == pytest.approx(_ms_ssim_reference(*pair), abs=5e-6)


def test_small_images_get_a_status_not_a_nan():
    from tokencodec.metrics.human import unavailable

    small = np.zeros((100, 200, 3), np.uint8)
    with pytest.raises(ValueError, match="161 px"):
        ms_ssim(small, small)
    assert set(human_metrics(small, small)) == {"psnr-rgb"}  # left out, never a NaN inside an average
    assert "200×100 image is smaller than the 161 px" in unavailable(small)["ms-ssim-rgb"]
    assert unavailable(np.zeros((161, 161, 3), np.uint8)) == {}


def test_ms_ssim_per_channel_equals_pytorch_msssim_on_the_whole_image(pair):
    import torch
    from pytorch_msssim import ms_ssim as reference

    odd = tuple(np.ascontiguousarray(x[:171, :203]) for x in pair)  # odd sizes: the avg-pool padding rule
    for a, b in (pair, odd):
        t = [torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None] for x in (a, b)]
        expected = float(reference(*t, data_range=255.0))
        # both in float32, in different summation orders (bands, threads): ~1e-6 apart
        assert ms_ssim(a, b) == pytest.approx(expected, abs=5e-6)
        assert ms_ssim(a, b, band_pixels=3000) == pytest.approx(ms_ssim(a, b), abs=1e-6)  # many bands, same value


def test_psnr_in_bands_is_exact():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3000, 1500, 3), dtype=np.uint8)  # more than one band
    b = rng.integers(0, 256, a.shape, dtype=np.uint8)
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
