"""FlowCut: the per-layer score, the adaptive count and the ViT schedule, faithful to
TungChintao/FlowCut @ a2ecd24.

Known answers by hand (score, count, one step), the masked signals against the same signals on the
compacted sequence, and a whole forward of a small HF CLIP against a plain reference that shrinks the
sequence at every pruning layer as the official code does. Invariants: exact K, raster order, no
host sync, bf16 == fp32 on untied scores.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from tokencodec.adapters.vision_tower import TOWER_SIGNALS
from tokencodec.metrics.host_sync import HostSyncs
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, get_method
from tokencodec.tokens.compress.flowcut import (
    FlowCut,
    FlowCutRun,
    LayerSignals,
    flowcut_score,
    flowcut_step,
    group_max,
    key_bias,
    layer_signals,
    prune_count,
    start,
    vit_schedule,
)
from tokencodec.tokens.signals import Signal, resolve_request


def test_score_by_hand():
    sig = LayerSignals(relation=torch.tensor([[0.2, 0.6, 0.2]]), semantic=torch.tensor([[1.0, 1.0, 2.0]]),
                       value_l1=torch.tensor([[2.0, 1.0, 4.0]]))
    # (a/Σa + s/Σs)·‖v‖₁ = (0.2 + 0.25)·2, (0.6 + 0.25)·1, (0.2 + 0.5)·4
    torch.testing.assert_close(flowcut_score(sig), torch.tensor([[0.9, 0.85, 2.8]]))


def test_prune_count_by_hand():
    relation = torch.zeros(3, 16)
    relation[0, :2] = 0.5           # H = ln 2 = ¼·ln 16: (16 − 4)/√4 · (1 − 1/16) = 5.625 → 6
    relation[1] = 1 / 16            # uniform: H = ln N, nothing pruned
    relation[2, :4] = 0.25          # H = ½·ln 16: 6 · (1 − ¼) = 4.5 → 4 (round half to even, as torch.round)
    count = torch.full((3,), 16)
    assert prune_count(relation, count, 4, 4).tolist() == [6, 0, 4]
    assert prune_count(relation, count, 4, 4, group=torch.tensor([0, 0, 1])).tolist() == [6, 6, 4]
    assert group_max(torch.tensor([1.0, 5.0, 3.0, 2.0]), torch.tensor([1, 0, 1, 0])).tolist() == [3, 5, 3, 5]
    assert prune_count(relation, count, 4, 1).tolist()[0] == round(12 * (1 - 1 / 16))


def test_one_step_by_hand():
    state = start(1, 6)
    signals = LayerSignals(torch.tensor([[0.3, 0.1, 0.2, 0.15, 0.05, 0.2]]), torch.ones(1, 6), torch.ones(1, 6))
    # layer 0 (remaining odd): C = score, nothing pruned
    state = flowcut_step(state, signals, target=2, remaining=3)
    assert state.live.all() and torch.allclose(state.cumulative, flowcut_score(signals))
    # next layer, remaining 2: EMA, then p = round((6 − 2)/√2 · (1 − (H/ln 6)²))
    signals2 = LayerSignals(torch.tensor([[0.05, 0.4, 0.05, 0.2, 0.1, 0.2]]), torch.ones(1, 6), torch.ones(1, 6))
    cumulative = 0.5 * flowcut_score(signals) + 0.5 * flowcut_score(signals2)
    p = signals2.relation / signals2.relation.sum()
    h = -(p * p.log()).sum()
    drop = round(4 / math.sqrt(2) * (1 - (h / math.log(6)) ** 2).item())
    state = flowcut_step(state, signals2, target=2, remaining=2)
    keep = cumulative[0].argsort(descending=True)[: 6 - drop].sort().values
    assert torch.allclose(state.cumulative, cumulative)
    assert state.live[0].nonzero().flatten().tolist() == keep.tolist() and 0 < drop < 4
    # remaining 0: exactly the target, by cumulative score among the live ones
    state = flowcut_step(state, signals2, target=2, remaining=0)
    assert int(state.live.sum()) == 2


def test_masked_signals_equal_the_signals_of_the_compacted_sequence():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 11, 16, generator=g) * 2 for _ in range(3))
    live = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    masked = layer_signals(q, k, v, heads=4, live=live)
    for b in range(2):
        keep = torch.cat([torch.tensor([0]), live[b].nonzero().flatten() + 1])
        alone = layer_signals(q[b:b + 1, keep], k[b:b + 1, keep], v[b:b + 1, keep], heads=4)
        for got, want in zip(masked, alone, strict=True):
            torch.testing.assert_close(got[b][live[b]], want[0])
        assert (masked.relation[b][~live[b]] == 0).all() and (masked.semantic[b][~live[b]] == 0).all()
    bias = key_bias(live)
    assert bias.shape == (2, 1, 1, 11) and (bias[:, 0, 0, 0] == 0).all() and (bias[0, 0, 0, 2] < -1e30)


def reference_signals(q, k, v, heads):
    """The card's signals written plainly: CLS attention row, CLS-value softmax, L1 of the head-mean value."""
    b, t, d = q.shape
    dh = d // heads
    qh, kh, vh = (x.view(b, t, heads, dh).transpose(1, 2).double() for x in (q, k, v))
    attn = torch.softmax(torch.einsum("bhd,bhtd->bht", qh[:, :, 0], kh) / math.sqrt(dh), dim=-1)
    sem = torch.softmax(torch.einsum("bhd,bhtd->bht", vh[:, :, 0], vh), dim=-1)
    return attn.mean(1)[:, 1:], sem.mean(1)[:, 1:], vh.mean(1)[:, 1:].abs().sum(-1)


