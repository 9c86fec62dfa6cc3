"""A roofline latency model of an MLLM forward: FLOPs, bytes, kernels and host syncs → seconds on a device.

Pure functions of shapes (:mod:`tokencodec.metrics.cost`), beside the FLOPs: no model, no weights. What
is modelled, kernel by kernel, in the order the implementation launches them:

- **Device time of a kernel**: ``kernel_s + max(FLOPs / (peak · compute_eff), bytes / (bandwidth ·
  memory_eff))``. ``peak`` and ``bandwidth`` are datasheet figures; the efficiencies (≤ 1) and the
  per-kernel device floor ``kernel_s`` (launch latency, ramp-up and tail of a kernel on the device) are
  calibrated. FLOPs follow cost.py's ``macs2``; bytes are what the kernel reads and writes once: weights
  (read once per forward, whatever the batch), activations in and out, the KV cache (written at prefill,
  read and rewritten by HF's ``DynamicCache`` concatenation at every decode step), and the fp32
  intermediates of HF's eager RMSNorm and RoPE. Attention is SDPA (flash / memory-efficient): it reads
  Q, K, V and writes the output and its log-sum-exp; the n × n scores never reach memory. A causal
  kernel computes about half the square; ``macs2`` counts all of it (reported FLOPs) and the time uses
  the half.
- **Host time**: every kernel costs the host ``launch_s`` (one eager PyTorch op on that machine)
  times the recipe's ``host_factor`` (Hugging Face modules run Python around each op); a CUDA graph
  costs nothing per kernel (``launch="graph"``: the whole forward; ``"graph-llm"``: the LLM's decoder
  layers only, the rest eager).
- **Queue**: the host issues kernels in order and the device runs them in order, each no earlier than
  it is issued; the host runs ahead of the device until a **host sync** (``.item()``, ``.tolist()``,
  ``bool(t)``), where it waits for the device to drain and pays ``sync_s``. So a forward is, over its
  sync-separated segments, the larger of the host's issue time and the device's work, and the smaller
  one hides under it only within a segment. A CPU runs each op itself: host and device times add.

The kernels come from **recipes**: what an implementation launches, per layer group. ``hf-llava`` and
``hf-qwen2-vl`` model Hugging Face transformers 5.x eager code with SDPA (counted per aten op with
:func:`tokencodec.metrics.kernels.trace_kernels` on tiny configs; the tests keep the recipes equal to
the traces); ``bare`` is the same shapes as the fewest plain kernels (one per linear, norm, attention,
activation), the limit without framework overhead.

A method enters as the kernels and host syncs it adds (``extra_kernels``, ``host_syncs``: counted
elsewhere, e.g. with ``trace_kernels`` or torch's sync debug mode). Its kernels are plain torch ops on
token-sized tensors: ``launch_s`` each on the host (no module code around them), ``kernel_s`` each on
the device, no traffic worth counting. They run where the method acts: before the first LLM layer for a
pre-LLM method (constant ``visual_tokens_per_layer``), before the first layer whose visual-token count
drops for an in-LLM one; ``s`` syncs split its kernels into ``s + 1`` equal runs (a greedy loop that
reads a value per step).

Not modelled: host work that launches no kernel (a method's Python, hook installation, object
building: at batch 1 on the H200 it made the measured method walls 3–34 % longer than predicted), GPU
clocks and power limits, concurrent streams, the first call's costs (compilation, autotuning,
allocation), kernels that fuse differently from the recipe, ops that launch several CUDA kernels
(``masked_scatter``, cuDNN convolutions: one each here), and ``generate()``'s logits processing and
stopping checks between decode steps. The H200 check and the error per row are in docs/roofline.md.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from numbers import Integral

from tokencodec.metrics.cost import (
    CONVENTIONS,
    MLLMShape,
    ProjectorShape,
    TextShape,
    TokensPerLayer,
    VisionShape,
)

# ---------------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class DeviceProfile:
    """What a device does per second, and what it costs to drive it.

    ``peak_flops`` maps ``dtype_bytes`` (2: bf16/fp16 tensor cores, dense; 4: fp32) to FLOP/s from the
    datasheet; ``bandwidth`` is the memory bandwidth (B/s). ``compute_eff`` and ``memory_eff`` (≤ 1) are
    the fractions of them that real GEMMs and copies reach. ``launch_s`` is the host time of one eager
    PyTorch op, ``kernel_s`` the device floor of one kernel, ``sync_s`` the cost of one host sync beyond
    waiting for the device. ``synchronous``: the host runs the ops itself (a CPU).
    """

    name: str
    peak_flops: dict[int, float]
    bandwidth: float
    launch_s: float
    kernel_s: float
    sync_s: float
    compute_eff: float = 1.0
    memory_eff: float = 1.0
    synchronous: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if not (0 < self.compute_eff <= 1 and 0 < self.memory_eff <= 1):
            raise ValueError(f"{self.name}: efficiencies must lie in (0, 1], got compute {self.compute_eff}, "
                             f"memory {self.memory_eff}")

    def peak(self, dtype_bytes: int) -> float:
        if dtype_bytes not in self.peak_flops:
            raise ValueError(f"{self.name}: no peak for {dtype_bytes}-byte dtypes; known: {sorted(self.peak_flops)}")
        return self.peak_flops[dtype_bytes]

    def as_dict(self) -> dict:
        return {"name": self.name, "peak_flops": {str(k): v for k, v in self.peak_flops.items()},
                "bandwidth": self.bandwidth, "launch_s": self.launch_s, "kernel_s": self.kernel_s,
                "sync_s": self.sync_s, "compute_eff": self.compute_eff, "memory_eff": self.memory_eff,
                "synchronous": self.synchronous, "source": self.source}


# Calibrated on the H200 rows of gpu-measurements.md (tests/metrics/test_roofline.py refits them from
# the "fit" rows and reports the others). The host-side numbers (launch_s, sync_s, HF_HOST_FACTOR) belong
# to that machine's CPU and software stack, not to the GPU; the efficiencies and kernel_s are assumed to
# carry over to the other datacenter GPUs as fractions of their own datasheets.
H200_FIT = dict(compute_eff=0.676, memory_eff=0.730, kernel_s=2.37e-6, launch_s=12.8e-6, sync_s=37e-6)

PROFILES: dict[str, DeviceProfile] = {
    # https://www.nvidia.com/en-us/data-center/h200/ : BF16 1,979 TFLOPS "with sparsity" (989.5 dense),
    # FP32 67 TFLOPS, GPU memory bandwidth 4.8 TB/s (H200 SXM)
    "h200": DeviceProfile("h200", {2: 989.5e12, 4: 67e12}, 4.8e12, synchronous=False,
                          source="NVIDIA H200 SXM datasheet (nvidia.com/en-us/data-center/h200); "
                                 "efficiencies and host costs fitted on gpu-measurements.md", **H200_FIT),
    # https://www.nvidia.com/en-us/data-center/h100/ : H100 SXM BF16 1,979 TFLOPS with sparsity (989.5 dense),
    # FP32 67 TFLOPS, 3.35 TB/s
    "h100-sxm": DeviceProfile("h100-sxm", {2: 989.5e12, 4: 67e12}, 3.35e12,
                              source="NVIDIA H100 SXM datasheet (nvidia.com/en-us/data-center/h100); "
                                     "efficiencies and host costs those of the H200 fit", **H200_FIT),
    # https://www.nvidia.com/en-us/data-center/a100/ : A100 80GB SXM BF16 312 TFLOPS (dense), FP32 19.5 TFLOPS,
    # 2,039 GB/s
    "a100-80gb": DeviceProfile("a100-80gb", {2: 312e12, 4: 19.5e12}, 2.039e12,
                               source="NVIDIA A100 80GB SXM datasheet (nvidia.com/en-us/data-center/a100); "
                                      "efficiencies and host costs those of the H200 fit", **H200_FIT),
    # https://www.nvidia.com/en-us/data-center/l40s/ (L40S datasheet): BF16 Tensor Core 362.05 TFLOPS dense
    # (733 with sparsity), FP32 91.6 TFLOPS, 864 GB/s GDDR6
    "l40s": DeviceProfile("l40s", {2: 362.05e12, 4: 91.6e12}, 0.864e12,
                          source="NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s); "
                                 "efficiencies and host costs those of the H200 fit", **H200_FIT),
}
CPU = "cpu"  # probed on first use: probe_cpu()


def known_profiles() -> list[str]:
    return [*PROFILES, CPU]


def get_profile(name: str | DeviceProfile) -> DeviceProfile:
    """A profile by name (``h200``, ``h100-sxm``, ``a100-80gb``, ``l40s``, ``cpu``); ``cpu`` is probed once."""
    if isinstance(name, DeviceProfile):
        return name
    if name == CPU:
        return probe_cpu()
    if name not in PROFILES:
        raise ValueError(f"unknown device profile {name!r}; known: {', '.join(known_profiles())}")
    return PROFILES[name]


def _best_rate(fn: Callable[[], object], work: float, budget_s: float) -> float:
    """``work`` per second of the fastest of repeated ``fn()`` calls within ``budget_s``."""
    fn()  # warm-up: allocation, thread pool start
    best, spent = float("inf"), 0.0
    while spent < budget_s:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return work / best


@functools.lru_cache(maxsize=1)
def probe_cpu(budget_s: float = 0.4) -> DeviceProfile:
    """Calibrate "this CPU" in about ``4 · budget_s`` seconds, at torch's current thread count.

    fp32 and bf16 matmuls (1024³) give the FLOP/s, a 64 MiB copy the bandwidth (read + write), a loop of
    tiny adds the host time of one op. Measured, not datasheet: the efficiencies are 1 and ``kernel_s``
    is 0 (the op floor is in ``launch_s``). Cached for the process.
    """
    import torch

    n = 1024
    peaks = {}
    for dtype_bytes, dtype in ((4, torch.float32), (2, torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        peaks[dtype_bytes] = _best_rate(lambda a=a, b=b: torch.mm(a, b), 2 * n ** 3, budget_s)
    src = torch.empty(16 * 2 ** 20, dtype=torch.float32)
    dst = torch.empty_like(src)
    bandwidth = _best_rate(lambda: dst.copy_(src), 2 * src.numel() * 4, budget_s)
    one = torch.zeros(1)
    ops = 200

    def tiny_ops() -> None:
        for _ in range(ops):
            torch.add(one, one)

    launch_s = 1 / _best_rate(tiny_ops, ops, budget_s)
    return DeviceProfile(CPU, peaks, bandwidth, launch_s=launch_s, kernel_s=0.0, sync_s=0.0, synchronous=True,
                         source=f"probed: torch {torch.__version__}, {torch.get_num_threads()} threads, "
                                f"mm {n}³ fp32/bf16, 64 MiB copy, {ops} tiny adds")


# ---------------------------------------------------------------------------------------------- kernels


@dataclass(frozen=True)
class Kernel:
    """One kernel launch: its aten op, FLOPs (macs2), bytes moved, and the FLOPs it really executes."""

    op: str
    flops: int = 0
    bytes: int = 0
    exec_flops: int | None = None  # a causal attention kernel skips the masked half

    @property
    def work_flops(self) -> int:
        return self.flops if self.exec_flops is None else self.exec_flops


SYNC = "sync"  # a step of a plan: the host waits for the device


@dataclass(frozen=True)
class Plan:
    """What a forward launches, in order: ``(group, Kernel)`` steps and ``(group, SYNC)`` host syncs."""

    recipe: str
    phase: str
    batch: int
    dtype_bytes: int
    steps: tuple[tuple[str, Kernel | str], ...]
    host_factor: float
    assumptions: dict = field(default_factory=dict)

    @property
    def kernels(self) -> int:
        return sum(1 for _, k in self.steps if k != SYNC)

    @property
    def host_syncs(self) -> int:
        return sum(1 for _, k in self.steps if k == SYNC)


def _mm(op: str, rows: int, k: int, n: int, B: int, bias: bool = False) -> Kernel:
    """A linear layer on ``rows`` tokens: reads its input and weight (and bias) once, writes its output."""
    return Kernel(op, 2 * rows * k * n, B * (rows * k + k * n + rows * n + (n if bias else 0)))


def _ew(op: str, nbytes: int) -> Kernel:
    return Kernel(op, 0, nbytes)


def _tiny(*ops: str) -> list[Kernel]:
    """Bookkeeping kernels on index-sized tensors (masks, positions): their floor is all they cost."""
    return [Kernel(op) for op in ops]


def _layer_norm(T: int, d: int, B: int) -> Kernel:
    return _ew("native_layer_norm", 2 * T * d * B + 2 * d * B + 2 * T * 4)  # + fp32 mean and rstd


def _attention(b: int, n_q: int, n_kv: int, q_width: int, kv_width: int, heads: int, B: int,
               causal: bool) -> Kernel:
    """SDPA (flash / memory-efficient): Q, K, V in, output and fp32 log-sum-exp out; no score traffic."""
    flops = 4 * b * n_q * n_kv * q_width  # QKᵀ and A·V, the full rectangle (macs2)
    pairs = n_q * (n_q + 1) // 2 if causal else n_q * n_kv
    nbytes = B * b * (2 * n_q * q_width + 2 * n_kv * kv_width) + 4 * b * heads * n_q
    return Kernel("_scaled_dot_product_flash_attention", flops, nbytes, 4 * b * pairs * q_width)


def _hf_rms_norm(T: int, d: int, B: int) -> list[Kernel]:
    """HF's eager RMSNorm: upcast to fp32, pow, mean, +eps, rsqrt, scale, downcast, weight."""
    up = [_ew("_to_copy", T * d * (B + 4))] if B != 4 else []
    down = [_ew("_to_copy", T * d * (4 + B))] if B != 4 else []
    return [*up, _ew("pow", 8 * T * d), _ew("mean", 4 * T * d + 4 * T), _ew("add", 8 * T), _ew("rsqrt", 8 * T),
            _ew("mul", 8 * T * d + 4 * T), *down, _ew("mul", B * d + 2 * B * T * d)]


