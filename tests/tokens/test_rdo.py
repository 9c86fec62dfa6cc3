"""rdo: Lagrangian token selection; CBR meets K per image, VBR one λ calibrated for an average."""

import pytest
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, BudgetError, get_method
from tokencodec.tokens.compress.rdo import calibrate_lambdas, token_values


def batch(b=4, n=36, seed=0):
    g = torch.Generator().manual_seed(seed)
    att = torch.rand(b, n, generator=g) ** torch.linspace(1, 6, b)[:, None]      # flat to peaked rows
    return TokenBatch.from_grid(torch.randn(b, n, 8, generator=g), (6, 6), cls_attention=att / att.sum(1, keepdim=True))


def test_cbr_is_the_exact_rate_lagrangian_decision():
    x = batch()
    out = get_method("rdo")(x, Budget(keep=9))
    values = token_values(x, "cls-attention")
    lam = out.context["rdo_lambda"]
    for i in range(4):
        kept = set(out.positions[i].tolist())
        assert len(kept) == 9 and all((values[i, j] >= lam[i]) == (j in kept) for j in range(36))
    # with the norm proxy it is the token-norm baseline
    assert torch.equal(get_method("rdo", value="norm")(x, Budget(keep=9)).positions,
                       get_method("token-norm")(x, Budget(keep=9)).positions)


def test_vbr_one_lambda_meets_the_average_on_the_calibration_set_with_per_image_counts():
    x = batch()
    values = token_values(x, "cls-attention")
    ratios = (0.5, 0.25, 0.125)
    lambdas = calibrate_lambdas(list(values), ratios)
    assert list(lambdas) == sorted(lambdas)                       # fewer tokens, higher λ
    vbr = get_method("rdo", rate_control="vbr", ratios=ratios, lambdas=lambdas)
    for r in ratios:
        out = vbr(x, Budget(ratio=r))
        counts = out.counts()
        forced = int((values < lambdas[ratios.index(r)]).all(1).sum())    # rows given their best token anyway
        assert int(counts.sum()) == round(r * 4 * 36) + forced   # the average is met on the calibration set
        assert len(set(counts.tolist())) > 1 and out.mask is not None   # flat rows keep more than peaked ones
        assert bool((out.positions.masked_fill(~out.mask, -1).diff(1)[out.mask[:, 1:]] > 0).all())  # raster
    assert vbr(x, Budget(ratio=1.0)).num_tokens == 36
    alone = vbr(TokenBatch.from_grid(x.features[:1], (6, 6), cls_attention=x.signals["cls_attention"][:1]),
                Budget(ratio=0.25))
    assert alone.mask is None and alone.num_tokens == int(vbr(x, Budget(ratio=0.25)).counts()[0])  # batch-free


def test_vbr_refuses_uncalibrated_budgets_and_bad_options():
    vbr = get_method("rdo", rate_control="vbr", ratios=(0.5,), lambdas=(0.01,))
    with pytest.raises(BudgetError, match=r"λ for average keep ratios \[1.0, 0.5\]"):
        vbr(batch(), Budget(ratio=0.25))
    with pytest.raises(ValueError, match="needs ratios and lambdas"):
        get_method("rdo", rate_control="vbr")
    with pytest.raises(Exception, match="value"):
        get_method("rdo", value="entropy")
