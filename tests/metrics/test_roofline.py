"""The roofline latency model: its kernel recipes against traced HF forwards, and its predictions against the
H200 measurements of ../shared/docs/gpu-measurements.md (fit on some rows, error reported on the others)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from tokencodec.metrics.cost import LLAVA_1_5_7B, MLLMShape, ProjectorShape, TextShape, VisionShape, prefill_flops
from tokencodec.metrics.kernels import count_by_group, launches_kernel, trace_kernels
from tokencodec.metrics.roofline import (
    PROFILES,
    QWEN2_VL_7B,
    SYNC,
    decode_plan,
    get_profile,
    known_profiles,
    predict_decode_step,
    predict_prefill,
    prefill_plan,
    probe_cpu,
    simulate,
)

transformers = pytest.importorskip("transformers")

# ------------------------------------------------------------------------------------- recipes vs traces


def tiny_llava(vision_layers: int = 2, text_layers: int = 2):
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=vision_layers,
                                       num_attention_heads=4, image_size=56, patch_size=14)
    # GQA and a head_dim that is not hidden / heads, so that every width of the recipe is exercised
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=text_layers,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=24, vocab_size=100,
                                  max_position_embeddings=512)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_id=5, image_seq_length=16,
                                   attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.LlavaForConditionalGeneration(cfg).eval().to(torch.bfloat16)


def llava_inputs(batch: int) -> dict:
    ids = torch.tensor([[1, 2, 3] + [5] * 16 + [7, 8, 9, 10]] * batch)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=torch.randn(batch, 3, 56, 56, dtype=torch.bfloat16), logits_to_keep=1)


def llava_groups(model) -> dict:
    inner = model.model
    return {"vision": [inner.vision_tower], "projector": [inner.multi_modal_projector],
            "llm": list(inner.language_model.layers), "lm_head": [inner.language_model.norm, model.lm_head]}


def plan_ops(plan) -> list[tuple[str, str]]:
    """(group, op) of a plan, the LLM groups merged as the trace sees them; syncs as 'sync'."""
    out = []
    for group, step in plan.steps:
        group = "llm" if group.startswith("llm.") else group
        out.append((group, SYNC if step == SYNC else step.op))
    return out


def traced_ops(ops) -> list[tuple[str, str]]:
    out = []
    for op in ops:
        name = op.op.removesuffix("_for_cpu")  # the CPU flavour of the same SDPA kernel
        out += [(op.group, name)] if not op.host_read else [(op.group, SYNC)]
    return out


def bytes_by_group(plan) -> dict[str, int]:
    total: dict[str, int] = {}
    for group, step in plan.steps:
        if step != SYNC:
            total[group] = total.get(group, 0) + step.bytes
    return total


@pytest.mark.parametrize("batch", [1, 2])
def test_llava_recipe_is_the_traced_forward(batch):
    model = tiny_llava()
    inputs = llava_inputs(batch)
    with torch.no_grad():
        model(**inputs)  # warm-up: lazy initialisation is not part of a forward
    ops = trace_kernels(lambda: model(**inputs), llava_groups(model))
    shape = MLLMShape.from_config(model.config)
    plan = prefill_plan(shape, None, 16, 7, batch)
    # every kernel, in order, in its group; the host reads exactly where transformers does them
    assert plan_ops(plan) == traced_ops(ops)
    # bytes per layer: the recipe's ideal traffic equals the operands the traced ops touched
    # ("other" is not compared: the trace charges an embedding lookup the whole table, the recipe the rows read)
    traced = {g: sum(o.bytes for o in ops if o.group == g) for g in ("llm", "vision", "projector", "lm_head")}
    modelled = bytes_by_group(plan)
    assert modelled["llm.attention"] + modelled["llm.mlp"] == pytest.approx(traced["llm"], rel=0.01)
    for group in ("vision", "projector", "lm_head"):
        assert modelled[group] == pytest.approx(traced[group], rel=0.01), group


def test_llava_decode_recipe_is_the_traced_step():
    model = tiny_llava()
    inputs = llava_inputs(2)
    with torch.no_grad():
        cache = model(**inputs, use_cache=True).past_key_values
    n = inputs["input_ids"].shape[1]
    step = dict(input_ids=torch.tensor([[11], [12]]), cache=cache, use_cache=True,
                attention_mask=torch.ones(2, n + 1, dtype=torch.long), cache_position=torch.tensor([n]))
    ops = trace_kernels(lambda: model(**step), llava_groups(model))
    plan = decode_plan(MLLMShape.from_config(model.config), n, 2)
    assert plan_ops(plan) == traced_ops(ops)
    traced = sum(o.bytes for o in ops if o.group == "llm")
    modelled = bytes_by_group(plan)
    assert modelled["llm.attention"] + modelled["llm.mlp"] == pytest.approx(traced, rel=0.01)


def qwen2_vl_shape(model) -> MLLMShape:
    v, t = model.config.vision_config, model.config.text_config
    merge = v.spatial_merge_size ** 2
    return MLLMShape(VisionShape(v.depth, v.embed_dim, v.embed_dim * v.mlp_ratio, v.num_heads, image_size=56,
                                 patch_size=v.patch_size, num_channels=v.in_channels * v.temporal_patch_size,
                                 cls_token=False),
                     ProjectorShape((v.embed_dim * merge, v.embed_dim * merge, v.hidden_size)),
                     TextShape.from_config(t))


@pytest.mark.parametrize("batch", [1, 2])
def test_qwen2_vl_recipe_is_the_traced_forward(tmp_path, batch):
    from tokencodec.models.tiny import save_tiny_qwen2_vl

    save_tiny_qwen2_vl(tmp_path)
    model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(
        tmp_path, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    cfg = model.config
    ids = torch.tensor([[1, 2, cfg.vision_start_token_id] + [cfg.image_token_id] * 4
                        + [cfg.vision_end_token_id, 7, 8, 9]] * batch)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1,
                  mm_token_type_ids=(ids == cfg.image_token_id).long(),
                  pixel_values=torch.randn(16 * batch, 3 * 2 * 14 * 14, dtype=torch.bfloat16),
                  image_grid_thw=torch.tensor([[1, 4, 4]] * batch))
    with torch.no_grad():
        model(**inputs)
    inner = model.model
    groups = {"vision": [inner.visual], "projector": [inner.visual.merger], "llm": list(inner.language_model.layers),
              "lm_head": [inner.language_model.norm, model.lm_head]}
    ops = trace_kernels(lambda: model(**inputs), groups)
    plan = prefill_plan(qwen2_vl_shape(model), 16, 4, 7, batch, recipe="hf-qwen2-vl")
    assert plan_ops(plan) == traced_ops(ops)
    traced = {g: sum(o.bytes for o in ops if o.group == g) for g in ("llm", "vision", "projector", "lm_head")}
    modelled = bytes_by_group(plan)
    assert modelled["llm.attention"] + modelled["llm.mlp"] == pytest.approx(traced["llm"], rel=0.01)
    # the vision tower's rotary tables are charged their floor only (a few kB at any size)
    assert modelled["vision"] == pytest.approx(traced["vision"], rel=0.05)
    for group in ("projector", "lm_head"):
        assert modelled[group] == pytest.approx(traced[group], rel=0.01), group


def test_kernel_count_per_layer_does_not_depend_on_width_and_matches_the_h200_profile():
    # LLaVA-1.5-7B's depth (24 CLIP layers, 32 Llama layers) at toy widths: the launches the H200 profiler
    # counted for the real model (1 664) are the traced count up to ops that launch more than one CUDA kernel
    model = tiny_llava(24, 32)
    inputs = llava_inputs(1)
    with torch.no_grad():
        model(**inputs)
    ops = trace_kernels(lambda: model(**inputs), llava_groups(model))
    plan = prefill_plan(LLAVA_1_5_7B, None, 576, 20, 1)
    assert plan.kernels == sum(not o.host_read for o in ops)
    assert count_by_group(ops)["llm"] == 32 * 40 and count_by_group(ops)["vision"] == 24 * 14 + 6
    assert plan.host_syncs == sum(o.host_read for o in ops) == 3  # transformers' own, as the H200 run saw
    # 1 657 kernels + 3 device-to-host copies = 1 660 against 1 664 launches in the H200 profile
    assert abs(len(ops) - 1664) / 1664 < 0.005


def test_trace_kernels_skips_views_and_restores_the_model():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 5, 4)
    ops = trace_kernels(lambda: lin(x).transpose(0, 1).reshape(-1).sum().item(), {"lin": [lin]})
    assert [(o.group, o.op) for o in ops] == [("lin", "addmm"), ("other", "clone"), ("other", "sum"),
                                               ("other", "_local_scalar_dense")]
    assert ops[-1].host_read and not any(o.host_read for o in ops[:-1])
    assert ops[0].bytes == 4 * (2 * 5 * 4 + 4 * 3 + 3 + 2 * 5 * 3)
    assert lin._forward_hooks == {} and lin._forward_pre_hooks == {}
    assert not launches_kernel(torch.ops.aten.view.default) and launches_kernel(torch.ops.aten.mm.default)


# ------------------------------------------------------------------------------------- the model itself


def test_group_flops_are_cost_py_macs2():
    p = predict_prefill(LLAVA_1_5_7B, None, [576] * 2 + [64] * 30, 20, 3, "h200", logits_rows=0)
    ref = prefill_flops(LLAVA_1_5_7B, [576] * 2 + [64] * 30, 20)
    assert p.group("vision").flops == 3 * ref.parts["vision"]
    assert p.group("projector").flops == 3 * ref.parts["projector"]
    assert p.group("llm.attention").flops + p.group("llm.mlp").flops == 3 * ref.parts["llm"]
    assert p.group("lm_head").flops == 0


def test_weights_are_read_once_per_forward_whatever_the_batch():
    t = LLAVA_1_5_7B.text
    weights = 2 * t.num_layers * (4 * t.hidden * t.hidden + 3 * t.hidden * t.intermediate)

    def gemm_bytes(batch: int) -> int:
        plan = prefill_plan(LLAVA_1_5_7B, None, 64, 20, batch)
        return sum(k.bytes for g, k in plan.steps if g.startswith("llm.") and k.op == "mm")

    one, two, eight = gemm_bytes(1), gemm_bytes(2), gemm_bytes(8)
    # bytes = weights + batch × activations: the intercept is exactly the LLM's weights, read once
    assert 2 * one - two == weights
    assert eight - one == 7 * (two - one)


def test_decode_step_is_memory_bound_and_grows_with_the_cache():
    short = predict_decode_step(LLAVA_1_5_7B, 64, 20, 0, 32, "h200", launch="graph")
    long = predict_decode_step(LLAVA_1_5_7B, 576, 20, 0, 32, "h200", launch="graph")
    assert short.bound == "memory" and long.bound == "memory"
    assert long.latency_s > short.latency_s
    kv = 2 * 2 * 32 * 4096 * 32  # K and V, bf16, per token of the 32-sample batch
    # the cache is read by SDPA and rewritten by DynamicCache's concatenation: ~3 passes per token and layer
    assert long.bytes - short.bytes == pytest.approx(3 * kv * (576 - 64), rel=0.02)
    eager = predict_decode_step(LLAVA_1_5_7B, 64, 20, 0, 1, "h200")
    assert eager.bound == "launch"  # one token, ~1 300 kernels


def test_graphing_the_llm_only_removes_the_llm_layers_host_time():
    # benchmarks/gpu_prefill.py --graphs replays the LLM's decoder layers from a CUDA graph, the rest eager
    kw = dict(extra_kernels=191, host_syncs=1)
    eager, llm, whole = (predict_prefill(LLAVA_1_5_7B, None, 64, 20, 1, "h200", launch=launch, **kw)
                         for launch in ("eager", "graph-llm", "graph"))
    assert eager.latency_s > llm.latency_s > whole.latency_s
    assert llm.group("llm.attention").host_s == llm.group("llm.mlp").host_s == 0
    for group in ("vision", "projector", "method", "lm_head"):
        assert llm.group(group).host_s == eager.group(group).host_s > 0
    assert llm.device_s == pytest.approx(eager.device_s)      # the same kernels run on the device
    with pytest.raises(ValueError, match="graph-llm"):
        predict_prefill(LLAVA_1_5_7B, None, 64, 20, 1, "h200", launch="graphs")


def test_a_sync_costs_the_drain_of_the_work_the_host_ran_ahead_of():
    # FastV-like: two LLM layers on 596 tokens, then 30 on 84. At batch 8 the first two are device-bound and
    # the host runs ahead, issuing the cheap layers early; a sync at layer 2 makes it wait for the device to
    # drain and lose that lead. At batch 1 the host is behind everywhere: a sync costs sync_s and no drain.
    h200 = get_profile("h200")
    schedule = [576] * 2 + [64] * 30
    for batch, drains in ((1, False), (8, True)):
        plain = predict_prefill(LLAVA_1_5_7B, None, schedule, 20, batch, h200)
        synced = predict_prefill(LLAVA_1_5_7B, None, schedule, 20, batch, h200, host_syncs=1)
        added = synced.latency_s - plain.latency_s
        assert added >= h200.sync_s * 0.99
        assert (added > 1e-3) == drains, (batch, added)
        assert synced.host_syncs == plain.host_syncs + 1 and synced.group("method").host_syncs == 1


def test_groups_add_up_and_a_method_runs_where_it_acts():
    fastv = prefill_plan(LLAVA_1_5_7B, None, [576] * 2 + [64] * 30, 20, 1, extra_kernels=10, host_syncs=2)
    groups = [g for g, _ in fastv.steps]
    first_method = groups.index("method")
    # in-LLM: after two decoder layers' kernels (40 each), before the third
    assert groups[:first_method].count("llm.attention") + groups[:first_method].count("llm.mlp") == 2 * 40
    assert fastv.assumptions["method_at"] == "before LLM layer 2"
    visionzip = prefill_plan(LLAVA_1_5_7B, None, 64, 20, 1, extra_kernels=10)
    assert [g for g, _ in visionzip.steps].index("method") < [g for g, _ in visionzip.steps].index("llm.attention")
    for plan in (fastv, visionzip):
        for launch in ("eager", "graph"):
            p = simulate(plan, "h200", launch)
            assert sum(g.time_s for g in p.groups) == pytest.approx(p.latency_s, rel=1e-9)
            assert p.latency_s >= max(p.device_s, p.host_s) - 1e-12
            assert (p.host_s == 0) == (launch == "graph")


def test_profiles_registry_and_the_cpu_probe():
    assert {"h200", "h100-sxm", "a100-80gb", "l40s", "cpu"} <= set(known_profiles())
    with pytest.raises(ValueError, match="known: h200"):
        get_profile("h300")
    for profile in PROFILES.values():
        assert 0 < profile.compute_eff <= 1 and 0 < profile.memory_eff <= 1 and profile.source
    with pytest.raises(ValueError, match="efficiencies"):
        replace(PROFILES["h200"], compute_eff=1.2)
    cpu = probe_cpu()
    assert get_profile("cpu") is cpu  # probed once
    assert cpu.synchronous and 1e8 < cpu.peak(4) < 1e14 and 1e8 < cpu.bandwidth < 1e13 and 0 < cpu.launch_s < 1e-3
    p = predict_prefill(LLAVA_1_5_7B, None, 64, 20, 1, "cpu")
    # a CPU runs every op itself: its time is the host's plus the device's
    assert p.latency_s == pytest.approx(p.host_s + p.device_s, rel=1e-9)
    assert p.provenance()["profile"]["name"] == "cpu" and p.rates() == {"latency_pred_s": p.latency_s}
    assert json.loads(json.dumps(p.provenance()))["method_at"] == "before the LLM"  # fit for a results file


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="known: hf-llava"):
        prefill_plan(LLAVA_1_5_7B, None, 64, 20, recipe="vllm")
    with pytest.raises(ValueError, match="one whole count per layer"):
        prefill_plan(LLAVA_1_5_7B, None, [64] * 3, 20)
    with pytest.raises(ValueError, match="extra_kernels"):
        prefill_plan(LLAVA_1_5_7B, None, 64, 20, extra_kernels=-1)
    with pytest.raises(ValueError, match="launch mode"):
        simulate(prefill_plan(LLAVA_1_5_7B, None, 64, 20), "h200", "compiled")
    with pytest.raises(ValueError, match="no peak"):
        predict_prefill(LLAVA_1_5_7B, None, 64, 20, 1, "h200", dtype_bytes=1)


def test_fit_profile_refuses_unknown_fields_and_recovers_a_known_profile():
    from tokencodec.metrics.roofline import Observation, fit_profile

    with pytest.raises(ValueError, match="cannot fit"):
        fit_profile("h200", [], fields=("peak",))
    # observations made by the model itself with a known profile: the fit finds that profile again
    truth = replace(PROFILES["h200"], compute_eff=0.5, memory_eff=0.8)
    plans = [prefill_plan(LLAVA_1_5_7B, None, k, 20, b, recipe="bare") for b, k in ((8, 576), (1, 64), (32, 64))]
    obs = [Observation(f"p{i}", plan, simulate(plan, truth, "graph").latency_s, launch="graph")
           for i, plan in enumerate(plans)]
    fitted, _ = fit_profile(PROFILES["h200"], obs, fields=("compute_eff", "memory_eff"))
    assert fitted.compute_eff == pytest.approx(0.5, rel=1e-3) and fitted.memory_eff == pytest.approx(0.8, rel=1e-3)


def test_qwen2_vl_7b_shape_matches_its_config():
    v = dict(depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, hidden_size=3584, patch_size=14,
             spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    t = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, vocab_size=152064)
    cfg = transformers.Qwen2VLConfig(vision_config=v, text_config=t)
    assert QWEN2_VL_7B.text == TextShape.from_config(cfg.text_config)
    assert (QWEN2_VL_7B.vision.hidden, QWEN2_VL_7B.vision.num_layers) == (1280, 32)
    assert QWEN2_VL_7B.projector.dims[-1] == cfg.text_config.hidden_size
    assert math.isclose(QWEN2_VL_7B.vision.num_patches / 4, 576)


# ------------------------------------------------------------------------------------- against the H200
# ../shared/docs/gpu-measurements.md: random-weight LLaVA-1.5-7B shape, bf16, SDPA, one 336 px image and a
# 20-token question (576 + 20 tokens), whole prefill with logits_to_keep=1; K = visual tokens kept.

NONE_LAUNCHES, NONE_SYNCS = 1664, 3
# the profiler table (batch 1, K=64): kernel launches and host syncs per forward
PROFILED = {"none": (1664, 3), "random": (1763, 14), "visionzip": (1855, 16), "fastv": (1815, 14),
            "divprune": (2100, 76), "pool-avg": (1778, 16)}
# DivPrune's greedy loop as measured on the H200 (tokens/compress/divprune.py at 3a2a81d): per kept token after
# the first, 6 kernels and one host sync (the index_put_ of a Python True). Since then the loop stays on the device:
# 5 kernels and no sync per step (test_divprune_loop_is_five_kernels_and_no_sync).
DIVPRUNE_STEP = (6, 1)
WALL_B1 = {"none": {576: 49.2}, "visionzip": {64: 63.3, 144: 79.5, 192: 78.6},
           "divprune": {64: 85.9, 144: 95.4, 192: 100.8}, "pool-avg": {64: 70.9, 144: 53.0, 192: 62.9},
           "random": {64: 65.8, 144: 63.8, 192: 61.0}, "fastv": {64: 58.9, 144: 72.6, 192: 61.5}}
KERNEL_B1 = {"none": 20.2, "random": 9.7, "visionzip": 9.9, "fastv": 10.5, "divprune": 10.5, "pool-avg": 9.7}
WALL_B8 = {"none": 154.9, "visionzip": 59.0, "divprune": 62.1, "fastv": 61.5}
BARE = {(1, 576): (17.7, 15.4), (8, 576): (110.5, 110.0), (1, 64): (9.65, 6.57), (1, 144): (10.2, 7.61),
        (1, 192): (10.8, 8.23), (8, 64): (22.7, 22.4), (8, 144): (37.2, 37.4), (8, 192): (44.5, 44.3)}
QWEN_NONE_B1 = 64.4  # Qwen2-VL-7B shape, 672 px image (576 merged tokens), batch 1, no method


def method_plan(method: str, batch: int, k: int):
    """The HF LLaVA prefill with a method's visual-token schedule and the kernels and syncs it adds."""
    launches, syncs = PROFILED[method]
    extra, extra_syncs = launches - NONE_LAUNCHES, syncs - NONE_SYNCS
    if method == "divprune":  # the profile is at K=64; the greedy loop runs K - 1 steps
        extra += DIVPRUNE_STEP[0] * (k - 64)
        extra_syncs += DIVPRUNE_STEP[1] * (k - 64)
    visual = 576 if method == "none" else [576] * 2 + [k] * 30 if method == "fastv" else k  # FastV: layer 2
    return prefill_plan(LLAVA_1_5_7B, None, visual, 20, batch, extra_kernels=extra, host_syncs=extra_syncs)