def tiny_clip(seed: int, layers: int = 8, sharp: float = 12.0) -> CLIPVisionModel:
    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=layers,
                           image_size=112, patch_size=14, attn_implementation="eager")
    model = CLIPVisionModel(cfg).eval()
    with torch.no_grad():                 # peaked attention, so the adaptive counts move (as in a trained CLIP)
        for layer in model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(sharp)
            layer.self_attn.k_proj.weight.mul_(sharp)
    return model


class QKV:
    """Records each layer's q/k/v projections (what an adapter's hooks capture)."""

    def __init__(self, model):
        self.out, self.handles = {}, []
        for layer in model.encoder.layers:
            for name in ("q_proj", "k_proj", "v_proj"):
                self.handles.append(getattr(layer.self_attn, name).register_forward_hook(
                    lambda mod, args, out, n=name: self.out.__setitem__(n, out)))

    def __call__(self):
        return self.out["q_proj"], self.out["k_proj"], self.out["v_proj"]

    def close(self):
        for h in self.handles:
            h.remove()


def run_flowcut(model, pixels, target, feature_layer, group=None, compact_every=False, count_syncs=False):
    """A minimal adapter: every encoder layer with the run's key bias, then its step (and cut)."""
    run, qkv = FlowCutRun(target, feature_layer, group), QKV(model)
    heads = model.encoder.layers[0].self_attn.num_heads
    try:
        h = model.pre_layrnorm(model.embeddings(pixels))
        for i, layer in enumerate(model.encoder.layers[: feature_layer + 1]):
            h = layer(h, run.key_bias(h.dtype))
            if count_syncs:
                with HostSyncs() as syncs:
                    run.key_bias(h.dtype)
                    slots = run.after_layer(i, *qkv(), heads)
                assert syncs.count() == 0, (i, str(syncs))
            else:
                slots = run.after_layer(i, *qkv(), heads)
            remaining = feature_layer - i - 1
            if slots is None and compact_every and remaining > 0 and remaining % 2 == 0:
                slots = run.compact(int(run.state.live.sum(-1).max()))       # the official shrinking (one read)
            if slots is not None:
                h = h.gather(1, slots[..., None].expand(-1, -1, h.shape[-1]))
    finally:
        qkv.close()
    return run.kept, h


def reference_flowcut(model, pixels, target, feature_layer):
    """The official loop written plainly: the sequence shrinks at each pruning layer, one count per batch."""
    qkv = QKV(model)
    heads = model.encoder.layers[0].self_attn.num_heads
    kept = torch.arange(model.embeddings.num_patches).expand(pixels.shape[0], -1)
    cumulative = None
    try:
        h = model.pre_layrnorm(model.embeddings(pixels))
        for i, layer in enumerate(model.encoder.layers[: feature_layer + 1]):
            h = layer(h, None)
            rem = feature_layer - i - 1
            if h.shape[1] <= target + 1:
                continue
            a, s, v = reference_signals(*qkv(), heads)
            score = (a / a.sum(-1, keepdim=True) + s / s.sum(-1, keepdim=True)) * v
            cumulative = score if cumulative is None else 0.5 * cumulative + 0.5 * score
            if rem % 2:
                continue
            n = h.shape[1] - 1
            if rem == 0:
                drop = n
            else:
                p = a / a.sum(-1, keepdim=True)
                ratio = -(p * p.log()).sum(-1) / math.log(n)
                drop = int(((n - target) / math.sqrt(rem) * (1 - ratio ** 2)).max().round())
            top = cumulative.topk(max(n - drop, target), dim=1).indices.sort(1).values
            cumulative, kept = cumulative.gather(1, top), kept.gather(1, top)
            h = torch.cat([h[:, :1], h[:, 1:].gather(1, top[..., None].expand(-1, -1, h.shape[-1]))], 1)
    finally:
        qkv.close()
    return kept, h