def _hf_rope(T: int, width: int, cos_bytes: int, B: int, dtype: int | None = None) -> list[Kernel]:
    """HF's eager rotary embedding of one of q, k: x·cos + rotate_half(x)·sin (rotate_half: neg + cat).

    ``dtype`` (bytes) is the precision it runs in when the code upcasts (Qwen2-VL's vision tower: fp32).
    """
    E = dtype or B
    x = T * width * E
    return [_ew("mul", 2 * x + cos_bytes), _ew("neg", x), _ew("cat", 2 * x), _ew("mul", 2 * x + cos_bytes),
            _ew("add", 3 * x)]


def _hf_decoder_layer(text: TextShape, b: int, n: int, cached: int, B: int, qkv_bias: bool,
                      positions: int) -> tuple[list[Kernel], list[Kernel]]:
    """Kernels of one HF Llama/Qwen2 decoder layer on ``n`` new tokens after ``cached`` ones: (attention, MLP).

    ``positions``: rows of the cos/sin tables (1 for Llama's shared positions, b for Qwen2's M-RoPE ones).
    """
    d, m, hd = text.hidden, text.intermediate, text.head_dim
    q, kv = text.num_heads * hd, text.num_kv_heads * hd
    T, L = b * n, cached + n
    cos = positions * n * hd * B
    proj = "addmm" if qkv_bias else "mm"
    attention = [*_hf_rms_norm(T, d, B), _mm(proj, T, d, q, B, qkv_bias), _mm(proj, T, d, kv, B, qkv_bias),
                 _mm(proj, T, d, kv, B, qkv_bias), *_hf_rope(T, q, cos, B), *_hf_rope(T, kv, cos, B),
                 # DynamicCache.update concatenates: reads the cache and the new K (V), writes both
                 _ew("cat", 2 * B * b * L * kv), _ew("cat", 2 * B * b * L * kv),
                 _attention(b, n, L, q, kv, text.num_heads, B, causal=n > 1),
                 _mm("mm", T, q, d, B), _ew("add", 3 * T * d * B)]
    gated = [_mm("mm", T, d, m, B), _ew("silu", 2 * T * m * B), _mm("mm", T, d, m, B), _ew("mul", 3 * T * m * B)]
    mlp = [*_hf_rms_norm(T, d, B), *gated, _mm("mm", T, m, d, B), _ew("add", 3 * T * d * B)]
    return attention, mlp


