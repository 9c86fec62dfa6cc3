"""Prefill of LLaVA-1.5-7B and Qwen2-VL-7B under every token method on a GPU, beside FLOPs and roofline predictions.

The measurement behind issue 18's targets (../shared/docs/gpu-measurements.md has the first one, by hand). On a
CUDA machine it builds **random-weight real-size** models from transformers configs, directly on the GPU in bf16
with SDPA (no download; random weights change answers, not shapes or times): LLaVA-1.5-7B (CLIP ViT-L/14-336 +
Vicuna-7B, one 336×336 image = 576 image tokens) and Qwen2-VL-7B (one 672×672 image = 576 merged tokens), each
with a 20-token question. ``--model FOLDER`` takes a real checkpoint folder instead (``HFMLLM.load``, the
processor's own inputs for a synthetic image and a question).

For every image method the model's family supports (``tokencodec.adapters.support.support_matrix()``; ``coded``
left out: it entropy-codes the kept tokens on the host with a profile fitted to a model's features, a bitstream
method, not a prefill-speed one), at each K (``Budget(keep=K)``; ToMe converts it to its r schedule) and batch
size, one row per (method, K, batch) and launch mode, plus the unpruned row ("none") of each batch:

- **wall ms**: median of ``--repeats`` calls of ``model(**inputs, logits_to_keep=1)`` after ``--warmup`` calls,
  CUDA-synchronised (``tokencodec.metrics.cost.measure_latency``), inside one ``tokencodec.compress`` context per
  row (hooks installed once; the forward is what is timed);
- **kernel ms**, **GPU ops**: one call under ``torch.profiler`` (CUDA activities: the summed duration and count
  of the kernels, copies and sets on the device timeline);
- **aten ops**: kernel-launching aten ops of one call (``tokencodec.metrics.kernels.trace_kernels``; what the
  roofline's recipes count, on any device);
- **syncs torch**: one call under ``torch.cuda.set_sync_debug_mode("warn")``, its warnings counted (every host
  sync, the library's own included); **syncs tc**: tokencodec's own (``HostSyncs``; the JSON has each file:line);
- **peak GB**: ``torch.cuda.max_memory_allocated``, reset after the warm-ups of each row;
- **KV**, **FLOPs**: per sample, from the one cost path (``CostModel.of_record`` on the adapter's record; macs2,
  vision + projector + LLM);
- **× meas**: wall of the "none" row of the same model, batch and mode ÷ this wall; **× FLOPs**: FLOPs of none
  ÷ FLOPs of the row; **× roof**: the same ratio of roofline-predicted latencies (``predict_prefill`` with the
  recipe ``hf-llava`` / ``hf-qwen2-vl``, this batch, this launch mode, and the kernels and host syncs the method
  adds as measured in the eager row: aten ops and torch's sync count minus the "none" row's); **pred ms** that
  prediction; **meas÷FLOPs** and **meas÷roof**: the measured speed-up over each predicted one (1 = the
  prediction holds; below 1, the GPU gives less than predicted).

``--graphs`` adds a "graph" row for "none" and every pre-LLM method: the **language model** is replayed from a
CUDA graph captured per input shape (:class:`LLMGraph`) on the pruned, fixed-length ``inputs_embeds`` the adapter
hands it, so its ~1 300 kernels cost the host one launch; the vision tower, projector, the method and the
lm_head stay eager. Its × meas is against the graphed "none" row; its prediction uses the roofline's
``launch="graph-llm"``. In-LLM methods (FastV, SparseVLM, PyramidDrop, DART) prune inside the LLM with Python
between layers and get no graph row.

``--quick`` is a CPU smoke run that CI runs: tiny LLaVA and Qwen2-VL built from configs (the sizes of
``tokencodec.models.tiny``: 16 image tokens), visionzip and fastv, K = 8, batch 1 and 2, 1 + 3 calls; the
CUDA-only columns read "n/a (cpu)" and the roofline uses the probed ``cpu`` profile. ``--device cuda --quick``
runs the same tiny rows on a GPU (a smoke test of the CUDA paths, ``--graphs`` included).

Prints one table (no wrapping: pipe it to a file) and writes ``gpu_prefill.json`` into ``--out`` (rewritten
atomically after every row, so a crash keeps what was measured): ``provenance`` (versions, GPU, driver, the
configuration, seed, the cost models), ``columns`` (the definitions above), ``rows``.

Run:  python benchmarks/gpu_prefill.py [--models llava qwen2-vl | --model FOLDER ...] [--methods visionzip fastv]
      [--keep 64 144 192] [--batch 1 8 32] [--warmup 3] [--repeats 10] [--graphs] [--profile h200]
      [--out results/gpu_prefill] [--quick] [--device cpu|cuda] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

QUESTION = "What is the main object in this picture? Answer the question using a single word or phrase."
QWEN_IMAGE_PX = 672                    # 48 × 48 patches of 14 px = 576 merged tokens on Qwen2-VL-7B
TEXT_TOKENS = 20                       # the question and the chat template around the image (config models)
FAMILY_LABELS = {"llava": "LLaVA-1.5", "qwen2_vl": "Qwen2-VL / Qwen2.5-VL"}   # support-matrix columns
RECIPES = {"llava": "hf-llava", "qwen2_vl": "hf-qwen2-vl"}
CONFIG_MODELS = {"llava": "llava", "qwen2-vl": "qwen2_vl"}   # --models name → model_type
REAL_NAMES = {"llava": "llava-1.5-7b", "qwen2-vl": "qwen2-vl-7b"}
NOT_BENCHMARKED = {"coded": "entropy-codes the kept tokens on the host with a profile fitted to one model's "
                            "features: a bitstream method, not a prefill-speed one"}
QUICK = dict(methods=["visionzip", "fastv"], keep=[8], batch=[1, 2], warmup=1, repeats=3)
# the tiny models' LLM has 4 layers: in-LLM methods prune at layers inside it (their defaults are for 7B models)
QUICK_LLM_LAYERS = {"fastv": 2, "dart": 2, "pyramiddrop": (1, 2, 3), "sparsevlm": (0, 1, 2)}
FULL = dict(keep=[64, 144, 192], batch=[1, 8, 32], warmup=3, repeats=10)
# the GPU names the roofline has a profile for (tokencodec.metrics.roofline.PROFILES)
GPU_PROFILES = (("H200", "h200"), ("H100", "h100-sxm"), ("A100", "a100-80gb"), ("L40S", "l40s"))
CPU_NA = "n/a (cpu)"
COLUMNS = {
    "wall_ms": "median wall time of one prefill (model(**inputs, logits_to_keep=1)), CUDA-synchronised",
    "kernel_ms": "summed duration of the device activities (kernels, copies, sets) of one profiled call",
    "gpu_ops": "device activities of one profiled call (torch.profiler, CUDA)",
    "aten_ops": "kernel-launching aten ops of one call (tokencodec.metrics.kernels.trace_kernels)",
    "host_syncs_torch": "host syncs of one call: warnings of torch.cuda.set_sync_debug_mode('warn')",
    "host_syncs_tokencodec": "host syncs caused by tokencodec code in one call (metrics.host_sync.HostSyncs)",
    "host_syncs_all": "every host sync HostSyncs saw in one call, the libraries' own included",
    "peak_bytes": "torch.cuda.max_memory_allocated over the timed calls (reset after the warm-ups)",
    "tokens_in / tokens / tokens_avg_layers / flops / kv_bytes": "per sample, CostModel.of_record (macs2; vision "
                                                                 "+ projector + LLM; KV at 2 bytes per value)",
    "speedup": "wall of the 'none' row (same model, batch, mode) / wall of this row",
    "speedup_flops": "flops of 'none' / flops of this row",
    "speedup_roofline": "pred_ms of 'none' / pred_ms of this row (same batch and launch mode)",
    "pred_ms": "roofline-predicted prefill (predict_prefill: recipe, batch, launch mode, the method's extra "
               "aten ops and host syncs measured in the eager row)",
    "measured_over_flops": "speedup / speedup_flops",
    "measured_over_roofline": "speedup / speedup_roofline",
}


class UserInputError(Exception):
    """Bad input: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):              # one line, exit 2 (argparse prints the usage too)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------- models


