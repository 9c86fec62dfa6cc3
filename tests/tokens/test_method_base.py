import pytest
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, get_method


@pytest.mark.parametrize("name", ["dart", "divprune", "prumerge", "random", "sparsevlm", "tome", "visionzip"])
def test_padded_batches_are_refused_by_methods_that_need_real_tokens(name):
    b, n = 2, 16
    batch = TokenBatch.from_grid(torch.randn(b, n, 8), (4, 4), cls_token=torch.randn(b, 8),
                                 keys=torch.randn(b, n, 4), cls_attention=torch.rand(b, n),
                                 context={"rater_attention": torch.rand(b, 3, n)})
    batch.mask = torch.ones(b, n, dtype=torch.bool)
    batch.mask[1, -2:] = False  # the second image holds 14 real tokens
    budget = Budget(r=2) if name == "tome" else Budget(keep=4)
    with pytest.raises(ValueError, match=rf"method '{name}' needs every slot to be a real token"):
        get_method(name)(batch, budget)
