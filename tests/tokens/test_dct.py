"""dct: the 2-D DCT low-pass of the token grid, checked against its defining properties and against pooling."""

import math

import pytest
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, get_method
from tokencodec.tokens.compress.dct import dct_matrix, dct_operator, energy_grid, lowpass_axis


def basis(h: int, w: int, fy: int, fx: int) -> torch.Tensor:
    """The DCT-II basis image of frequency (fy, fx) on an h×w grid, [h·w]."""
    y = torch.cos(math.pi * (2 * torch.arange(h, dtype=torch.float64) + 1) * fy / (2 * h))
    x = torch.cos(math.pi * (2 * torch.arange(w, dtype=torch.float64) + 1) * fx / (2 * w))
    return (y[:, None] * x[None, :]).reshape(-1)


def test_dct_is_orthonormal_and_matches_scipy():
    from scipy.fft import dct

    c = dct_matrix(7)
    assert torch.allclose(c @ c.T, torch.eye(7, dtype=torch.float64))
    v = torch.randn(7, dtype=torch.float64)
    assert torch.allclose(c @ v, torch.from_numpy(dct(v.numpy(), norm="ortho")))


def test_kept_frequencies_pass_and_the_others_vanish():
    # a band-limited grid: frequencies below the 6×6 cut-off survive (resampled), those above are removed
    low = basis(12, 12, 2, 3)
    op = dct_operator(12, 12, 6, 6)
    out = op @ low
    # its spectrum on the small grid is one coefficient at (2, 3)
    spec = dct_matrix(6) @ out.reshape(6, 6) @ dct_matrix(6).T
    assert spec.abs().argmax().item() == 2 * 6 + 3 and (spec.abs() > 1e-9).sum() == 1
    high = basis(12, 12, 0, 9)
    assert torch.allclose(op @ high, torch.zeros(36, dtype=torch.float64), atol=1e-12)


def test_a_constant_grid_stays_constant_and_pooling_aliases_where_dct_does_not():
    ones = torch.ones(24, dtype=torch.float64)
    assert torch.allclose(lowpass_axis(24, 8) @ ones, ones[:8])
    # frequency 13 of 24 is above an 8-token grid's band: the DCT removes it, 3-wide average pooling keeps
    # an aliased ripple of it
    grid = basis(24, 24, 0, 13)[None, :, None].float()
    batch = TokenBatch.from_grid(grid, (24, 24))
    dct_out = get_method("dct")(batch, Budget(keep=64)).features
    pool_out = get_method("pool-avg")(batch, Budget(keep=64)).features
    assert dct_out.abs().max() < 1e-5 and pool_out.abs().max() > 0.05


def test_bookkeeping_counts_and_the_energy_zone():
    x = torch.randn(2, 24 * 24, 8, generator=torch.Generator().manual_seed(0))
    out = get_method("dct")(TokenBatch.from_grid(x, (24, 24)), Budget(keep=64))
    assert out.features.shape == (2, 64, 8) and torch.equal(out.sizes.sum(1), torch.full((2,), 576.0))
    assert out.positions[0, 0] == 24 + 1      # token (0, 0) stands for the 3×3 window, centre patch (1, 1)
    # content that varies along columns only: the energy zone picks one full-width row band
    wide = torch.stack([basis(24, 24, 0, f) for f in range(1, 7)], -1).float()[None]
    grid = energy_grid(torch.einsum("ph,hwd,qw->pqd", dct_matrix(24), wide[0].double().reshape(24, 24, 6),
                                    dct_matrix(24)).pow(2).sum(-1), 64)
    assert grid == (1, 7)                     # frequencies 0…6 along the columns: 7 tokens hold all the energy
    two = torch.cat([wide, wide.reshape(1, 24, 24, 6).transpose(1, 2).reshape(1, 576, 6)])
    out = get_method("dct", zone="energy")(TokenBatch.from_grid(two, (24, 24)), Budget(keep=64))
    assert out.num_tokens == 7 and out.mask is None          # (1, 7) and (7, 1): the same count, no padding
    mixed = torch.cat([wide, x[:1, :, :6]])                  # a band and noise: 7 and ~64 tokens, padded
    out = get_method("dct", zone="energy")(TokenBatch.from_grid(mixed, (24, 24)), Budget(keep=64))
    counts = out.counts().tolist()
    assert counts[0] == 7 and 56 <= counts[1] <= 64 and out.mask is not None   # noise: a block near K
    with pytest.raises(Exception, match="zone"):
        get_method("dct", zone="triangle")