def h200_observations():
    """(observation, used to fit?) for every H200 figure of gpu-measurements.md that the model can be run on."""
    from tokencodec.metrics.roofline import Observation

    rows = []
    for method, walls in WALL_B1.items():
        for k, ms in walls.items():
            rows.append((Observation(f"hf b1 {method} K{k} wall", method_plan(method, 1, k), ms / 1e3),
                         method == "none"))
    for method, ms in KERNEL_B1.items():
        k = 576 if method == "none" else 64
        rows.append((Observation(f"hf b1 {method} K{k} kernel", method_plan(method, 1, k), ms / 1e3,
                                 quantity="kernel"), method == "none"))
    # the cost of 128 more greedy steps, free of whatever the two DivPrune runs share
    rows.append((Observation("hf b1 divprune K192-K64 wall", method_plan("divprune", 1, 192),
                             (WALL_B1["divprune"][192] - WALL_B1["divprune"][64]) / 1e3,
                             minus=method_plan("divprune", 1, 64)), True))
    for method, ms in WALL_B8.items():
        k = 576 if method == "none" else 64
        rows.append((Observation(f"hf b8 {method} K{k} wall", method_plan(method, 8, k), ms / 1e3), False))
    fit_bare = {(8, 576, "graph"), (1, 576, "graph"), (1, 64, "graph"), (1, 64, "eager")}
    for (batch, k), (eager, graph) in BARE.items():
        plan = prefill_plan(LLAVA_1_5_7B, None, k, 20, batch, recipe="bare")
        for launch, ms in (("eager", eager), ("graph", graph)):
            rows.append((Observation(f"bare b{batch} K{k} {launch}", plan, ms / 1e3, launch=launch),
                         (batch, k, launch) in fit_bare))
    qwen = prefill_plan(QWEN2_VL_7B, None, 576, 20, 1, recipe="hf-qwen2-vl")
    rows.append((Observation("hf qwen2-vl b1 none wall", qwen, QWEN_NONE_B1 / 1e3), False))
    return rows


