"""scalable: one embedded order; every budget is a prefix of it (nested sets), coarse lattice first."""

import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, get_method
from tokencodec.tokens.compress.base import keep_top_k
from tokencodec.tokens.compress.scalable import lattice_level, prefix


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenBatch.from_grid(torch.randn(2, 196, 8, generator=g), (14, 14),
                                cls_attention=torch.rand(2, 196, generator=g))


def test_every_budget_is_a_prefix_of_one_encode():
    x = batch()
    method = get_method("scalable")
    order = method.encode(x)
    sets = []
    for k in (4, 16, 49, 98, 196):
        direct = method(x, Budget(keep=k))
        assert torch.equal(direct.positions, prefix(x, order, k).positions)      # one encode serves all K
        sets.append([set(p.tolist()) for p in direct.positions])
    for small, large in zip(sets, sets[1:], strict=False):
        assert all(a < b for a, b in zip(small, large, strict=True))           # nested: an embedded order


def test_coarse_lattice_first_then_attention_and_the_priority_order():
    x = batch()
    first16 = get_method("scalable")(x, Budget(keep=16)).positions
    lattice = torch.tensor([y * 14 + c for y in (0, 4, 8, 12) for c in (0, 4, 8, 12)])
    assert all(torch.equal(p, lattice) for p in first16)                         # the stride-4 lattice
    assert lattice_level(14, 14).bincount().tolist() == [16, 33, 147]
    top = keep_top_k(x, x.signals["cls_attention"], 20).positions
    assert torch.equal(get_method("scalable", order="priority")(x, Budget(keep=20)).positions, top)
    # within a level the attention decides: the 17th token is the best-attended stride-2 point
    order = get_method("scalable").encode(x)
    level1 = (lattice_level(14, 14) == 1).nonzero().squeeze(1)
    att = x.signals["cls_attention"][0, level1]
    assert int(order[0, 16]) == int(level1[att.argmax()])
