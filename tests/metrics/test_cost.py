"""Analytic cost accounting checked against PyTorch's FLOP counter on tiny random models, and by hand."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tokencodec.metrics.cost import (
    CLIP_VIT_L14_336,
    CONVENTIONS,
    LLAVA_1_5_7B,
    VICUNA_7B,
    MLLMShape,
    ProjectorShape,
    TextShape,
    VisionShape,
    kv_cache_bytes,
    layer_schedule,
    llm_prefill_flops,
    measure_latency,
    prefill_flops,
    projector_flops,
    tokens_per_layer_summary,
    vit_flops,
)
from tokencodec.metrics.rates import CostModel
from tokencodec.rd.measures import KNOWN

transformers = pytest.importorskip("transformers")


def counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def tiny_llama(**overrides):
    # GQA (2 KV heads for 4 query heads); eager attention so QK^T and A.V are plain matmuls the counter sees.
    config = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=101, attn_implementation="eager")
    return transformers.LlamaConfig(**(config | overrides))


# ------------------------------------------------------------------------------------- against the counter

@pytest.mark.parametrize("overrides", [{}, {"head_dim": 24}, {"num_key_value_heads": 4}])
def test_llama_prefill_matches_flop_counter_exactly(overrides):
    # The counter sees the same matmuls macs2 counts and nothing else (RoPE is elementwise in
    # transformers 5), so the match is exact. head_dim=24 makes q_width (96) differ from hidden (64).
    config = tiny_llama(**overrides)
    model = transformers.LlamaModel(config).eval()
    n = 13
    expected = counted(lambda: model(input_ids=torch.randint(0, 101, (1, n))))
    assert llm_prefill_flops(TextShape.from_config(config), 0, n).total == expected


def test_qwen2_prefill_matches_flop_counter_exactly():
    # Qwen2Config has no head_dim (hidden / heads is used); its Q/K/V biases are not counted by either side.
    config = transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, vocab_size=101,
                                      attn_implementation="eager")
    shape = TextShape.from_config(config)
    assert (shape.head_dim, shape.num_kv_heads) == (16, 1)
    model = transformers.Qwen2Model(config).eval()
    expected = counted(lambda: model(input_ids=torch.randint(0, 101, (1, 11))))
    assert llm_prefill_flops(shape, 0, 11).total == expected


@pytest.mark.parametrize("logits_to_keep", [1, 0])
def test_lm_head_matches_flop_counter(logits_to_keep):
    config = tiny_llama()
    model = transformers.LlamaForCausalLM(config).eval()
    n = 9
    expected = counted(lambda: model(input_ids=torch.randint(0, 101, (1, n)), logits_to_keep=logits_to_keep))
    positions = True if logits_to_keep == 1 else n  # logits_to_keep=0 means every position
    flops = llm_prefill_flops(TextShape.from_config(config), 0, n, include_lm_head=positions)
    assert flops.total == expected
    assert flops.detail["llm.lm_head"] == 2 * (1 if positions is True else n) * 64 * 101


def test_fastv_schedule_matches_flop_counter_layer_by_layer():
    # Run the decoder layers by hand and drop visual tokens before layer K, as FastV does.
    config = tiny_llama(num_hidden_layers=4)
    model = transformers.LlamaModel(config).eval()
    n_visual, text, k, keep = 10, 5, 2, 3
    hidden = model.embed_tokens(torch.randint(0, 101, (1, n_visual + text)))
    positions = torch.arange(n_visual + text)[None]

    def run():
        h, pos = hidden, positions
        for i, layer in enumerate(model.layers):
            if i == k:
                kept = torch.cat([torch.arange(keep), torch.arange(n_visual, n_visual + text)])
                h, pos = h[:, kept], pos[:, kept]  # original positions, RoPE gaps kept
            h = layer(h, attention_mask=None, position_embeddings=model.rotary_emb(h, pos))

    schedule = layer_schedule(4, n_visual, {k: keep})
    assert schedule == [10, 10, 3, 3]
    assert llm_prefill_flops(TextShape.from_config(config), schedule, text).total == counted(run)


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_vit_matches_flop_counter_exactly(model_type):
    # Includes the patch-embedding convolution, which the counter counts (its bias is not, as in macs2).
    # SigLIP has no CLS token; its pooling head is switched off because MLLMs read the hidden states.
    size = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                image_size=42, patch_size=14, attn_implementation="eager")
    if model_type == "clip":
        config = transformers.CLIPVisionConfig(**size)
        model = transformers.CLIPVisionModel(config).eval()
    else:
        config = transformers.SiglipVisionConfig(**size, vision_use_head=False)
        model = transformers.SiglipVisionModel(config).eval()
    shape = VisionShape.from_config(config)
    assert shape.num_tokens == 9 + (model_type == "clip")
    expected = counted(lambda: model(pixel_values=torch.randn(1, 3, 42, 42)))
    assert vit_flops(shape).total == expected


@pytest.mark.parametrize("feature_layer", [-2, [-2, -1]])
def test_projector_matches_flop_counter(feature_layer):
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = transformers.LlavaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4),
        vision_feature_layer=feature_layer)
    shape = ProjectorShape.from_config(config)
    assert shape.dims == (32 * (1 if feature_layer == -2 else 2), 48, 48)
    projector = LlavaMultiModalProjector(config).eval()
    expected = counted(lambda: projector(torch.randn(1, 7, shape.dims[0])))
    assert projector_flops(shape, 7).total == expected


# ------------------------------------------------------------------------------------- LLaVA-1.5-7B by hand

def test_llava_preset_matches_default_llava_config():
    assert MLLMShape.from_config(transformers.LlavaConfig()) == LLAVA_1_5_7B  # HF defaults are LLaVA-1.5-7B
    assert LLAVA_1_5_7B.vision.num_tokens == 577


def test_llava_prefill_flops_under_both_conventions():
    # 576 visual + 46 text = 622 tokens, 32 layers, d=4096, m=11008, LLM only, no lm_head.
    fastv = llm_prefill_flops(VICUNA_7B, 576, 46, convention="fastv").total
    macs2 = llm_prefill_flops(VICUNA_7B, 576, 46).total
    n, d, m = 622, 4096, 11008
    assert fastv == 32 * n * (4 * d * d + 2 * n * d + 2 * d * m) == 3_232_047_824_896
    assert macs2 == 32 * (8 * n * d * d + 4 * n * n * d + 6 * n * d * m) == 8_258_989_326_336
    # The doc's 3.23 and 8.26 TFLOPs are these figures rounded to three digits.
    assert fastv == pytest.approx(3.23e12, rel=0.01)
    assert macs2 == pytest.approx(8.26e12, rel=0.01)
    assert macs2 / fastv == pytest.approx(2.555, abs=0.001)  # the "up to 2.6x" of the doc


def test_llava_pipeline_parts():
    flops = prefill_flops(LLAVA_1_5_7B, 576, 46)
    assert flops.parts["projector"] == 2 * 576 * (1024 * 4096 + 4096 * 4096)
    assert flops.detail["vision.patch_embed"] == 2 * 576 * 3 * 14 * 14 * 1024
    assert flops.parts["vision"] == 24 * (8 * 577 * 1024**2 + 4 * 577**2 * 1024 + 4 * 577 * 1024 * 4096) \
        + flops.detail["vision.patch_embed"]
    assert flops.total == sum(flops.parts.values())
    assert len(flops.per_layer) == 24 + 32
    assert flops.convention_text == CONVENTIONS["macs2"]


def test_fastv_k2_keep144_schedule():
    schedule = layer_schedule(32, 576, {2: 144})
    summary = tokens_per_layer_summary(schedule)
    assert summary.tokens == 576
    assert summary.avg == (2 * 576 + 30 * 144) / 32 == 171.0
    flops = llm_prefill_flops(VICUNA_7B, schedule, 46)
    full, pruned = llm_prefill_flops(VICUNA_7B, 576, 46), llm_prefill_flops(VICUNA_7B, 144, 46)
    assert flops.per_layer[:2] == full.per_layer[:2] and flops.per_layer[2:] == pruned.per_layer[2:]
    # methods.md: T_eq = 192 needs keep = (32*192 - 2*576) / 30 = 166.4; token counts are whole, so 166
    assert tokens_per_layer_summary(layer_schedule(32, 576, {2: 166})).avg == (1152 + 4980) / 32 == 191.625
    with pytest.raises(ValueError, match="whole"):
        tokens_per_layer_summary(layer_schedule(32, 576, {2: 166.4}))


def test_causal_convention_halves_attention_only():
    shape = TextShape(num_layers=1, hidden=8, intermediate=16, num_heads=2, num_kv_heads=1, head_dim=4,
                      vocab_size=10)
    n = 5
    full = llm_prefill_flops(shape, 0, n).total
    causal = llm_prefill_flops(shape, 0, n, convention="macs2-causal").total
    assert full - causal == 2 * 2 * (n * n - n * (n + 1) // 2) * 2 * 4


def test_kv_cache_bytes_by_hand():
    per_token_layer = 2 * 32 * 128 * 2  # K and V, 32 heads of 128, fp16
    assert kv_cache_bytes(VICUNA_7B, 576, 46) == 622 * 32 * per_token_layer == 326_107_136
    fastv = layer_schedule(32, 576, {2: 144})
    assert kv_cache_bytes(VICUNA_7B, fastv, 46) == (2 * 622 + 30 * 190) * per_token_layer
    gqa = TextShape(num_layers=2, hidden=64, intermediate=96, num_heads=4, num_kv_heads=2, head_dim=16,
                    vocab_size=101)
    assert kv_cache_bytes(gqa, [3, 1], 2, dtype_bytes=4) == (5 + 3) * 2 * 2 * 16 * 4


def test_cost_model_rates_use_known_measure_names_and_one_definition_of_tokens():
    # FastV K=2, keep 144: 576 tokens enter the LLM, 144 reach its last layer, 171 on average
    cost = CostModel(LLAVA_1_5_7B, "fastv", ("llm",))
    rates = cost.point(layer_schedule(32, 576, {2: 144}), 46)
    assert set(rates) == {"tokens_in", "tokens", "tokens_avg_layers", "flops", "kv_bytes"}
    assert all(KNOWN[name].kind == "rate" for name in rates)
    assert rates["tokens_in"] == 576 and rates["tokens"] == 144 and rates["tokens_avg_layers"] == 171.0
    n, m = 190, 11008
    assert rates["flops"] == 2 * 622 * (4 * 4096**2 + 2 * 622 * 4096 + 2 * 4096 * m) \
        + 30 * n * (4 * 4096**2 + 2 * n * 4096 + 2 * 4096 * m)
    assert rates["kv_bytes"] == kv_cache_bytes(VICUNA_7B, layer_schedule(32, 576, {2: 144}), 46)
    prov = cost.provenance()
    assert prov["flops_parts"] == ["llm"] and prov["flops_convention"] == "fastv"
    assert set(prov["rates"]) == set(rates)


def test_cost_model_parts_images_and_prefix():
    whole = CostModel(LLAVA_1_5_7B).point(64, 20)
    flops = prefill_flops(LLAVA_1_5_7B, 64, 20)
    assert whole["flops"] == flops.total
    video = CostModel(LLAVA_1_5_7B).point(64, 20, images=4)       # the tower ran on 4 frames
    assert video["flops"] == flops.total + 3 * flops.parts["vision"]
    vit = CostModel(CLIP_VIT_L14_336, prefix_tokens=1)             # a ViT classifier: the CLS is not a visual token
    rates = vit.point([577] * 12 + [145] * 12)
    assert rates["tokens_in"] == 576 and rates["tokens"] == 144 and rates["tokens_avg_layers"] == 360
    assert rates["flops"] == vit_flops(CLIP_VIT_L14_336, [577] * 12 + [145] * 12).total
    assert "kv_bytes" not in rates
    assert CostModel(None).point([7, 7]) == {"tokens": 7.0}
    with pytest.raises(ValueError, match="FLOPs parts"):
        CostModel(CLIP_VIT_L14_336, parts=("llm",))


def test_errors_are_explicit():
    with pytest.raises(ValueError, match="convention"):
        llm_prefill_flops(VICUNA_7B, 576, 46, convention="macs")
    with pytest.raises(ValueError, match="32 layers"):
        llm_prefill_flops(VICUNA_7B, [576] * 31, 46)
    with pytest.raises(ValueError, match="cannot add"):
        vit_flops(LLAVA_1_5_7B.vision) + projector_flops(LLAVA_1_5_7B.projector, 576, "fastv")


def test_measure_latency_returns_positive_numbers():
    x = torch.randn(128, 128)
    result = measure_latency(lambda: x @ x, warmup=1, repeats=3, device="cpu")
    assert len(result.times_s) == 3 and result.median_s > 0 and result.mean_s > 0
    assert result.peak_bytes > 0 and result.peak_bytes >= result.baseline_bytes
    assert result.memory.startswith("cpu:")


def test_cost_model_adds_the_roofline_prediction_for_a_named_device():
    from tokencodec.metrics.roofline import predict_prefill

    cost = CostModel(LLAVA_1_5_7B, device="h200")
    rates = cost.point(64, 20)
    assert rates["latency_pred_s"] == predict_prefill(LLAVA_1_5_7B, None, 64, 20, 1, "h200").latency_s
    assert cost.point(576, 20)["latency_pred_s"] > 0
    assert cost.provenance()["latency_device_profile"]["name"] == "h200"
    assert "latency_pred_s" not in CostModel(LLAVA_1_5_7B).point(64, 20)