def _clip_layer(v: VisionShape, b: int, n: int, B: int) -> list[Kernel]:
    """One HF CLIP encoder layer: LayerNorm, Q/K/V/O with bias, SDPA, quick-GELU MLP (3 elementwise ops)."""
    d, m, T = v.hidden, v.intermediate, b * n
    return [_layer_norm(T, d, B), *[_mm("addmm", T, d, d, B, True) for _ in range(3)],
            _attention(b, n, n, d, d, v.num_heads, B, causal=False), _mm("addmm", T, d, d, B, True),
            _ew("add", 3 * T * d * B), _layer_norm(T, d, B), _mm("addmm", T, d, m, B, True),
            _ew("mul", 2 * T * m * B), _ew("sigmoid", 2 * T * m * B), _ew("mul", 3 * T * m * B),
            _mm("addmm", T, m, d, B, True), _ew("add", 3 * T * d * B)]


def _qwen2_vl_block(v: VisionShape, b: int, n: int, B: int) -> list[Kernel]:
    """One HF Qwen2-VL vision block: fused QKV, fp32 2-D RoPE, one SDPA per image, quick-GELU MLP."""
    d, m, T = v.hidden, v.intermediate, b * n
    F = 4
    rope = [_ew("_to_copy", T * d * (B + F)), _ew("_to_copy", T * d * (B + F)),
            *_hf_rope(T, d, T * v.head_dim // 2 * F * 2, B, F), *_hf_rope(T, d, T * v.head_dim // 2 * F * 2, B, F),
            _ew("_to_copy", T * d * (F + B)), _ew("_to_copy", T * d * (F + B))]
    per_image = [_attention(1, n, n, d, d, v.num_heads, B, causal=False) for _ in range(b)]
    return [_layer_norm(T, d, B), _mm("addmm", T, d, 3 * d, B, True), *rope, *_tiny("sub"), *per_image,
            _ew("cat", 2 * T * d * B), _mm("addmm", T, d, d, B, True), _ew("add", 3 * T * d * B),
            _layer_norm(T, d, B), _mm("addmm", T, d, m, B, True), _ew("mul", 2 * T * m * B),
            _ew("sigmoid", 2 * T * m * B), _ew("mul", 3 * T * m * B), _mm("addmm", T, m, d, B, True),
            _ew("add", 3 * T * d * B)]


def _projector(p: ProjectorShape, b: int, n: int, B: int) -> list[Kernel]:
    """LLaVA's MLP projector: Linear, GELU, Linear on the ``n`` visual tokens of each image."""
    T, dims = b * n, p.dims
    # batch > 1: the features are a strided slice (CLS dropped): the first linear copies, then mm + bias
    if b > 1:
        first = [_ew("clone", 2 * T * dims[0] * B), _mm("mm", T, dims[0], dims[1], B),
                 _ew("add", (2 * T + 1) * dims[1] * B)]
    else:
        first = [_mm("addmm", T, dims[0], dims[1], B, True)]
    rest: list[Kernel] = []
    for a, c in zip(dims[1:-1], dims[2:], strict=True):
        rest += [_ew("gelu", 2 * T * a * B), _mm("addmm", T, a, c, B, True)]
    return first + rest


def _tokens(tokens: TokensPerLayer, num_layers: int, what: str) -> list[int]:
    if isinstance(tokens, Integral):
        return [int(tokens)] * num_layers
    tokens = list(tokens)
    if len(tokens) != num_layers or any(int(t) != t or t < 0 for t in tokens):
        raise ValueError(f"{what}: need one whole count per layer ({num_layers}), got {tokens}")
    return [int(t) for t in tokens]


def _method_layer(visual: list[int]) -> int:
    """Where a method's kernels run: before the first LLM layer whose visual count drops (0: before the LLM)."""
    return next((i for i in range(1, len(visual)) if visual[i] < visual[i - 1]), 0)


def _method_steps(extra_kernels: int, host_syncs: int) -> list[tuple[str, Kernel | str]]:
    """``host_syncs`` syncs splitting ``extra_kernels`` small kernels into equal runs (a greedy loop)."""
    if extra_kernels < 0 or host_syncs < 0:
        raise ValueError(f"extra_kernels and host_syncs must be ≥ 0, got {extra_kernels}, {host_syncs}")
    steps: list[tuple[str, Kernel | str]] = []
    runs = host_syncs + 1
    for i in range(runs):
        share = extra_kernels * (i + 1) // runs - extra_kernels * i // runs
        steps += [("method", Kernel("method"))] * share
        if i < host_syncs:
            steps.append(("method", SYNC))
    return steps


# ---------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """An implementation: how many host seconds per kernel (× ``launch_s``) and its kernels per group."""

    name: str
    host_factor: float
    description: str
    framework: bool = True  # Hugging Face code: its host factor is HF_HOST_FACTOR (fitted)


# HF_HOST_FACTOR: host time per kernel of HF's eager modules ÷ one plain eager op (Python around each op),
# fitted with the H200 profile (tests/metrics/test_roofline.py).
HF_HOST_FACTOR = 2.31
RECIPES: dict[str, Recipe] = {
    "hf-llava": Recipe("hf-llava", HF_HOST_FACTOR,
                       "transformers 5.x LlavaForConditionalGeneration, eager modules, SDPA, DynamicCache, "
                       "attention_mask passed (processor inputs), logits_to_keep=1"),
    "hf-qwen2-vl": Recipe("hf-qwen2-vl", HF_HOST_FACTOR,
                          "transformers 5.x Qwen2VLForConditionalGeneration, eager modules, SDPA, DynamicCache, "
                          "attention_mask and mm_token_type_ids passed, logits_to_keep=1, one image per sample"),
    "bare": Recipe("bare", 1.0,
                   "the same shapes as the fewest plain kernels: one per linear, norm (fused), attention (SDPA), "
                   "activation, residual add; no RoPE, no bookkeeping", framework=False),
}
# "eager": the host issues every kernel; "graph": the whole forward replayed from CUDA graphs (no host cost per
# kernel); "graph-llm": only the LLM's decoder layers replayed from a graph (benchmarks/gpu_prefill.py --graphs:
# the LLM on the pruned, fixed-length sequence), the vision tower, projector, method and lm_head eager
LAUNCH_MODES = ("eager", "graph", "graph-llm")
GRAPHED_GROUPS: dict[str, tuple[str, ...]] = {"graph-llm": ("llm.attention", "llm.mlp")}
# Qwen2-VL's decode step computes its M-RoPE positions from generate()'s state: not traced, not modelled
DECODE_RECIPES = ("hf-llava", "bare")


def _check_recipe(recipe: str, launch: str) -> Recipe:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if launch not in LAUNCH_MODES:
        raise ValueError(f"unknown launch mode {launch!r}; known: {', '.join(LAUNCH_MODES)}")
    return RECIPES[recipe]


def _vision_steps(recipe: str, shape: MLLMShape, b: int, vision: list[int], B: int) -> list[Kernel]:
    v = shape.vision
    pixels = b * v.num_patches * v.num_channels * v.patch_size ** 2
    conv = Kernel("convolution", 2 * pixels * v.hidden,
                  B * (pixels + v.num_channels * v.patch_size ** 2 * v.hidden + b * v.num_patches * v.hidden))
    n0 = vision[0]
    if recipe == "hf-qwen2-vl":
        # 2-D rotary positions (per image), cu_seqlens bookkeeping and the rotary tables
        rotary = (_tiny("arange", "arange", "clone", "clone", "stack", "repeat") * b
                  + _tiny("cat", "mul", "repeat_interleave", "index_select", "cumsum", "constant_pad_nd"))
        tables = _tiny("_to_copy", "mul", "cos", "mul", "sin", "mul", "cat", "cat", "cat", "cat")
        layers = [k for n in vision for k in _qwen2_vl_block(v, b, n, B)]
        return [*rotary, conv, *tables, *layers]
    embed = [conv, _ew("cat", 2 * b * n0 * v.hidden * B), _ew("embedding", 2 * n0 * v.hidden * B + 8 * n0),
             _ew("add", 2 * b * n0 * v.hidden * B + n0 * v.hidden * B), _layer_norm(b * n0, v.hidden, B)]
    if recipe == "bare":
        layers = [k for n in vision for k in _bare_layer(v, b, n, B, vit=True)]
        return [*embed, *layers]
    layers = [k for n in vision for k in _clip_layer(v, b, n, B)]
    return [*embed, *layers, _layer_norm(b, v.hidden, B)]  # post_layernorm on the CLS token


def _bare_layer(s: VisionShape | TextShape, b: int, n: int, B: int, vit: bool, cached: int = 0) -> list[Kernel]:
    """A transformer layer as the fewest kernels: fused norm, one GEMM per linear, SDPA, activation, adds."""
    d, m, T = s.hidden, s.intermediate, b * n
    q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    norm = _layer_norm(T, d, B) if vit else _ew("rms_norm", 2 * T * d * B + d * B + 4 * T)
    op = "addmm" if vit else "mm"
    attention = [norm, _mm(op, T, d, q, B, vit), _mm(op, T, d, kv, B, vit), _mm(op, T, d, kv, B, vit),
                 _attention(b, n, cached + n, q, kv, s.num_heads, B, causal=not vit and n > 1),
                 _mm(op, T, q, d, B, vit), _ew("add", 3 * T * d * B)]
    if s.gated_mlp:
        mlp = [_mm(op, T, d, m, B, vit), _mm(op, T, d, m, B, vit), _ew("silu", 2 * T * m * B),
               _ew("mul", 3 * T * m * B)]
    else:
        mlp = [_mm(op, T, d, m, B, vit), _ew("gelu", 2 * T * m * B)]
    return [*attention, norm, *mlp, _mm(op, T, m, d, B, vit), _ew("add", 3 * T * d * B)]


def _llm_layers(recipe: str, text: TextShape, b: int, new: list[int], cached: list[int], B: int
                ) -> list[list[tuple[str, Kernel]]]:
    """Per LLM layer, its (group, kernel) steps."""
    layers = []
    for n, c in zip(new, cached, strict=True):
        if recipe == "bare":
            kernels = _bare_layer(text, b, n, B, vit=False, cached=c)
            attention, mlp = kernels[:7], kernels[7:]
        else:
            attention, mlp = _hf_decoder_layer(text, b, n, c, B, qkv_bias=recipe == "hf-qwen2-vl",
                                               positions=b if recipe == "hf-qwen2-vl" else 1)
        layers.append([("llm.attention", k) for k in attention] + [("llm.mlp", k) for k in mlp])
    return layers


def _lm_head(recipe: str, text: TextShape, b: int, n: int, rows: int, B: int) -> list[tuple[str, Kernel]]:
    """The final norm (on all ``n`` positions) and the lm_head on ``rows`` positions per sample."""
    T = b * n
    final = _hf_rms_norm(T, text.hidden, B) if recipe != "bare" else [_ew("rms_norm", 2 * T * text.hidden * B)]
    return [("lm_head", k) for k in final] + [("lm_head", _mm("mm", b * rows, text.hidden, text.vocab_size, B))]


def prefill_plan(shape: MLLMShape, vision_tokens_per_layer: TokensPerLayer | None, visual_tokens_per_layer:
                 TokensPerLayer, text_tokens: int, batch: int = 1, *, dtype_bytes: int = 2,
                 extra_kernels: int = 0, host_syncs: int = 0, recipe: str = "hf-llava",
                 projector_tokens: int | None = None, method_layer: int | None = None,
                 logits_rows: int = 1) -> Plan:
    """The kernels and syncs of one prefill (vision tower, projector, LLM, lm_head on ``logits_rows``).

    Token counts are per sample; every sample of the batch has the same. ``projector_tokens`` defaults
    to the visual tokens of the first LLM layer (as in :func:`~tokencodec.metrics.cost.prefill_flops`);
    for Qwen2-VL the merger sees ``4 ×`` as many vision-tower tokens and outputs ``projector_tokens``.
    """
    rec = _check_recipe(recipe, "eager")
    if batch < 1 or text_tokens < 0:
        raise ValueError(f"batch must be ≥ 1 and text_tokens ≥ 0, got {batch}, {text_tokens}")
    B, b, v, t = dtype_bytes, batch, shape.vision, shape.text
    vision = _tokens(v.num_tokens if vision_tokens_per_layer is None else vision_tokens_per_layer,
                     v.num_layers, "vision_tokens_per_layer")
    visual = _tokens(visual_tokens_per_layer, t.num_layers, "visual_tokens_per_layer")
    n_proj = visual[0] if projector_tokens is None else projector_tokens
    N = visual[0] + text_tokens  # LLM input length
    at = _method_layer(visual) if method_layer is None else method_layer
    method = _method_steps(extra_kernels, host_syncs)

    steps: list[tuple[str, Kernel | str]] = []
    if recipe != "bare":
        steps.append(("other", _ew("embedding", 2 * b * N * t.hidden * B + 8 * b * N)))
    steps += [("vision", k) for k in _vision_steps(recipe, shape, b, vision, B)]
    if recipe == "hf-qwen2-vl":
        patches = vision[-1]  # the merger normalises every patch, then merges 2×2 into one token
        steps += [("projector", k) for k in [_layer_norm(b * patches, v.hidden, B),
                                             *_projector(shape.projector, 1, b * n_proj, B)]]
    else:
        steps += [("projector", k) for k in _projector(shape.projector, b, n_proj, B)]
    feats = 2 * b * n_proj * t.hidden * B
    merge = [_ew("cat", feats), *_tiny("eq", "sum", "mul", "eq")]
    scatter = _ew("masked_scatter", 2 * b * N * t.hidden * B + feats // 2 + b * N)
    if recipe == "hf-llava":
        # get_placeholder_mask reads two values (a count and an all-true check); the causal-mask check reads one
        steps += [("other", k) for k in merge] + [("other", SYNC), ("other", Kernel("_is_all_true")),
                                                  ("other", SYNC), ("other", scatter)]
        steps += [("other", k) for k in _tiny("arange", "add", "_to_copy", "sum", "eq")] + [("other", SYNC)]
        steps += [("other", k) for k in _tiny("_to_copy", "_to_copy", "mul", "cat", "cos", "mul", "sin", "mul",
                                              "_to_copy", "_to_copy")]
    elif recipe == "hf-qwen2-vl":
        steps += _qwen2_vl_glue(merge, scatter, b)
    layers = _llm_layers(recipe, t, b, [n + text_tokens for n in visual], [0] * t.num_layers, B)
    for i, layer in enumerate(layers):
        if i == at:
            steps += method
        steps += layer
    steps += _lm_head(recipe, t, b, visual[-1] + text_tokens, logits_rows, B)
    return Plan(recipe, "prefill", b, B, tuple(steps), rec.host_factor,
                {"method_at": "before the LLM" if at == 0 else f"before LLM layer {at}",
                 "vision_tokens": vision, "visual_tokens": visual, "text_tokens": text_tokens,
                 "projector_tokens": n_proj, "logits_rows": logits_rows})


def _qwen2_vl_glue(merge: list[Kernel], scatter: Kernel, b: int) -> list[tuple[str, Kernel | str]]:
    """Qwen2-VL between the merger and the LLM: placeholder checks, masked_scatter, the M-RoPE position ids
    (get_rope_index: a loop over the samples with four host reads each), the causal-mask check, the rotary
    tables."""
    def tiny(*ops: str) -> list[tuple[str, Kernel]]:
        return [("other", k) for k in _tiny(*ops)]

    merge = [merge[0], *_tiny("eq", "eq", "sum", "mul", "eq")]  # image and video placeholder masks
    steps: list[tuple[str, Kernel | str]] = [*tiny("prod", "floor_divide"), *[("other", k) for k in merge],
                                             ("other", SYNC), *tiny("_is_all_true"), ("other", SYNC),
                                             *tiny("sum"), ("other", scatter), *tiny("zeros")]
    for _ in range(b):
        steps += [*tiny("_to_copy", "index", "_to_copy", "index", "arange", "add"), *[("other", SYNC)] * 3,
                  *tiny("arange", "mul", "_to_copy", "arange", "add", "arange", "add", "stack", "add_", "copy_",
                        "gt"), ("other", SYNC),
                  *tiny("floor_divide", "add", "arange", "add", "add_", "cat", "_to_copy", "index_put_", "max",
                        "add", "sub")]
    steps += [*tiny("_to_copy", "sum", "eq"), ("other", SYNC),
              *tiny("_to_copy", "mul", "cos", "mul", "sin", "mul", "cat", "cat", "cat", "cat", "_to_copy",
                    "_to_copy")]
    return steps


def decode_plan(shape: MLLMShape, cached_tokens_per_layer: TokensPerLayer, batch: int = 1, *,
                dtype_bytes: int = 2, recipe: str = "hf-llava", extra_kernels: int = 0,
                host_syncs: int = 0) -> Plan:
    """The kernels of one decode step: one new token per sample after ``cached_tokens_per_layer`` cached.

    The cache of layer i holds its visual tokens + the text tokens + the tokens generated so far. The
    forward only: ``generate()``'s logits processing and stopping checks are not in it.
    """
    rec = _check_recipe(recipe, "eager")
    if recipe not in DECODE_RECIPES:
        raise ValueError(f"no decode-step recipe for {recipe!r}; known: {', '.join(DECODE_RECIPES)}")
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    B, b, t = dtype_bytes, batch, shape.text
    cached = _tokens(cached_tokens_per_layer, t.num_layers, "cached_tokens_per_layer")
    steps: list[tuple[str, Kernel | str]] = []
    if recipe != "bare":
        steps.append(("other", _ew("embedding", 2 * b * t.hidden * B + 8 * b)))
        # positions, the causal-mask check (one host read), the rotary tables
        steps += [("other", k) for k in _tiny("arange", "add", "_to_copy", "sum", "eq")] + [("other", SYNC)]
        steps += [("other", k) for k in _tiny("_to_copy", "_to_copy", "mul", "cat", "cos", "mul", "sin", "mul",
                                              "_to_copy", "_to_copy")]
    steps += _method_steps(extra_kernels, host_syncs)
    steps += [step for layer in _llm_layers(recipe, t, b, [1] * t.num_layers, cached, B) for step in layer]
    steps += _lm_head(recipe, t, b, 1, 1, B)
    return Plan(recipe, "decode", b, B, tuple(steps), rec.host_factor, {"cached_tokens": cached})


# ---------------------------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class GroupCost:
    """One layer group of a forward: what it launches and moves, and the seconds it adds to the forward.

    ``device_s``: its kernels' device time; ``host_s``: the host time to issue them; ``time_s``: how much
    later the forward ends because of it (the queue decides: the larger of the two, unless hidden);
    ``bound``: "launch" when issuing its kernels takes longer than running them, or when the kernels'
    device floor (``kernel_s`` each) outweighs their FLOPs and bytes terms; else "compute" or "memory",
    whichever term decides more of its kernels' time.
    """

    name: str
    kernels: int
    host_syncs: int
    flops: int
    bytes: int
    device_s: float
    host_s: float
    time_s: float
    bound: str


@dataclass(frozen=True)
class Prediction:
    """Predicted latency of one forward (prefill or decode step) on a device profile."""

    phase: str
    recipe: str
    launch: str
    batch: int
    dtype_bytes: int
    groups: tuple[GroupCost, ...]
    latency_s: float
    profile: DeviceProfile
    host_factor: float
    assumptions: dict

    @property
    def device_s(self) -> float:
        """Summed kernel time: what a profiler reports as CUDA kernel time."""
        return sum(g.device_s for g in self.groups)

    @property
    def host_s(self) -> float:
        return sum(g.host_s for g in self.groups)

    @property
    def kernels(self) -> int:
        return sum(g.kernels for g in self.groups)

    @property
    def host_syncs(self) -> int:
        return sum(g.host_syncs for g in self.groups)

    @property
    def flops(self) -> int:
        return sum(g.flops for g in self.groups)

    @property
    def bytes(self) -> int:
        return sum(g.bytes for g in self.groups)

    @property
    def bound(self) -> str:
        """"launch" when the host's issue time exceeds the device's work, else the bound of the groups that
        hold most of the device time."""
        if self.host_s > self.device_s:
            return "launch"
        by_bound = {b: sum(g.device_s for g in self.groups if g.bound == b) for b in ("compute", "memory", "launch")}
        return max(by_bound, key=by_bound.get)

    def group(self, name: str) -> GroupCost:
        return next(g for g in self.groups if g.name == name)

    def rates(self) -> dict[str, float]:
        return {"latency_pred_s": self.latency_s}

    def provenance(self) -> dict:
        return {"model": "tokencodec roofline", "phase": self.phase, "recipe": self.recipe,
                "recipe_text": RECIPES[self.recipe].description, "launch": self.launch, "batch": self.batch,
                "dtype_bytes": self.dtype_bytes, "host_factor": self.host_factor,
                "profile": self.profile.as_dict(), "flops_convention": CONVENTIONS["macs2"],
                "attention": "SDPA (flash / memory-efficient): scores never written; causal kernels time "
                             "half the square", **self.assumptions}


def simulate(plan: Plan, device: str | DeviceProfile, launch: str = "eager",
             host_factor: float | None = None) -> Prediction:
    """Run ``plan`` through the host-issue / device-queue model of ``device`` (``host_factor``: override
    the recipe's, for calibration)."""
    profile = get_profile(device)
    _check_recipe(plan.recipe, launch)
    if host_factor is not None and RECIPES[plan.recipe].framework:
        plan = replace(plan, host_factor=host_factor)
    peak = profile.peak(plan.dtype_bytes) * profile.compute_eff
    bandwidth = profile.bandwidth * profile.memory_eff
    # a method's own kernels are plain torch ops (no module code around them): one launch_s each
    host_cost = {"method": 0.0 if launch == "graph" else profile.launch_s}
    host_cost.update(dict.fromkeys(GRAPHED_GROUPS.get(launch, ()), 0.0))
    default_host = 0.0 if launch == "graph" else profile.launch_s * plan.host_factor
    host = device_end = 0.0  # host clock; when the device finishes its queue
    acc: dict[str, dict] = {}
    order: list[str] = []
    for group, step in plan.steps:
        if group not in acc:
            order.append(group)
            acc[group] = dict(kernels=0, syncs=0, flops=0, bytes=0, device=0.0, host=0.0, time=0.0,
                              compute=0.0, memory=0.0, floor=0.0)
        a = acc[group]
        before = max(host, device_end)
        if step == SYNC:
            host = max(host, device_end) + profile.sync_s
            a["syncs"] += 1
        else:
            compute, memory = step.work_flops / peak, step.bytes / bandwidth
            run = profile.kernel_s + max(compute, memory)
            per_kernel_host = host_cost.get(group, default_host)
            host += per_kernel_host
            if profile.synchronous:  # the CPU runs the op itself
                host += run
                device_end = host
            else:
                device_end = max(host, device_end) + run
            a["kernels"] += 1
            a["flops"] += step.flops
            a["bytes"] += step.bytes
            a["device"] += run
            a["host"] += per_kernel_host
            a["floor"] += profile.kernel_s
            a["compute" if compute >= memory else "memory"] += run - profile.kernel_s
        a["time"] += max(host, device_end) - before
    groups = []
    for name in order:
        a = acc[name]
        bound = max(("compute", "memory", "floor"), key=a.get)
        bound = "launch" if a["host"] > a["device"] or bound == "floor" else bound
        groups.append(GroupCost(name, a["kernels"], a["syncs"], a["flops"], a["bytes"], a["device"], a["host"],
                                a["time"], bound))
    return Prediction(plan.phase, plan.recipe, launch, plan.batch, plan.dtype_bytes, tuple(groups),
                      max(host, device_end), profile, plan.host_factor, dict(plan.assumptions))


def predict_prefill(shape: MLLMShape, vision_tokens_per_layer: TokensPerLayer | None,
                    visual_tokens_per_layer: TokensPerLayer, text_tokens: int, batch: int,
                    device: str | DeviceProfile, dtype_bytes: int = 2, extra_kernels: int = 0,
                    host_syncs: int = 0, *, recipe: str = "hf-llava", launch: str = "eager",
                    projector_tokens: int | None = None, method_layer: int | None = None,
                    logits_rows: int = 1) -> Prediction:
    """Predicted prefill latency: vision tower, projector, LLM and lm_head of ``batch`` samples.

    ``vision_tokens_per_layer``: tokens of each vision-tower layer (None: all patches); ``visual_tokens_
    per_layer``: visual tokens of each LLM layer (an int or one per layer, as in cost.py); a method's
    ``extra_kernels`` and ``host_syncs`` are added where it acts (see the module docstring).
    """
    plan = prefill_plan(shape, vision_tokens_per_layer, visual_tokens_per_layer, text_tokens, batch,
                        dtype_bytes=dtype_bytes, extra_kernels=extra_kernels, host_syncs=host_syncs,
                        recipe=recipe, projector_tokens=projector_tokens, method_layer=method_layer,
                        logits_rows=logits_rows)
    return simulate(plan, device, launch)


def predict_decode_step(shape: MLLMShape, visual_tokens_per_layer: TokensPerLayer, text_tokens: int,
                        generated: int, batch: int, device: str | DeviceProfile, dtype_bytes: int = 2,
                        extra_kernels: int = 0, host_syncs: int = 0, *, recipe: str = "hf-llava",
                        launch: str = "eager") -> Prediction:
    """Predicted latency of the decode step that follows ``generated`` tokens already generated.

    Its cache holds, per layer, that layer's visual tokens + ``text_tokens`` + ``generated``: weights and
    KV reads dominate, which is where pruning inside the LLM keeps paying after the prefill.
    """
    visual = _tokens(visual_tokens_per_layer, shape.text.num_layers, "visual_tokens_per_layer")
    cached = [n + text_tokens + generated for n in visual]
    plan = decode_plan(shape, cached, batch, dtype_bytes=dtype_bytes, recipe=recipe,
                       extra_kernels=extra_kernels, host_syncs=host_syncs)
    return simulate(plan, device, launch)


# Qwen2-VL-7B: a 32-block ViT (embed 1280, 16 heads, MLP ×4, patches of 2 frames × 14² × 3 channels) on
# 672×672 px = 48² patches, a 2×2 merger (LayerNorm, 5120 → 5120 → 3584) to 576 tokens, Qwen2-7B.
QWEN2_VL_7B = MLLMShape(
    VisionShape(num_layers=32, hidden=1280, intermediate=5120, num_heads=16, image_size=672, patch_size=14,
                num_channels=6, cls_token=False),
    ProjectorShape((5120, 5120, 3584)),
    TextShape(num_layers=28, hidden=3584, intermediate=18944, num_heads=28, num_kv_heads=4, head_dim=128,
              vocab_size=152064))


# ---------------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Observation:
    """A measured time to calibrate against: ``plan`` run ``launch``-style took ``measured_s``.

    ``quantity``: "wall" (the forward's latency) or "kernel" (summed kernel time, as a profiler reports);
    ``minus``: the measurement is the difference of two runs, ``plan``'s minus ``minus``'s (a scan that
    cancels what both share).
    """

    name: str
    plan: Plan
    measured_s: float
    launch: str = "eager"
    quantity: str = "wall"
    minus: Plan | None = None

    def predict(self, profile: DeviceProfile, host_factor: float | None = None) -> float:
        def one(plan: Plan) -> float:
            p = simulate(plan, profile, self.launch, host_factor)
            return p.device_s if self.quantity == "kernel" else p.latency_s

        if self.quantity not in ("wall", "kernel"):
            raise ValueError(f"{self.name}: quantity {self.quantity!r}; allowed: wall, kernel")
        return one(self.plan) - (one(self.minus) if self.minus is not None else 0.0)


FIT_FIELDS = ("compute_eff", "memory_eff", "kernel_s", "launch_s", "sync_s", "host_factor")


def fit_profile(profile: str | DeviceProfile, observations: list[Observation],
                fields: tuple[str, ...] = FIT_FIELDS, host_factor: float = HF_HOST_FACTOR
                ) -> tuple[DeviceProfile, float]:
    """Calibrate ``fields`` of a profile (and the HF recipes' ``host_factor``) on measured times.

    Least squares on log(predicted / measured), so that every observation weighs by its relative error;
    efficiencies stay in (0, 1]. Returns the fitted profile and host factor. Fit on some measurements and
    check the model on others: an observation used here says nothing about the model's error.
    """
    import numpy as np
    from scipy.optimize import least_squares

    base = get_profile(profile)
    unknown = set(fields) - set(FIT_FIELDS)
    if unknown or not fields:
        raise ValueError(f"cannot fit {sorted(unknown) or 'nothing'}; fields: {', '.join(FIT_FIELDS)}")
    scale = {"compute_eff": 1.0, "memory_eff": 1.0, "kernel_s": 1e-6, "launch_s": 1e-6, "sync_s": 1e-6,
             "host_factor": 1.0}
    bounds = {"compute_eff": (0.01, 1.0), "memory_eff": (0.01, 1.0), "kernel_s": (0.0, 100.0),
              "launch_s": (0.0, 1000.0), "sync_s": (0.0, 10000.0), "host_factor": (1.0, 20.0)}
    start = {**{f: getattr(base, f) for f in FIT_FIELDS if f != "host_factor"}, "host_factor": host_factor}

    def unpack(x) -> tuple[DeviceProfile, float]:
        values = {f: float(v) * scale[f] for f, v in zip(fields, x, strict=True)}
        factor = values.pop("host_factor", host_factor)
        return replace(base, **values), factor

    def residuals(x) -> list[float]:
        fitted, factor = unpack(x)
        return [math.log(max(o.predict(fitted, factor), 1e-12) / o.measured_s) for o in observations]

    x0 = [min(max(start[f] / scale[f], bounds[f][0]), bounds[f][1]) for f in fields]
    lo, hi = zip(*(bounds[f] for f in fields), strict=True)
    solution = least_squares(residuals, np.array(x0), bounds=(np.array(lo), np.array(hi)), x_scale="jac")
    return unpack(solution.x)


__all__ = [
    "CPU", "GRAPHED_GROUPS", "HF_HOST_FACTOR", "H200_FIT", "LAUNCH_MODES", "PROFILES", "QWEN2_VL_7B", "RECIPES", "SYNC",
    "DeviceProfile", "GroupCost", "Kernel", "Plan", "Prediction", "Recipe", "decode_plan", "get_profile",
    "known_profiles", "predict_decode_step", "predict_prefill", "prefill_plan", "probe_cpu", "simulate",
    "FIT_FIELDS", "Observation", "fit_profile",
]
