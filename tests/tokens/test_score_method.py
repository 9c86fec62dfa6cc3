"""Score-only methods: implement ``score`` and the base class keeps the top-K in raster order."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import METHODS, Budget, BudgetError, ScoreMethod, get_method
from tokencodec.tokens.compress.base import keep_top_k
from tokencodec.tokens.compress.fastv import FastV
from tokencodec.tokens.compress.fastv import keep_top_k as fastv_keep_top_k
from tokencodec.tokens.compress.norm import TokenNorm
from tokencodec.tokens.compress.pyramiddrop import PyramidDrop


class ByPosition(ScoreMethod):
    """Test-only: prefers the later patches."""

    name = "_test_by_position"

    def score(self, batch: TokenBatch) -> Tensor:
        return batch.positions.float()


def test_score_method_keeps_top_k_in_raster_order():
    batch = TokenBatch.from_grid(torch.randn(2, 6, 2), (2, 3))
    assert ByPosition()(batch, Budget(keep=3)).positions.tolist() == [[3, 4, 5]] * 2
    with pytest.raises(BudgetError, match=r"\[1, 6\]"):
        ByPosition()(batch, Budget(keep=7))


def test_score_shape_is_checked():
    class Wrong(ScoreMethod):
        name = "_test_wrong"

        def score(self, batch):
            return batch.features[..., 0].T

    with pytest.raises(ValueError, match=r"method '_test_wrong': score has shape \(6, 2\), expected \[B=2, N=6\]"):
        Wrong()(TokenBatch.from_grid(torch.randn(2, 6, 2), (2, 3)), Budget(keep=2))


def test_token_norm_keeps_the_largest_norms():
    assert METHODS.get("token-norm") is TokenNorm and issubclass(TokenNorm, ScoreMethod)
    assert (TokenNorm.stage, TokenNorm.guidance, TokenNorm.knob, TokenNorm.needs) == ("pre-llm", "vision", "keep", ())
    norms = torch.tensor([[1.0, 5.0, 2.0, 5.0, 4.0, 0.5]])
    x = norms[..., None] * torch.nn.functional.normalize(torch.randn(1, 6, 3), dim=-1)
    out = get_method("token-norm")(TokenBatch.from_grid(x, (2, 3)), Budget(keep=3))
    assert out.positions.tolist() == [[1, 3, 4]]                            # raster order, not norm order
    assert torch.equal(out.features, x[:, [1, 3, 4]])
    ties = TokenBatch.from_grid(torch.ones(1, 4, 2), (2, 2))
    assert get_method("token-norm")(ties, Budget(keep=2)).positions.tolist() == [[0, 1]]   # ties: lower index


def test_token_norm_ranks_padded_slots_last():
    x = torch.tensor([[[1.0], [0.0], [3.0]]])   # the padded slot has zero features, but rank-last is by mask
    batch = TokenBatch(features=x * torch.tensor([1.0, 9.0, 1.0])[None, :, None], grid=(1, 3),
                       mask=torch.tensor([[True, False, True]]))
    out = TokenNorm()(batch, Budget(keep=2))
    assert out.positions.tolist() == [[0, 2]] and out.mask is None         # all real: mask dropped
    padded = TokenNorm()(batch, Budget(keep=3))
    assert padded.mask.tolist() == [[True, False, True]]


def test_fastv_and_pyramiddrop_are_score_methods_with_unchanged_results():
    attn = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05], [0.2, 0.2, 0.2, 0.1, 0.3]])
    batch = TokenBatch(features=torch.randn(2, 5, 3), grid=(1, 5), signals={"text_attention": attn})
    for method in (FastV(), PyramidDrop()):
        assert isinstance(method, ScoreMethod)
        assert torch.equal(method.score(batch), attn)
        assert method(batch, Budget(keep=2)).positions.tolist() == [[1, 3], [0, 4]]
        with pytest.raises(ValueError, match="needs signals"):
            method(TokenBatch.from_grid(torch.randn(1, 4, 2)), Budget(keep=2))
    assert fastv_keep_top_k is keep_top_k                                     # still importable from fastv
