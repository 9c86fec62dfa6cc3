"""HostSyncs: each way a value crosses between host and device is recorded once, with its tokencodec line; work
that stays on one side is not. On CPU the recorder emulates a device (tensors from outside are device tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokencodec.metrics.host_sync import HostSyncs
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.transfer import on_device, to_device, to_host

X = torch.randn(6, 4)                  # created outside the recorder: a device tensor
IDX = torch.tensor([0, 2, 3])


def events(fn) -> list[tuple[str, str]]:
    with HostSyncs() as syncs:
        fn()
    return [(e.kind, e.op) for e in syncs.events]


def _setitem_scalar_at_indices():
    x = X.clone()
    x[IDX] = 1.0


def _setitem_scalar_at_mask():
    x = X.clone()
    x[x > 0] = 0.0


@pytest.mark.parametrize("fn, op", [
    (lambda: X.sum().item(), "Tensor.item"),
    (lambda: X.tolist(), "Tensor.tolist"),
    (lambda: bool(X[0, 0] > 0), "Tensor.__bool__"),
    (lambda: int(X.argmax()), "Tensor.__int__"),
    (lambda: float(X.sum()), "Tensor.__float__"),
    (lambda: list(range(X.argmax())), "Tensor.__index__"),
    (lambda: X.numpy(), "Tensor.numpy"),
    (lambda: np.asarray(X), "Tensor.__array__"),
    (lambda: X.cpu(), "Tensor.cpu"),
    (lambda: X.to("cpu"), "Tensor.to('cpu')"),
    (lambda: X[X > 0], "aten.index"),
    (lambda: X.nonzero(), "aten.nonzero"),
    (lambda: X.masked_select(X > 0), "aten.masked_select"),
    (lambda: X.unique(), "aten._unique2"),
    (lambda: X.repeat_interleave(IDX.new_ones(6), dim=0), "aten.repeat_interleave"),
    (lambda: torch.bincount(IDX), "aten.bincount"),
    (lambda: torch.equal(X, X), "aten.equal"),
])
def test_reads_of_device_values_are_recorded_once(fn, op):
    assert events(fn) == [("read", op)]


@pytest.mark.parametrize("fn, op", [
    (lambda: torch.arange(6).to(X.device), "Tensor.to (host tensor to device)"),
    (lambda: torch.tensor([0.25, 0.75], device=X.device), "torch.tensor(data, device=...)"),
    (lambda: X[torch.arange(3)], "TensorBase.__getitem__ mixing host and device tensors"),
    (lambda: X[[0, 1]], "Tensor.__getitem__ with a list index (copied to the device)"),
    (_setitem_scalar_at_indices,
     "Tensor.__setitem__ of a Python scalar at tensor indices (the scalar is copied to the device)"),
])
def test_blocking_copies_to_the_device_are_recorded(fn, op):
    assert events(fn) == [("copy", op)]


@pytest.mark.parametrize("fn", [
    lambda: (torch.arange(6) * 2).nonzero().tolist(),                   # host data read on the host
    lambda: torch.arange(6, device=X.device).argsort()[X.argmax(1)],     # device work, device indices
    lambda: X.topk(2, dim=1).indices.sort(1).values.gather(1, IDX.new_zeros(6, 1).to(X.device, non_blocking=True)),
    lambda: X.repeat_interleave(2, dim=0),                               # a count known on the host
    lambda: X.repeat_interleave(IDX.new_ones(6), dim=0, output_size=6),
    lambda: torch.zeros(3, 3, device=X.device).scatter_(1, torch.zeros(3, 1, dtype=torch.long, device=X.device), 1.0),
    lambda: torch.tensor([], device=X.device),                           # nothing to copy
    lambda: X * torch.tensor(2.0),                                       # a 0-d host tensor is a scalar
    lambda: X.shape[0] + len(X),
    _setitem_scalar_at_mask,                                             # masked_fill_: no read
])
def test_work_that_stays_on_one_side_is_not_recorded(fn):
    assert events(fn) == []


def test_moved_and_numpy_tensors_are_host_tensors_and_moves_back_are_device_tensors():
    def fn():
        host = X.cpu()                                      # one read …
        host.tolist(), host[host > 0], torch.from_numpy(np.ones(3)).tolist()   # … then host work
        to_device(host, X.device).sum()                     # non-blocking: no wait
        back = host.to(X.device)                            # a blocking copy …
        back[back > 0]                                      # … and a device tensor again
    assert events(fn) == [("read", "Tensor.cpu"), ("copy", "Tensor.to (host tensor to device)"),
                          ("read", "aten.index")]


def test_events_name_the_tokencodec_line_and_library_reads_stay_apart():
    batch = TokenBatch(features=torch.randn(1, 2, 3), grid=(2, 2), positions=torch.tensor([[3, -1]]))
    with HostSyncs() as syncs:
        batch.check_values()                                # a tokencodec read
        X.sum().item()                                      # this test file: not tokencodec
    inside, outside = syncs.events
    assert inside.where.startswith("tokens/batch.py:") and inside.where == inside.site
    assert outside.where is None and outside.site.endswith(f"test_host_sync.py:{outside.site.rsplit(':')[-1]}")
    assert syncs.count() == 1 and syncs.count(library=True) == 2
    assert str(syncs) == f"1 host syncs in tokencodec: {inside.where} Tensor.tolist (+1 outside tokencodec)"


def test_transfer_helpers_read_once_and_copy_without_blocking():
    a, b = torch.randn(3, 2), torch.arange(5)
    with HostSyncs() as syncs:
        host_a, host_b = to_host(a, b)
        host_a.tolist(), host_b.tolist()
    assert syncs.count(library=True) == 1                   # one packed read
    assert torch.equal(host_a, a) and torch.equal(host_b, b) and host_b.dtype == torch.long

    @on_device
    def plan(n: int) -> torch.Tensor:
        return torch.arange(n) * 2

    assert plan("cpu", 4) is plan(torch.device("cpu"), 4)   # cached per device and shape
    with HostSyncs() as syncs:
        (X[:, :1] * plan(X.device, 4)).argmax(1)
    assert syncs.events == []


def test_the_recorder_leaves_torch_as_it_was():
    factory = torch.from_numpy
    with HostSyncs():
        assert torch.from_numpy is not factory
    assert torch.from_numpy is factory
    X.sum().item()                                          # no mode left behind


def test_on_an_accelerator_only_real_device_tensors_count():
    with HostSyncs(emulate=False) as syncs:
        X.sum().item(), X.nonzero(), torch.arange(3).to(X.device)
    assert syncs.events == []