@pytest.mark.parametrize("seed, views, target", [(0, 1, 8), (1, 1, 16), (2, 3, 8), (3, 2, 24), (4, 1, 1)])
def test_whole_forward_matches_the_shrinking_reference(seed, views, target):
    model = tiny_clip(seed)
    pixels = torch.randn(views, 3, 112, 112, generator=torch.Generator().manual_seed(seed))
    group = torch.zeros(views, dtype=torch.long)        # one image's views share the count, as officially
    with torch.no_grad():
        want, h_ref = reference_flowcut(model, pixels, target, 6)
        got, h = run_flowcut(model, pixels, target, 6, group)
        got_c, h_c = run_flowcut(model, pixels, target, 6, group, compact_every=True)
    assert torch.equal(got, want) and torch.equal(got_c, want)
    assert got.shape == (views, target) and (got[:, 1:] > got[:, :-1]).all()
    assert h.shape == (views, 1 + target, 32)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h_c, h_ref, rtol=1e-4, atol=1e-4)


def test_the_counts_adapt_and_rows_alone_equal_rows_in_a_batch():
    model = tiny_clip(5)
    pixels = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    counts = []
    with torch.no_grad():
        run, qkv = FlowCutRun(8, 6), QKV(model)
        h = model.pre_layrnorm(model.embeddings(pixels))
        for i, layer in enumerate(model.encoder.layers[:7]):
            h = layer(h, run.key_bias(h.dtype))
            slots = run.after_layer(i, *qkv(), 4)
            counts.append(run.state.live.sum(-1).tolist())
            if slots is not None:
                h = h.gather(1, slots[..., None].expand(-1, -1, h.shape[-1]))
        qkv.close()
        alone = [run_flowcut(model, pixels[i:i + 1], 8, 6)[0] for i in range(3)]
    assert counts[0] == [64] * 3 and counts[-2] == [8] * 3
    assert any(len(set(c)) > 1 for c in counts)            # no group: each image its own count
    assert all(c1 >= c2 for c1, c2 in zip(counts[1], counts[3], strict=True)) and counts[1][0] < 64
    assert torch.equal(torch.cat(alone), run.kept)


def test_no_host_sync_through_a_forward():
    model = tiny_clip(6)
    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        kept, _ = run_flowcut(model, pixels, 8, 6, count_syncs=True)
    assert kept.shape == (2, 8)


def test_bf16_projections_keep_the_fp32_set_when_scores_are_untied():
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 33, 32, generator=g) for _ in range(3))
    q[:, 0] *= 4            # a peaked CLS row: distinct relation scores
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        state = start(2, 32)
        for rem in (3, 2, 1, 0):
            sig = layer_signals(q.to(dtype), k.to(dtype), v.to(dtype), 4, state.live)
            state = flowcut_step(state, sig, 6, rem)
        out[dtype] = state.live
    assert torch.equal(out[torch.float32], out[torch.bfloat16]) and (out[torch.float32].sum(-1) == 6).all()


def test_schedule_prunes_at_odd_layers_up_to_the_feature_layer():
    rem = vit_schedule(22)
    assert [i for i, r in enumerate(rem) if r % 2 == 0] == list(range(1, 22, 2)) and rem[-1] == 0 and len(rem) == 22


def test_the_registered_method_cuts_one_layer_by_its_score():
    g = torch.Generator().manual_seed(8)
    att, sem = torch.rand(2, 16, generator=g), torch.rand(2, 16, generator=g)
    values = torch.randn(2, 16, 4, generator=g)
    batch = TokenBatch.from_grid(torch.randn(2, 16, 8, generator=g), (4, 4), cls_token=torch.randn(2, 8),
                                 cls_attention=att, cls_value_attention=sem, values=values)
    out = get_method("flowcut")(batch, Budget(keep=5))
    score = flowcut_score(LayerSignals(att, sem, values.abs().sum(-1)))
    assert torch.equal(out.positions, score.argsort(dim=1, descending=True)[:, :5].sort(1).values)
    with pytest.raises(ValueError, match=r"needs signals \['cls_value_attention', 'values'\]"):
        get_method("flowcut")(TokenBatch.from_grid(batch.features, (4, 4), cls_attention=att), Budget(keep=5))
    assert FlowCut.stage == "vision-encoder" and FlowCut.knob == "keep" and FlowCut.needs_cls
    assert FlowCut.needs == (Signal.CLS_ATTENTION, Signal.CLS_VALUE_ATTENTION, Signal.VALUES)
    with pytest.raises(ValueError, match="declares no cls_fallback"):
        resolve_request(FlowCut, TOWER_SIGNALS, False, "SigLIP")
