"""Budget validation and coercion: impossible budgets are refused when they are written, not deep in a run."""

from __future__ import annotations

import numpy as np
import pytest

from tokencodec.tokens.compress import Budget, BudgetError


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep=2.5), r"keep=2.5 must be an int \(a token count >= 1\), not float"),
    (dict(keep=0), r"keep=0 is outside the allowed range \[1, N\]"),
    (dict(keep=-3), r"keep=-3 is outside the allowed range \[1, N\]"),
    (dict(keep=True), r"keep=True must be an int .*, not bool"),
    (dict(keep="4"), r"keep='4' must be an int .*, not str"),
    (dict(ratio="0.5"), r"ratio='0.5' must be a real number \(int or float\) in \(0, 1\], not str"),
    (dict(ratio=True), r"ratio=True must be a real number .*, not bool"),
    (dict(ratio=0), r"ratio=0 is outside the allowed range \(0, 1\]"),
    (dict(ratio=1.5), r"ratio=1.5 is outside the allowed range \(0, 1\]"),
    (dict(ratio=float("nan")), r"ratio=nan is outside the allowed range"),
    (dict(r=-1), r"r=-1 is outside the allowed range \[0, N/2\]"),
    (dict(r=1.5), r"r=1.5 must be an int .*, not float"),
    (dict(r=False), r"r=False must be an int .*, not bool"),
    (dict(), r"give exactly one of keep"),
    (dict(keep=4, ratio=0.5), r"give exactly one of keep"),
])
def test_bad_budgets_name_the_field_value_and_range(kwargs, message):
    with pytest.raises(BudgetError, match=message):
        Budget(**kwargs)


def test_good_budgets_are_stored_as_python_numbers():
    assert Budget(keep=np.int64(3)).keep == 3 and type(Budget(keep=np.int64(3)).keep) is int
    assert Budget(ratio=1) == Budget(ratio=1.0) and type(Budget(ratio=1).ratio) is float
    assert type(Budget(ratio=np.float32(0.5)).ratio) is float
    assert Budget(r=0).r == 0


def test_coerce():
    b = Budget(keep=4)
    assert Budget.coerce(b) is b
    assert Budget.coerce(64) == Budget(keep=64) and Budget.coerce(np.int32(8)) == Budget(keep=8)
    assert Budget.coerce(0.25) == Budget(ratio=0.25)
    for bad in (True, "0.5", None, [4]):
        with pytest.raises(BudgetError, match="must be a Budget, an int"):
            Budget.coerce(bad)
    with pytest.raises(BudgetError, match="keep=0"):
        Budget.coerce(0)


def test_adapters_share_the_one_coercion():
    # each adapter used to write its own int/float rule; they now call Budget.coerce
    import inspect

    pytest.importorskip("transformers")
    from tokencodec.adapters import efficientnet, llava, qwen2_vl, qwen2_vl_llm, vision_tower

    for module in (llava, qwen2_vl, qwen2_vl_llm, vision_tower, efficientnet):
        src = inspect.getsource(module)
        assert "Budget.coerce(" in src and "Budget(keep=budget)" not in src, module.__name__
