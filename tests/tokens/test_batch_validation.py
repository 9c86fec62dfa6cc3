"""TokenBatch refuses malformed bookkeeping at construction, with one line naming the field and the shape."""

from __future__ import annotations

import pytest
import torch

from tokencodec.tokens.batch import TokenBatch

B, N, D = 2, 6, 3        # grid (2, 3): N0 = 6


def make(**kw) -> TokenBatch:
    args = dict(features=torch.randn(B, N, D), grid=(2, 3))
    args.update(kw)
    return TokenBatch(**args)


@pytest.mark.parametrize("kw, message", [
    (dict(features=torch.randn(B, N)), r"TokenBatch.features has shape \(2, 6\), expected \[B, N, D\]"),
    (dict(grid=(2,)), r"TokenBatch.grid is \(2,\), expected \(h, w\): two positive ints"),
    (dict(grid=(2, 0)), r"TokenBatch.grid is \(2, 0\)"),
    (dict(grid=(2.0, 3)), r"TokenBatch.grid is \(2.0, 3\)"),
    (dict(frames=0), r"TokenBatch.frames is 0, expected a positive int"),
    (dict(frames=True), r"TokenBatch.frames is True"),
    (dict(grid=(1, 3)), r"N=6 tokens exceed the grid \(1, 3\) × 1 frame\(s\) = 3 original patches"),
    (dict(sizes=torch.ones(B, N - 1)), r"TokenBatch.sizes has shape \(2, 5\) \(torch.float32\), expected \[B=2, N=6\] "
                                       r"floating"),
    (dict(sizes=torch.ones(B, N, dtype=torch.long)), r"TokenBatch.sizes has shape \(2, 6\) \(torch.int64\)"),
    (dict(positions=torch.zeros(B, N)), r"TokenBatch.positions has shape \(2, 6\) \(torch.float32\), expected "
                                        r"\[B=2, N=6\] integer"),
    (dict(positions=torch.zeros(B, N + 1, dtype=torch.long)), r"TokenBatch.positions has shape \(2, 7\)"),
    (dict(positions=torch.full((B, N), 6)), r"TokenBatch.positions hold values in \[6, 6\], expected raster "
                                            r"indices in \[-1, 6\)"),
    (dict(positions=torch.full((B, N), -2)), r"expected raster indices in \[-1, 6\)"),
    (dict(mask=torch.ones(B, N)), r"TokenBatch.mask has shape \(2, 6\) \(torch.float32\), expected \[B=2, N=6\] bool"),
    (dict(mask=torch.ones(B, 1, dtype=torch.bool)), r"TokenBatch.mask has shape \(2, 1\)"),
    (dict(source=torch.ones(B, N, N, 1, dtype=torch.bool)), r"TokenBatch.source has shape \(2, 6, 6, 1\)"),
    (dict(source=torch.ones(B, N, 5, dtype=torch.bool)), r"expected \[B=2, N=6, N0=6\] bool or floating"),
    (dict(source=torch.ones(B, N, N, dtype=torch.long)), r"TokenBatch.source has shape \(2, 6, 6\) \(torch.int64\)"),
    (dict(cls=torch.randn(B + 1, D)), r"TokenBatch.cls has shape \(3, 3\) \(torch.float32\), expected \[B=2, D'\]"),
    (dict(cls=torch.randn(D)), r"TokenBatch.cls has shape \(3,\)"),
])
def test_malformed_fields_are_refused(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        make(**kw)
    assert "\n" not in str(err.value)


def test_well_formed_batches_pass():
    make(sizes=torch.ones(B, N, dtype=torch.float16), positions=torch.arange(N, dtype=torch.int32).expand(B, N),
         mask=torch.ones(B, N, dtype=torch.bool), source=torch.eye(N).expand(B, N, N), cls=torch.randn(B, D))
    make(cls=torch.randn(B, D + 5))   # LLaVA: a vision-space CLS beside projected tokens
    # fewer tokens than patches, padding at position -1
    out = TokenBatch(features=torch.randn(1, 2, D), grid=(2, 2), positions=torch.tensor([[3, -1]]))
    assert out.source.shape == (1, 2, 4)
    # without an explicit source, each token stands for its own patch, padding for none
    assert out.source.tolist() == [[[False, False, False, True], [False] * 4]]


def test_from_grid_checks_grid_and_frames():
    x = torch.randn(1, 8, D)
    assert TokenBatch.from_grid(x, (2, 2), frames=2).num_original == 8
    with pytest.raises(ValueError, match=r"grid \(2, 3\) × 1 frame\(s\) does not hold 8 tokens"):
        TokenBatch.from_grid(x, (2, 3))
    with pytest.raises(ValueError, match=r"grid \(2, 2\) × 3 frame\(s\) does not hold 8 tokens"):
        TokenBatch.from_grid(x, (2, 2), frames=3)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match=rf"TokenBatch.frames is {bad}, expected a positive int"):
            TokenBatch.from_grid(x, (2, 2), frames=bad)


def test_values_are_checked_only_when_asked(monkeypatch):
    """Value checks read device memory (a host sync), so construction skips them unless TOKENCODEC_CHECK_VALUES
    is set (tests/conftest.py sets it); check_values() runs them at an API boundary."""
    monkeypatch.setattr("tokencodec.tokens.batch.CHECK_VALUES", False)
    bad = make(positions=torch.full((B, N), 6))
    with pytest.raises(ValueError, match=r"TokenBatch.positions hold values in \[6, 6\]"):
        bad.check_values()
    assert make().check_values().num_tokens == N