@pytest.fixture(scope="module")
def h200_table():
    from tokencodec.metrics.roofline import HF_HOST_FACTOR

    h200 = get_profile("h200")
    table = []
    for obs, fit in h200_observations():
        predicted = obs.predict(h200, HF_HOST_FACTOR)
        table.append((obs.name, fit, obs.measured_s * 1e3, predicted * 1e3, 100 * (predicted / obs.measured_s - 1)))
    print("\nrow                               set       measured ms  predicted ms  error")
    for name, fit, measured, predicted, error in table:
        print(f"{name:34s}{'fit' if fit else 'held-out':10s}{measured:11.2f}{predicted:14.2f}  {error:+6.1f} %")
    return {name: (fit, measured, predicted, error) for name, fit, measured, predicted, error in table}


def test_the_h200_profile_is_the_fit_of_the_fit_rows():
    from tokencodec.metrics.roofline import HF_HOST_FACTOR, fit_profile

    fit_rows = [obs for obs, fit in h200_observations() if fit]
    start = replace(PROFILES["h200"], compute_eff=0.5, memory_eff=0.5, kernel_s=5e-6, launch_s=20e-6, sync_s=0.0)
    fitted, factor = fit_profile(start, fit_rows, host_factor=1.5)
    h200 = PROFILES["h200"]
    for name in ("compute_eff", "memory_eff", "kernel_s", "launch_s", "sync_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(h200, name), rel=0.05, abs=2e-6), name
    assert factor == pytest.approx(HF_HOST_FACTOR, rel=0.05)


def test_h200_targets_batch8_wall_and_batch1_kernel_time_within_25_percent(h200_table):
    targets = [name for name in h200_table if name.startswith("hf b8") or
               (name.startswith("hf b1") and name.endswith("kernel"))]
    assert len(targets) == 10
    for name in targets:
        assert abs(h200_table[name][3]) <= 25, (name, h200_table[name])
    held_out = [name for name in targets if not h200_table[name][0]]
    assert len(held_out) == 9  # only the unpruned batch-1 kernel time was used to fit


def test_h200_bare_kernel_rows_within_15_percent(h200_table):
    for name, (_, _, _, error) in h200_table.items():
        if name.startswith("bare"):
            assert abs(error) <= 15, name


def test_h200_method_ordering_and_why_batch1_gains_nothing(h200_table):
    h200 = get_profile("h200")
    b1 = {m: simulate(method_plan(m, 1, 576 if m == "none" else 64), h200) for m in PROFILED}
    measured = {m: WALL_B1[m][576 if m == "none" else 64] for m in PROFILED}
    # measured and predicted: no method is faster than no method at batch 1, and DivPrune is the slowest
    for table in (measured, {m: p.latency_s for m, p in b1.items()}):
        assert min(table, key=table.get) == "none" and max(table, key=table.get) == "divprune"
    # why: at batch 1 the host's issue time exceeds the device's work, pruned or not: the launch floor
    for p in b1.values():
        assert p.bound == "launch" and p.host_s > 2 * p.device_s
    # the device does half the work when pruned (the ~2x the profiler saw) but the wall does not follow
    assert b1["none"].device_s / b1["visionzip"].device_s > 1.8
    assert b1["none"].latency_s / b1["visionzip"].latency_s < 1
    # batch 8: the unpruned forward is compute-bound, the pruned ones still launch-bound: ~2.5x
    b8 = {m: simulate(method_plan(m, 8, 576 if m == "none" else 64), h200) for m in WALL_B8}
    assert b8["none"].bound == "compute"
    for m in ("visionzip", "divprune", "fastv"):
        assert b8[m].bound == "launch"
        assert 2.0 < b8["none"].latency_s / b8[m].latency_s < 3.0
        assert WALL_B8["none"] / WALL_B8[m] == pytest.approx(b8["none"].latency_s / b8[m].latency_s, rel=0.25)


def test_divprune_loop_is_five_kernels_and_no_sync():
    from tokencodec.tokens.compress.divprune import divprune_select

    features = torch.randn(1, 576, 32)
    traces = [trace_kernels(lambda k=k: divprune_select(features, k)) for k in (16, 32)]
    assert len(traces[1]) - len(traces[0]) == 5 * 16
    assert not any(op.host_read for op in traces[1])