@dataclass
class Spec:
    """One model to measure: a config to build with random weights, or a checkpoint folder."""

    name: str
    model_type: str                 # "llava" | "qwen2_vl"
    config: Any
    folder: str | None
    image_px: int
    n_visual: int                   # image tokens reaching the LLM without a method (per sample)


def llava_config(quick: bool):
    import transformers

    if quick:
        vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                               num_attention_heads=4, image_size=32, patch_size=8)
        text = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                        max_position_embeddings=512, pad_token_id=0)
        return transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=99,
                                        image_seq_length=16)
    # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (24 layers, 1024 wide), Vicuna-7B (32 layers, 4096, MHA)
    vision = transformers.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                           num_attention_heads=16, image_size=336, patch_size=14,
                                           projection_dim=768)
    text = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                    max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=32001)
    return transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000,
                                    image_seq_length=576, vision_feature_layer=-2,
                                    vision_feature_select_strategy="default")


# Qwen2-VL token ids: image, video, vision start / end, im_start, im_end (the real tokenizer's; tiny: any free)
QWEN_IDS = {False: dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                        vision_end_token_id=151653),
            True: dict(image_token_id=190, video_token_id=191, vision_start_token_id=188, vision_end_token_id=189)}
QWEN_CHAT = {False: (151644, 151645), True: (186, 187)}


