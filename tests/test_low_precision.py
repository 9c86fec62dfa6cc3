"""Every method in bf16 and fp16 on CPU, compared with float32; and every method × adapter on tiny bf16 models.

Methods alone (``tests/method_cases.py``, scores well separated): the batch in bf16 / fp16 against the same
values in float32. The output keeps the input's dtype (sizes stay float32: they count patches). Per image:

- the kept positions, sources and sizes equal float32's, and the features are within ``TOLERANCE``
  (relative to the row's largest float32 feature; observed: ≤ 0.4 % in bf16, ≤ 0.05 % in fp16);
- except where a decision rests on a near-tie at that precision: DivPrune, CDPruner and VisPruner (their
  similarities in the model's dtype, as the official code), DART's cosines and ToMe's matching score
  features whose similarities are continuous, so there the bf16 choice must be one that float32 itself
  makes when the inputs move
  by the dtype's epsilon (``NOISE``, 32 draws): its own rounding of a similarity near 1 is that large.
  Every other method must match exactly.

Adapters: each method through ``tokencodec.compress`` on the tiny models of tests/test_host_sync.py
cast to bf16 runs, keeps the model's dtype, gives finite logits and the same token counts per layer as
in float32 (the models' own signals differ by bf16 rounding, so the kept sets are compared only at the
method level, where the inputs are controlled).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

import tokencodec
from tokencodec.tokens.compress import get_method

from .method_cases import CASES
from .test_host_sync import ADAPTER_CASES, ADAPTERS, forward, model_for

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {torch.bfloat16: 2 ** -6, torch.float16: 2 ** -9}
NOISE = {dtype: torch.finfo(dtype).eps for dtype in DTYPES.values()}     # 2⁻⁷ (bf16), 2⁻¹⁰ (fp16)
NEAR_TIES = {"divprune", "dart", "tome",          # decisions on continuous similarities in the model's dtype
             "cdpruner", "vispruner"}             # (CDPruner: its greedy DPP; VisPruner: duplicate scores)


def as_dtype(batch, dtype, noise: float = 0.0, generator: torch.Generator | None = None):
    """Every floating tensor but the sizes in ``dtype`` (optionally moved by relative noise first)."""
    def cast(t):
        if t is None or not t.is_floating_point():
            return t
        if noise:
            t = t * (1 + noise * torch.randn(t.shape, generator=generator))
        return t.to(dtype)

    return replace(batch, features=cast(batch.features), cls=cast(batch.cls),
                   signals={k: cast(v) for k, v in batch.signals.items()},
                   context={k: cast(v) for k, v in batch.context.items()})


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_every_method_in_low_precision_matches_float32(case, dtype):
    torch.set_num_threads(1)
    low = as_dtype(case.build(), dtype)
    exact = as_dtype(low, torch.float32)                  # the same values, in float32
    out, ref = case.run(low), case.run(exact)
    assert out.features.dtype == dtype and out.sizes.dtype == torch.float32
    assert out.positions.shape == ref.positions.shape and (out.mask is None) == (ref.mask is None)
    g = torch.Generator().manual_seed(0)
    moved = [case.run(as_dtype(exact, torch.float32, NOISE[dtype], g)) for _ in range(32)] \
        if case.method in NEAR_TIES else []
    for i in range(out.batch_size):
        if not torch.equal(out.positions[i], ref.positions[i]):
            assert any(torch.equal(out.positions[i], m.positions[i]) for m in moved), \
                f"{case.label}: image {i} keeps {out.positions[i].tolist()} in {dtype}, float32 " \
                f"{ref.positions[i].tolist()}, and no float32 run with inputs moved by {NOISE[dtype]} keeps it"
            continue
        assert torch.equal(out.source[i], ref.source[i]) and torch.equal(out.sizes[i], ref.sizes[i])
        if out.mask is not None:
            assert torch.equal(out.mask[i], ref.mask[i])
        scale = ref.features[i].abs().max()
        err = (out.features[i].float() - ref.features[i]).abs().max()
        assert err <= TOLERANCE[dtype] * scale, f"{case.label}: features differ by {err / scale:.2%} in {dtype}"


# -- adapters on tiny bf16 models ------------------------------------------------------------------

def low_precision(inputs: dict, dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


_bf16: dict = {}


def bf16_model(adapter: str):
    fp32 = model_for(adapter)
    if id(fp32) not in _bf16:
        _bf16[id(fp32)] = copy.deepcopy(fp32).to(torch.bfloat16)
    return _bf16[id(fp32)]


def run(adapter, name, model, inputs):
    _, _, _, setting = ADAPTERS[adapter]
    budget, options = setting(name)
    frames = {"frames": 2} if adapter == "clip-tower-video" else {}   # compress() picks TowerVideoCoding
    patch = tokencodec.compress(model, get_method(name), budget, **options, **frames)
    with patch:
        out = forward(model, inputs)
    logits = out if isinstance(out, torch.Tensor) else (out.logits if hasattr(out, "logits") else out[0])
    return logits, patch.record()


@pytest.mark.parametrize(("adapter", "name"), ADAPTER_CASES, ids=[f"{a}-{n}" for a, n in ADAPTER_CASES])
def test_every_method_through_every_adapter_runs_in_bf16(adapter, name):
    torch.set_num_threads(1)
    inputs = ADAPTERS[adapter][1]()
    logits32, rec32 = run(adapter, name, model_for(adapter), inputs)
    logits16, rec16 = run(adapter, name, bf16_model(adapter), low_precision(inputs, torch.bfloat16))
    assert logits16.dtype == torch.bfloat16 and logits16.shape == logits32.shape
    assert torch.isfinite(logits16).all()
    assert rec16.tokens_per_layer == rec32.tokens_per_layer
    kept16, kept32 = (rec.kept if not isinstance(rec.kept, list) else rec.kept[0] for rec in (rec16, rec32))
    if kept16 is not None:
        assert kept16.features.dtype == torch.bfloat16 and kept16.positions.shape == kept32.positions.shape