def qwen2_vl_config(quick: bool):
    import transformers

    if quick:
        vision = dict(depth=2, num_heads=4, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                      in_channels=3, embed_dim=32, mlp_ratio=2, hidden_size=64)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=200, max_position_embeddings=512, bos_token_id=1,
                    eos_token_id=2, pad_token_id=0, rope_scaling=dict(type="mrope", mrope_section=[2, 3, 3]))
    else:   # Qwen/Qwen2-VL-7B-Instruct: 32-block ViT (1280 wide), Qwen2-7B (28 layers, 3584, 4 KV heads)
        vision = dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, in_channels=3,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                    rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
                    rope_scaling=dict(type="mrope", mrope_section=[16, 24, 24]))
    return transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **QWEN_IDS[quick])


def qwen_grid(config, px: int, min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """Patch rows and columns of a px × px image (the processor's resize when its pixel bounds are known)."""
    v = config.vision_config
    factor = v.patch_size * v.spatial_merge_size
    h = w = (px // factor) * factor
    if min_pixels is not None and max_pixels is not None:
        try:                                    # the PIL processor's module needs no torchvision
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        except ImportError:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
        h, w = smart_resize(px, px, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return h // v.patch_size, w // v.patch_size


def visual_tokens(config, model_type: str, px: int, folder: str | None = None) -> int:
    """Image tokens reaching the LLM for one px × px image, from the config alone (before any model is built)."""
    if model_type == "llava":
        v = config.vision_config
        return (v.image_size // v.patch_size) ** 2
    bounds = {}
    if folder is not None and (Path(folder) / "preprocessor_config.json").is_file():
        pre = json.loads((Path(folder) / "preprocessor_config.json").read_text(encoding="utf-8"))
        size = pre.get("size") or {}
        bounds = dict(min_pixels=pre.get("min_pixels", size.get("shortest_edge")),
                      max_pixels=pre.get("max_pixels", size.get("longest_edge")))
        if None in bounds.values():
            bounds = {}
    rows, cols = qwen_grid(config, px, **bounds)
    return rows * cols // config.vision_config.spatial_merge_size ** 2


def specs_from_args(args) -> list[Spec]:
    """The models to measure, checked without building any (UserInputError on a bad folder)."""
    if not args.model:
        out = []
        for name in args.models:
            model_type = CONFIG_MODELS[name]
            config = llava_config(args.quick) if model_type == "llava" else qwen2_vl_config(args.quick)
            px = config.vision_config.image_size if model_type == "llava" else (32 if args.quick else QWEN_IMAGE_PX)
            label = f"tiny-{name}" if args.quick else f"{REAL_NAMES[name]} (random)"
            out.append(Spec(label, model_type, config, None, px, visual_tokens(config, model_type, px)))
        return out
    import transformers

    out = []
    for folder in args.model:
        path = Path(folder).expanduser()
        if not (path / "config.json").is_file():
            raise UserInputError(f"--model {folder}: no config.json there (a save_pretrained checkpoint folder "
                                 "is expected)")
        config = transformers.AutoConfig.from_pretrained(str(path))
        if config.model_type not in RECIPES:
            raise UserInputError(f"--model {folder}: a {config.model_type!r} checkpoint; supported: "
                                 f"{', '.join(RECIPES)}")
        px = config.vision_config.image_size if config.model_type == "llava" else QWEN_IMAGE_PX
        out.append(Spec(path.name, config.model_type, config, str(path), px,
                        visual_tokens(config, config.model_type, px, str(path))))
    return out


def build(spec: Spec, device: torch.device, seed: int):
    """The model (bf16, SDPA, eval) and a function batch → inputs (every sample the same prompt and image)."""
    import transformers

    torch.manual_seed(seed)
    if spec.folder is not None:
        from tokencodec.models.hf import HFMLLM

        mllm = HFMLLM.load(spec.folder, device=str(device), dtype="bfloat16", attn_implementation="sdpa")
        image = np.random.default_rng(seed).integers(0, 256, (spec.image_px, spec.image_px, 3), dtype=np.uint8)
        one = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
               for k, v in mllm.inputs([image], QUESTION).items()}
        return mllm.model, lambda batch: repeat(one, batch)
    cls = (transformers.LlavaForConditionalGeneration if spec.model_type == "llava"
           else transformers.Qwen2VLForConditionalGeneration)
    with torch.device(device):              # built on the device: a 7B model never passes through host memory
        model = cls._from_config(spec.config, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    one = config_inputs(spec, device, seed)
    return model, lambda batch: repeat(one, batch)


def config_inputs(spec: Spec, device: torch.device, seed: int) -> dict:
    """One prompt as the family's processor lays it out: template tokens, the image span, the question."""
    cfg, n = spec.config, spec.n_visual
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(3, 90, (TEXT_TOKENS,), generator=g).tolist()   # below every special id of both vocabularies
    if spec.model_type == "llava":      # "<s> USER: <image>×n \n question ASSISTANT:"
        ids = [1, *words[:4], *[cfg.image_token_id] * n, *words[5:]]
        pixels = torch.randn(1, 3, spec.image_px, spec.image_px, generator=g)
        out = dict(pixel_values=pixels)
    else:                               # "<|im_start|>user\n<|vision_start|><|image_pad|>×n<|vision_end|>question…"
        quick = cfg.image_token_id == QWEN_IDS[True]["image_token_id"]
        start, end = QWEN_CHAT[quick]
        v = cfg.vision_config
        ids = [start, *words[:2], cfg.vision_start_token_id, *[cfg.image_token_id] * n, cfg.vision_end_token_id,
               *words[4:14], end, words[14], start, *words[15:17]]
        rows, cols = qwen_grid(cfg, spec.image_px)
        pixels = torch.randn(rows * cols, v.in_channels * v.temporal_patch_size * v.patch_size ** 2, generator=g)
        out = dict(pixel_values=pixels, image_grid_thw=torch.tensor([[1, rows, cols]]))
    input_ids = torch.tensor([ids])
    out.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    if spec.model_type == "qwen2_vl":
        out["mm_token_type_ids"] = (input_ids == cfg.image_token_id).long()
    return {k: (v.to(device, torch.bfloat16) if v.is_floating_point() else v.to(device)) for k, v in out.items()}


def repeat(inputs: dict, batch: int) -> dict:
    """The batch: every tensor repeated along its first dimension (Qwen2-VL's patches and grids too)."""
    return {k: v.repeat(batch, *[1] * (v.dim() - 1)) for k, v in inputs.items()}


# ---------------------------------------------------------------------------------------------- CUDA graphs


def cuda_graph_capture(run) -> tuple:
    """(replay, output): ``run()`` captured into a CUDA graph after two warm-up runs on a side stream (as
    ``torch.cuda.graphs`` asks); ``replay()`` reruns its kernels, rewriting ``output`` in place."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = run()
    return graph.replay, output


class LLMGraph:
    """``--graphs``: the language model's prefill replayed from a CUDA graph, one graph per input shape.

    Installed as the language model's instance ``forward``: the module's hooks (the adapters' pre-hook that
    prunes the sequence included) still run eagerly around it, so the vision tower, projector, merge and method
    stay eager and the graph runs the LLM on the pruned, fixed-length ``inputs_embeds`` it is handed. The first
    call of a shape captures the eager forward on static copies of ``inputs_embeds`` and ``position_ids``
    (``capture``: :func:`cuda_graph_capture`; the tests pass a CPU stand-in); later calls copy their inputs in,
    replay, and return the captured output (its hidden states and KV cache rewritten by each replay).

    The benchmark's prompts are unpadded: the graph runs without the all-ones attention mask (SDPA causal, what
    HF picks for such a mask, without the host read that picks it), and checks the mask once, at capture. A
    KV cache is created inside the graph as in eager mode (HF needs one to read gapped position ids as one
    sequence). Calls with a non-empty cache (decode steps) run eagerly.
    """

    _DROP = ("attention_mask", "cache", "past_key_values", "use_cache", "inputs_embeds", "position_ids")

    def __init__(self, lm: torch.nn.Module, capture=cuda_graph_capture):
        self.lm, self.capture = lm, capture
        self._eager = lm.forward                 # the bound class forward
        self._graphs: dict[tuple, tuple] = {}

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def __enter__(self) -> LLMGraph:
        self.lm.forward = self._forward
        return self

    def __exit__(self, *exc) -> None:
        del self.lm.forward
        self._graphs.clear()

    def _forward(self, *args, **kwargs):
        from tokencodec.adapters.hf_compat import cache_from

        cache, embeds = cache_from(kwargs), kwargs.get("inputs_embeds")
        if args or embeds is None or (cache is not None and cache.get_seq_length() > 0):
            return self._eager(*args, **kwargs)
        pos = kwargs.get("position_ids")
        key = (tuple(embeds.shape), None if pos is None else tuple(pos.shape))
        if key not in self._graphs:
            self._graphs[key] = self._capture(kwargs)
        static_embeds, static_pos, replay, output = self._graphs[key]
        static_embeds.copy_(embeds)
        if pos is not None:
            static_pos.copy_(pos)
        replay()
        return output

    def _capture(self, kwargs: dict) -> tuple:
        mask = kwargs.get("attention_mask")
        if mask is not None and not bool(mask.all()):   # a host read, once per shape at capture: not timed
            raise ValueError("--graphs runs unpadded prompts only (the LLM's attention mask must be all ones)")
        embeds = kwargs["inputs_embeds"].clone()
        pos = None if kwargs.get("position_ids") is None else kwargs["position_ids"].clone()
        call = {k: v for k, v in kwargs.items() if k not in self._DROP}
        call.update(inputs_embeds=embeds, position_ids=pos, use_cache=True)
        replay, output = self.capture(lambda: self._eager(**call))
        return embeds, pos, replay, output


# ---------------------------------------------------------------------------------------------- measuring


def torch_sync_count(call) -> int:
    """Host syncs of one call as torch counts them (CUDA only): warnings of sync debug mode "warn"."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def profile_device(call) -> tuple[float, int]:
    """(summed ms, count) of the device activities of one call: kernels, copies, sets (CUDA only)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    device = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in device) / 1e3, len(device)


class Bench:
    """Measures the rows of one model and batch; keeps what ratios need (its "none" rows)."""

    def __init__(self, spec: Spec, model, inputs: dict, batch: int, device: torch.device, profile, args):
        from tokencodec.metrics.cost import MLLMShape
        from tokencodec.metrics.rates import CostModel

        self.spec, self.model, self.inputs, self.batch, self.args = spec, model, inputs, batch, args
        self.device, self.cuda, self.profile = device, device.type == "cuda", profile
        self.shape = MLLMShape.from_config(model.config)
        self.cost = CostModel(self.shape, recipe=RECIPES[spec.model_type])
        ids = inputs["input_ids"][0]
        self.n_visual = int((ids == model.config.image_token_id).sum())
        self.text_tokens = ids.shape[0] - self.n_visual
        grid = inputs.get("image_grid_thw")
        self.vision_patches = None if grid is None else int(grid[0].prod())        # per sample
        self.none: dict[str, dict] = {}              # mode → the "none" row
        self.eager: dict[tuple, dict] = {}           # (method, K) → its eager row (what a graph row's method adds)

    def call(self):
        with torch.no_grad():
            return self.model(**self.inputs, logits_to_keep=1)

    def measure(self, method: str, keep: int | None, mode: str) -> dict:
        """One row: the measured prefill of ``method`` at ``keep`` in launch ``mode``, its rates and ratios."""
        import tokencodec
        from tokencodec.metrics.cost import measure_latency
        from tokencodec.metrics.host_sync import HostSyncs
        from tokencodec.metrics.kernels import trace_kernels
        from tokencodec.tokens.compress import Budget

        options = {"layers": QUICK_LLM_LAYERS[method]} if self.args.quick and method in QUICK_LLM_LAYERS else {}
        data: dict[str, Any] = dict(model=self.spec.name, family=self.spec.model_type, batch=self.batch, mode=mode,
                                    method=method, keep=keep, options=options, status="ok")
        try:
            patch = contextlib.nullcontext() if method == "none" else tokencodec.compress(
                self.model, method, Budget(keep=keep), **options)
            graphs = LLMGraph(self.model.model.language_model) if mode == "graph" else contextlib.nullcontext()
            with patch, graphs:
                warmup = max(1, self.args.warmup) if mode == "graph" else self.args.warmup   # the first call captures
                timing = measure_latency(self.call, warmup=warmup, repeats=self.args.repeats, device=self.device)
                record = patch.record() if method != "none" else None
                with HostSyncs(emulate=not self.cuda) as syncs:
                    self.call()
                data.update(wall_ms=timing.median_s * 1e3, wall_ms_all=[t * 1e3 for t in timing.times_s],
                            host_syncs_tokencodec=syncs.count(), host_syncs_all=syncs.count(library=True),
                            host_syncs_where=dict(syncs.by_line()),
                            aten_ops=len(trace_kernels(self.call)))
                if self.cuda:
                    kernel_ms, gpu_ops = profile_device(self.call)
                    data.update(kernel_ms=kernel_ms, gpu_ops=gpu_ops, host_syncs_torch=torch_sync_count(self.call),
                                peak_bytes=timing.peak_bytes)
                else:
                    data.update(kernel_ms=None, gpu_ops=None, host_syncs_torch=None, peak_bytes=None)
        except Exception as err:                # a method that fails on this GPU/dtype: its row says why
            data.update(status="error", error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            if self.cuda:
                torch.cuda.empty_cache()
            return data
        rates = self.cost.of_record(record, self.n_visual, self.text_tokens, vision_patches=self.vision_patches)
        data.update(rates)
        data.update(self._predict(record, data, mode))
        if method == "none":
            self.none[mode] = data
        if mode == "eager":
            self.eager[(method, keep)] = data
        self._ratios(data)
        return data

    def _predict(self, record, data: dict, mode: str) -> dict:
        """The roofline prediction of this row, with what the method adds over the eager "none" row."""
        from tokencodec.metrics.roofline import predict_prefill

        if self.profile is None:
            return dict(pred_ms=None)
        base = self.none.get("eager")
        extra_kernels = extra_syncs = 0
        if mode != "eager":             # what the method adds is measured eagerly (a graph hides the LLM's ops)
            eager = self.eager.get((data["method"], data["keep"]), {})
            extra_kernels, extra_syncs = eager.get("extra_aten_ops", 0), eager.get("extra_host_syncs", 0)
        elif base is not None and data["method"] != "none":
            extra_kernels = max(0, data["aten_ops"] - base["aten_ops"])
            syncs = "host_syncs_torch" if self.cuda else "host_syncs_all"
            extra_syncs = max(0, data[syncs] - base[syncs])
        per_layer = record.tokens_per_layer if record is not None and record.tokens_per_layer else self.n_visual
        vision = record.vision_tokens_per_layer if record is not None else None
        if vision is None and self.vision_patches is not None:
            vision = self.vision_patches                 # Qwen2-VL: the tower's patches depend on the image
        p = predict_prefill(self.shape, vision, per_layer, self.text_tokens, self.batch, self.profile,
                            extra_kernels=extra_kernels, host_syncs=extra_syncs, recipe=RECIPES[self.spec.model_type],
                            launch="eager" if mode == "eager" else "graph-llm",
                            projector_tokens=record.projector_tokens if record is not None else None)
        return dict(pred_ms=p.latency_s * 1e3, pred_kernel_ms=p.device_s * 1e3, pred_bound=p.bound,
                    extra_aten_ops=extra_kernels, extra_host_syncs=extra_syncs)

    def _ratios(self, d: dict) -> None:
        base = self.none.get(d["mode"])
        if base is None:
            return
        d["speedup"] = base["wall_ms"] / d["wall_ms"]
        d["speedup_flops"] = base["flops"] / d["flops"]
        d["measured_over_flops"] = d["speedup"] / d["speedup_flops"]
        if d.get("pred_ms") is not None and base.get("pred_ms") is not None:
            d["speedup_roofline"] = base["pred_ms"] / d["pred_ms"]
            d["measured_over_roofline"] = d["speedup"] / d["speedup_roofline"]
            d["wall_over_pred"] = d["wall_ms"] / d["pred_ms"]
        eager_none = self.none.get("eager")
        if d["mode"] != "eager" and eager_none is not None:
            d["speedup_vs_eager_none"] = eager_none["wall_ms"] / d["wall_ms"]


# ---------------------------------------------------------------------------------------------- output


def si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}"


def fmt(x, spec: str = ".1f", na: str = "—") -> str:
    return na if x is None else format(x, spec)


def table(rows: list[dict], cuda: bool) -> str:
    """One plain-text table, a line per row (no wrapping: lines are as long as they need)."""
    na = "—" if cuda else CPU_NA
    head = ["model", "batch", "mode", "method", "K", "tokens", "wall ms", "kernel ms", "GPU ops", "aten ops",
            "syncs torch", "syncs tc", "peak GB", "KV/sample", "FLOPs/sample", "× meas", "× FLOPs", "× roof",
            "pred ms", "meas÷FLOPs", "meas÷roof"]
    lines = []
    for r in rows:
        if r["status"] != "ok":
            lines.append([r["model"], str(r["batch"]), r["mode"], r["method"], fmt(r["keep"], "d"), "",
                          f"error: {r['error']}"])
            continue
        tokens = f"{r['tokens_in']:.0f}" + (f"→{r['tokens']:.0f}" if r["tokens"] != r["tokens_in"] else "")
        lines.append([r["model"], str(r["batch"]), r["mode"], r["method"], fmt(r["keep"], "d"), tokens,
                      fmt(r["wall_ms"], ".2f"), fmt(r["kernel_ms"], ".2f", na), fmt(r["gpu_ops"], "d", na),
                      str(r["aten_ops"]), fmt(r["host_syncs_torch"], "d", na), str(r["host_syncs_tokencodec"]),
                      fmt(None if r["peak_bytes"] is None else r["peak_bytes"] / 1e9, ".2f", na),
                      si(r["kv_bytes"], "B"), si(r["flops"]), fmt(r.get("speedup"), ".2f"),
                      fmt(r.get("speedup_flops"), ".2f"), fmt(r.get("speedup_roofline"), ".2f"),
                      fmt(r.get("pred_ms"), ".2f"), fmt(r.get("measured_over_flops"), ".2f"),
                      fmt(r.get("measured_over_roofline"), ".2f")])
    widths = [max([len(h)] + [len(line[i]) for line in lines if i < len(line) and len(line) == len(head)])
              for i, h in enumerate(head)]
    left = {0, 2, 3}

    def render(cells: list[str]) -> str:
        if len(cells) != len(head):     # an error row: its message spans the rest
            return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells[:-1], widths, strict=False))) + "  " + cells[-1]
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                strict=True)))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(head), rule, *(render(line) for line in lines)])


def gpu_facts(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": "cpu", "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = None
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(device), "driver": driver,
            "cuda_runtime": torch.version.cuda, "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count}


def auto_profile(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return next((p for key, p in GPU_PROFILES if key in name), None)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="Columns: see the module docstring and docs/roofline.md (\"Measuring on a GPU\").")
    ap.add_argument("--models", nargs="+", choices=list(CONFIG_MODELS), default=list(CONFIG_MODELS),
                    help="random-weight models built from configs (default: both)")
    ap.add_argument("--model", nargs="+", metavar="FOLDER", help="checkpoint folder(s) instead (llava, qwen2_vl)")
    ap.add_argument("--methods", nargs="+", metavar="NAME",
                    help="methods to run (default: every image method each family supports; --quick: "
                         f"{' '.join(QUICK['methods'])})")
    ap.add_argument("--keep", nargs="+", type=int, metavar="K", help=f"visual tokens kept (default {FULL['keep']}; "
                                                                      f"--quick {QUICK['keep']})")
    ap.add_argument("--batch", nargs="+", type=int, metavar="B", help=f"batch sizes (default {FULL['batch']}; "
                                                                       f"--quick {QUICK['batch']})")
    ap.add_argument("--warmup", type=int, help=f"untimed calls per row (default {FULL['warmup']}; --quick 1)")
    ap.add_argument("--repeats", type=int, help=f"timed calls per row (default {FULL['repeats']}; --quick 3)")
    ap.add_argument("--graphs", action="store_true",
                    help="also run 'none' and pre-LLM methods with the LLM replayed from a CUDA graph (CUDA only)")
    ap.add_argument("--profile", help="roofline device profile (default: from the GPU's name; 'cpu' on CPU)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda, or cpu with --quick")
    ap.add_argument("--quick", action="store_true", help="tiny models on CPU, a few rows: the smoke run CI runs")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: 1 with --quick, else torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/gpu_prefill", help="folder for gpu_prefill.json")
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name in ("keep", "batch", "warmup", "repeats"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    args.device = args.device or ("cpu" if args.quick else "cuda")
    return args


def check_args(args, specs: list[Spec]) -> tuple[dict[str, list[str]], str | None]:
    """Validate everything that can be checked before a model is built; (methods per model, profile name)."""
    from tokencodec.adapters.support import support_matrix
    from tokencodec.metrics.roofline import known_profiles
    from tokencodec.tokens.compress import METHODS

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: no CUDA device here; use --quick (tiny models on CPU)")
    if args.graphs and args.device != "cuda":
        raise UserInputError("--graphs needs a CUDA device (CUDA graphs); run without it on CPU")
    if args.device == "cpu" and not args.quick and not args.model:
        raise UserInputError("real-size models run on CUDA only; use --quick for the tiny CPU run")
    for name in ("batch", "keep"):
        bad = [x for x in getattr(args, name) if x < 1]
        if bad:
            raise UserInputError(f"--{name} {bad[0]}: must be ≥ 1")
    if args.warmup < 0 or args.repeats < 1:
        raise UserInputError(f"--warmup {args.warmup} / --repeats {args.repeats}: need warmup ≥ 0 and repeats ≥ 1")
    if args.threads is not None and args.threads < 1:
        raise UserInputError(f"--threads {args.threads}: must be ≥ 1")
    profile = args.profile
    if profile is not None and profile not in known_profiles():
        raise UserInputError(f"--profile {profile!r}: known profiles {', '.join(known_profiles())}")
    matrix = support_matrix()
    image = {m: row for m, row in matrix.items() if not METHODS.get(m).video and m not in NOT_BENCHMARKED}
    families = {s.model_type for s in specs}
    supported = {f: [m for m, row in image.items() if row[FAMILY_LABELS[f]] != "—"] for f in families}
    if args.methods:
        for m in args.methods:
            if m in NOT_BENCHMARKED:
                raise UserInputError(f"--methods {m}: not benchmarked here ({NOT_BENCHMARKED[m]})")
            if m not in image:
                raise UserInputError(f"--methods {m}: unknown image method; allowed: {', '.join(image)}")
            if not any(m in supported[f] for f in families):
                raise UserInputError(f"--methods {m}: no chosen model's family supports it "
                                     f"({', '.join(sorted(families))})")
    wanted = args.methods or (QUICK["methods"] if args.quick else list(image))
    for spec in specs:
        too_many = [k for k in args.keep if k > spec.n_visual]
        if too_many:
            raise UserInputError(f"--keep {too_many[0]}: {spec.name} has {spec.n_visual} image tokens; allowed "
                                 f"1..{spec.n_visual}")
    return {s.name: [m for m in wanted if m in supported[s.model_type]] for s in specs}, profile


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = specs_from_args(args)
        methods, profile_name = check_args(args, specs)
    except UserInputError as err:
        print(f"gpu_prefill.py: error: {err}", file=sys.stderr)
        return 2

    import tokencodec.tokens.batch

    # the hot path as users run it: TokenBatch's value checks (a debug aid that reads values) off while measuring
    checks, threads = tokencodec.tokens.batch.CHECK_VALUES, torch.get_num_threads()
    tokencodec.tokens.batch.CHECK_VALUES = False
    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    try:
        return run(args, specs, methods, profile_name)
    finally:
        tokencodec.tokens.batch.CHECK_VALUES = checks
        torch.set_num_threads(threads)


def run(args, specs: list[Spec], methods: dict[str, list[str]], profile_name: str | None) -> int:
    """Every row of every model; the JSON rewritten after each row, the table printed at the end."""
    import transformers

    import tokencodec
    from tokencodec.io import write_json_atomic
    from tokencodec.metrics.roofline import get_profile
    from tokencodec.provenance import provenance
    from tokencodec.tokens.compress import METHODS

    device = torch.device(args.device)
    profile_name = profile_name or auto_profile(device)
    profile = get_profile(profile_name) if profile_name else None
    out_file = Path(args.out) / "gpu_prefill.json"
    config = dict(vars(args))
    config.update(methods_run=methods, roofline_profile=profile_name, dtype="bfloat16", attention="sdpa",
                  text_tokens_config_models=TEXT_TOKENS, question_folder_models=QUESTION,
                  graphs_cover="the language model (decoder layers, final norm, rotary tables; no attention mask: "
                               "unpadded prompts) replayed from a CUDA graph per shape; vision tower, projector, "
                               "method, lm_head eager; 'none', pre-LLM methods and ToMe only" if args.graphs else None,
                  not_benchmarked=NOT_BENCHMARKED)
    result: dict[str, Any] = {
        "benchmark": "gpu_prefill",
        "provenance": provenance(config=config, seed=args.seed) | {"hardware": gpu_facts(device)},
        "columns": COLUMNS,
        "not_measured": {} if device.type == "cuda" else {
            k: f"{CPU_NA}: CUDA only" for k in ("kernel_ms", "gpu_ops", "host_syncs_torch", "peak_bytes")},
        "rows": [],
    }
    if profile is None:
        result["not_measured"]["pred_ms"] = (f"no roofline profile for {torch.cuda.get_device_name(device)}: "
                                             "pass --profile")
    else:
        result["provenance"]["roofline_profile"] = profile.as_dict()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, tokencodec "
          f"{tokencodec.__version__}; {result['provenance']['hardware']}; roofline profile {profile_name}",
          file=sys.stderr)
    started = time.perf_counter()
    for spec in specs:
        try:
            model, inputs_for = build(spec, device, args.seed)
        except Exception as err:                # e.g. out of memory: the other models still run
            result["rows"].append(dict(model=spec.name, family=spec.model_type, batch="—", mode="—", method="(build)",
                                       keep=None, status="error", error=f"{type(err).__name__}: {err}"))
            write_json_atomic(out_file, result)
            print(f"{spec.name}: could not build: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        cost_provenance = None
        for batch in args.batch:
            inputs = inputs_for(batch)
            bench = Bench(spec, model, inputs, batch, device, profile, args)
            cost_provenance = cost_provenance or bench.cost.provenance()
            plan = [("none", None)] + [(m, k) for m in methods[spec.name] for k in args.keep]
            for method, keep in plan:
                modes = ["eager"]
                if args.graphs and (method == "none" or METHODS.get(method).stage != "llm"):
                    modes.append("graph")
                for mode in modes:
                    row = bench.measure(method, keep, mode)
                    result["rows"].append(row)
                    write_json_atomic(out_file, result)
                    print(f"[{time.perf_counter() - started:7.1f} s] {spec.name} b{batch} {mode} {method} "
                          f"K={keep}: " + (f"{row['wall_ms']:.2f} ms" if row["status"] == "ok" else row["error"]),
                          file=sys.stderr)
            del inputs, bench
        result["provenance"].setdefault("cost", {})[spec.name] = cost_provenance
        write_json_atomic(out_file, result)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(table(result["rows"], device.type == "cuda"))
    print(f"\nwrote {out_file} ({len(result['rows'])} rows) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
