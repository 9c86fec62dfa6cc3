"""Cost accounting for token-compression pipelines: FLOPs, visual tokens, KV-cache bytes, latency.

Everything but :func:`measure_latency` is a pure function of shapes: no model, no weights.
FLOP counts are exact Python integers under a named convention, because published numbers for
the same model differ by up to 2.6x with the convention (FastV's formula gives 3.23 TFLOPs for
LLaVA-1.5-7B prefill at 622 tokens, counting 2 FLOPs per multiply-add gives 8.26):

``macs2`` (default)
    2 FLOPs per multiply-add of every matmul and convolution. Q, K, V, O projections with K/V of
    width ``num_key_value_heads * head_dim`` (GQA); attention scores QKᵀ and A·V at
    ``2·n²·heads·head_dim`` each, the full square (eager attention computes the masked half and
    then masks it; see ``macs2-causal`` for kernels that skip it); the MLP with its real number of
    matrices (3 gated, 2 plain). Norms, softmax, activations, RoPE, residual adds, biases and
    embedding lookups are ignored. ``torch.utils.flop_counter.FlopCounterMode`` counts exactly this
    for eager attention.
``macs2-causal``
    As ``macs2``, but LLM attention counts only the causal triangle: ``n(n+1)/2`` query-key pairs
    instead of ``n²`` (a kernel that skips masked blocks). ViT attention stays full.
``fastv``
    FastV's published per-layer formula ``n·(4d² + 2n·d + 2d·m)``: multiply-adds, as if every
    layer had full multi-head attention and a two-matrix MLP, whatever the real model. Parts
    outside the transformer layers (patch embedding, projector, lm_head) are counted as
    multiply-adds to stay consistent with it.

Token counts per layer (``tokens_per_layer``) are an int, or a list with one entry per layer so
that in-LLM pruning schedules (FastV, PyramidDrop, SparseVLM) and in-ViT merging (ToMe) are exact.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral

CONVENTIONS: dict[str, str] = {
    "macs2": ("macs2: 2 FLOPs per multiply-add; Q/K/V/O projections with GQA-aware K/V widths; "
              "attention QK^T and A.V as full n x n squares (causal mask not exploited); MLP with its real "
              "matrix count (3 gated, 2 plain); norms, softmax, activations, RoPE, biases, residuals "
              "ignored"),
    "macs2-causal": ("macs2-causal: as macs2, but LLM attention counts only the causal triangle, n(n+1)/2 "
                     "query-key pairs; ViT attention stays full"),
    "fastv": ("fastv: FastV's formula n(4d^2 + 2nd + 2dm) per layer (multiply-adds, full multi-head "
              "attention, two-matrix MLP); patch embedding, projector and lm_head as multiply-adds"),
}

TokensPerLayer = int | Sequence[int]


# ---------------------------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class VisionShape:
    """A ViT encoder (CLIP, SigLIP): what its FLOPs depend on."""

    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    cls_token: bool = True
    gated_mlp: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @property
    def num_kv_heads(self) -> int:  # ViTs use plain multi-head attention
        return self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Tokens every encoder layer sees without merging: the patches plus the CLS token if any."""
        return self.num_patches + int(self.cls_token)

    @classmethod
    def from_config(cls, config) -> VisionShape:
        """From a ``CLIPVisionConfig`` / ``SiglipVisionConfig``, or a config holding one as ``vision_config``.

        SigLIP's attention-pooling head (``vision_use_head``) is not counted: MLLMs read hidden states.
        """
        config = getattr(config, "vision_config", None) or config
        image_size = config.image_size
        if not isinstance(image_size, int):  # (height, width): this shape keeps square images only
            image_size = image_size[0]
        return cls(num_layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, num_heads=config.num_attention_heads,
                   image_size=image_size, patch_size=config.patch_size,
                   num_channels=getattr(config, "num_channels", 3),
                   cls_token="siglip" not in getattr(config, "model_type", ""))


@dataclass(frozen=True)
class TextShape:
    """A decoder-only LLM (Llama, Vicuna, Qwen2): what its FLOPs and KV cache depend on."""

    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    gated_mlp: bool = True

    @classmethod
    def from_config(cls, config) -> TextShape:
        """From a ``LlamaConfig`` / ``Qwen2Config``-like config, or one holding it as ``text_config``."""
        config = getattr(config, "text_config", None) or config
        heads = config.num_attention_heads
        return cls(num_layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, num_heads=heads,
                   num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   vocab_size=config.vocab_size)


@dataclass(frozen=True)
class ProjectorShape:
    """An MLP projector given by its layer widths: LLaVA's is (vision_hidden, text_hidden, text_hidden)."""

    dims: tuple[int, ...]

    @classmethod
    def from_config(cls, config) -> ProjectorShape:
        """From a ``LlavaConfig``-like config (vision_config, text_config, vision_feature_layer)."""
        layers = getattr(config, "vision_feature_layer", -1)
        n_layers = len(layers) if isinstance(layers, Sequence) else 1  # several layers are concatenated
        text = config.text_config.hidden_size
        return cls((config.vision_config.hidden_size * n_layers, text, text))


@dataclass(frozen=True)
class MLLMShape:
    """A LLaVA-style pipeline: ViT, projector, LLM."""

    vision: VisionShape
    projector: ProjectorShape
    text: TextShape

    @classmethod
    def from_config(cls, config) -> MLLMShape:
        """From a ``LlavaConfig``-like config, or a Qwen2-VL / Qwen2.5-VL one (whose encoder's patch count
        depends on the image, so its points need ``vision_patches``).

        ``LlavaNextConfig`` and ``LlavaOnevisionConfig`` are LLaVA-like (OneVision: SigLIP without CLS and Qwen2):
        the shape is one view's tower; an image's AnyRes views or a video's frames multiply it (``images=`` of
        :meth:`~tokencodec.metrics.rates.CostModel.point`, the adapter's ``extra["views"]``)."""
        if getattr(config, "model_type", "") in ("qwen2_vl", "qwen2_5_vl"):
            return cls._qwen_vl(config)
        return cls(VisionShape.from_config(config.vision_config), ProjectorShape.from_config(config),
                   TextShape.from_config(config.text_config))

    @classmethod
    def _qwen_vl(cls, config) -> MLLMShape:
        # Qwen2-VL: width embed_dim, plain MLP of mlp_ratio; Qwen2.5-VL: width hidden_size, gated MLP. Both: a
        # Conv3d patch embedding over temporal_patch_size frames, no CLS, a PatchMerger MLP on 2×2 groups.
        # Qwen2.5-VL's windowed blocks are counted as full attention (an upper bound on those blocks).
        v = config.vision_config
        if config.model_type == "qwen2_vl":
            width, inter, gated, out = v.embed_dim, int(v.embed_dim * v.mlp_ratio), False, v.hidden_size
        else:
            width, inter, gated, out = v.hidden_size, v.intermediate_size, True, v.out_hidden_size
        group = width * v.spatial_merge_size ** 2
        vision = VisionShape(num_layers=v.depth, hidden=width, intermediate=inter, num_heads=v.num_heads,
                             image_size=0, patch_size=v.patch_size,
                             num_channels=v.in_channels * v.temporal_patch_size, cls_token=False, gated_mlp=gated)
        text = getattr(config, "text_config", None) or config
        return cls(vision, ProjectorShape((group, group, out)), TextShape.from_config(text))


# LLaVA-1.5-7B. HF's LLaVA runs all 24 CLIP layers although it reads layer -2 (the original does too).
CLIP_VIT_L14_336 = VisionShape(num_layers=24, hidden=1024, intermediate=4096, num_heads=16,
                               image_size=336, patch_size=14)  # 576 patches + CLS = 577 tokens
VICUNA_7B = TextShape(num_layers=32, hidden=4096, intermediate=11008, num_heads=32, num_kv_heads=32,
                      head_dim=128, vocab_size=32000)
LLAVA_1_5_7B = MLLMShape(CLIP_VIT_L14_336, ProjectorShape((1024, 4096, 4096)), VICUNA_7B)


# ---------------------------------------------------------------------------------------------- FLOPs

@dataclass(frozen=True)
class Flops:
    """FLOPs of a pipeline part or of several parts added with ``+``.

    ``parts`` maps "vision", "projector", "llm" to their totals; ``per_layer`` lists transformer
    layers in execution order (ViT layers, then LLM layers); ``detail`` splits out the terms that
    are not layers (patch embedding, lm_head). ``convention`` names an entry of :data:`CONVENTIONS`.
    """

    convention: str
    parts: dict[str, int]
    per_layer: tuple[int, ...] = ()
    detail: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def convention_text(self) -> str:
        return CONVENTIONS[self.convention]

    def __add__(self, other: Flops) -> Flops:
        if other.convention != self.convention:
            raise ValueError(f"cannot add FLOPs of conventions {self.convention!r} and {other.convention!r}")
        parts = dict(self.parts)
        for name, value in other.parts.items():
            parts[name] = parts.get(name, 0) + value
        detail = dict(self.detail)
        for name, value in other.detail.items():
            detail[name] = detail.get(name, 0) + value
        return Flops(self.convention, parts, self.per_layer + other.per_layer, detail)


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {convention!r}; known: {', '.join(CONVENTIONS)}")


def _per_layer(tokens_per_layer: TokensPerLayer, num_layers: int) -> list[int]:
    if isinstance(tokens_per_layer, Integral):
        return [int(tokens_per_layer)] * num_layers
    tokens = [int(t) for t in tokens_per_layer]
    if tokens != list(tokens_per_layer):  # a fractional count would be truncated silently
        raise ValueError(f"token counts must be whole numbers, got {list(tokens_per_layer)}")
    if len(tokens) != num_layers:
        raise ValueError(f"tokens_per_layer has {len(tokens)} entries for a model of {num_layers} layers")
    return tokens


def _layer_flops(n: int, shape: VisionShape | TextShape, convention: str, causal: bool) -> int:
    d, m = shape.hidden, shape.intermediate
    if convention == "fastv":
        return n * (4 * d * d + 2 * n * d + 2 * d * m)
    q_width, kv_width = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    projections = 2 * n * d * (2 * q_width + 2 * kv_width)  # Q and O: d x q_width; K and V: d x kv_width
    pairs = n * (n + 1) // 2 if causal else n * n
    attention = 2 * (2 * pairs * q_width)  # QK^T and A.V, every head (GQA shares K/V, not the work)
    mlp = 2 * n * d * m * (3 if shape.gated_mlp else 2)
    return projections + attention + mlp


def vit_flops(shape: VisionShape, tokens_per_layer: TokensPerLayer | None = None,
              convention: str = "macs2", patches: int | None = None) -> Flops:
    """ViT FLOPs: the patch-embedding convolution on all patches plus every encoder layer.

    ``tokens_per_layer`` defaults to ``shape.num_tokens`` (no merging); a list gives one count
    per layer (ToMe). ``patches`` overrides ``shape.num_patches`` for encoders whose patch count
    depends on the image (Qwen2-VL's, where it is required). Post-layer norms and the pooling head
    are not counted.
    """
    _check(convention)
    patches = shape.num_patches if patches is None else patches
    if patches <= 0:
        raise ValueError("this vision encoder's patch count depends on the image: pass patches=")
    default = patches + int(shape.cls_token)
    tokens = _per_layer(default if tokens_per_layer is None else tokens_per_layer, shape.num_layers)
    layers = tuple(_layer_flops(n, shape, convention, causal=False) for n in tokens)
    macs = patches * shape.num_channels * shape.patch_size ** 2 * shape.hidden
    patch_embed = macs if convention == "fastv" else 2 * macs
    return Flops(convention, {"vision": patch_embed + sum(layers)}, layers,
                 {"vision.patch_embed": patch_embed, "vision.layers": sum(layers)})


def projector_flops(shape: ProjectorShape, n_tokens: int, convention: str = "macs2") -> Flops:
    """Projector FLOPs for ``n_tokens`` visual tokens: one matmul per pair of consecutive widths."""
    _check(convention)
    macs = n_tokens * sum(a * b for a, b in zip(shape.dims[:-1], shape.dims[1:], strict=True))
    return Flops(convention, {"projector": macs if convention == "fastv" else 2 * macs})


def llm_prefill_flops(shape: TextShape, tokens_per_layer: TokensPerLayer, text_tokens: int,
                      include_lm_head: bool | int = False, convention: str = "macs2") -> Flops:
    """LLM prefill FLOPs; layer i runs on ``tokens_per_layer[i] + text_tokens`` tokens.

    ``tokens_per_layer`` counts visual tokens: an int, or one count per layer for in-LLM pruning
    (FastV with K, keep: ``[576] * K + [keep] * (L - K)``). ``include_lm_head`` is False, True (the
    last position only, as ``generate()`` does at prefill), or the number of positions whose logits
    are computed (the sequence length for a plain forward).
    """
    _check(convention)
    causal = convention == "macs2-causal"
    tokens = _per_layer(tokens_per_layer, shape.num_layers)
    layers = tuple(_layer_flops(v + text_tokens, shape, convention, causal) for v in tokens)
    macs = int(include_lm_head) * shape.hidden * shape.vocab_size
    lm_head = macs if convention == "fastv" else 2 * macs
    return Flops(convention, {"llm": sum(layers) + lm_head}, layers,
                 {"llm.layers": sum(layers), "llm.lm_head": lm_head})


def prefill_flops(shape: MLLMShape, tokens_per_layer: TokensPerLayer, text_tokens: int, *,
                  vision_tokens_per_layer: TokensPerLayer | None = None, projector_tokens: int | None = None,
                  include_lm_head: bool | int = False, convention: str = "macs2",
                  vision_patches: int | None = None) -> Flops:
    """Whole-pipeline prefill FLOPs: ViT + projector + LLM.

    The projector sees ``projector_tokens``, by default the visual tokens of the first LLM layer
    (right for pruning before the projector, as VisionZip does, and inside the LLM, as FastV does).
    ``vision_patches``: the encoder's patches when they depend on the image (Qwen2-VL).
    """
    llm_tokens = _per_layer(tokens_per_layer, shape.text.num_layers)
    n_proj = llm_tokens[0] if projector_tokens is None else projector_tokens
    return (vit_flops(shape.vision, vision_tokens_per_layer, convention, vision_patches)
            + projector_flops(shape.projector, n_proj, convention)
            + llm_prefill_flops(shape.text, llm_tokens, text_tokens, include_lm_head, convention))


# ---------------------------------------------------------------------------------------------- tokens

@dataclass(frozen=True)
class TokenSummary:
    """Visual tokens per LLM layer; ``tokens`` is what reaches the LLM, ``avg`` the equivalent count."""

    per_layer: tuple[int, ...]
    tokens: int
    avg: float


def tokens_per_layer_summary(tokens_per_layer: TokensPerLayer, num_layers: int | None = None) -> TokenSummary:
    """Tokens reaching the LLM and their average over layers, the "equivalent tokens" convention.

    FastV with K=2, keep=144 on 32 layers: (2·576 + 30·144) / 32 = 171 equivalent tokens
    (SparseVLM issue #12, VisionZip issue #22). An int with ``num_layers`` is expanded.
    """
    if isinstance(tokens_per_layer, Integral):
        tokens = [int(tokens_per_layer)] * (num_layers or 1)
    else:
        tokens = _per_layer(tokens_per_layer, len(tokens_per_layer) if num_layers is None else num_layers)
    if not tokens:
        raise ValueError("tokens_per_layer is empty")
    return TokenSummary(tuple(tokens), tokens[0], sum(tokens) / len(tokens))


def layer_schedule(num_layers: int, n_tokens: int, keep_from: Mapping[int, int]) -> list[int]:
    """Visual tokens per layer when layer ``k`` and later see ``keep_from[k]`` tokens.

    FastV: ``{K: keep}``. PyramidDrop: ``{8: n·λ, 16: n·λ², 24: n·λ³}``. A method that prunes the
    *output* of layer k (SparseVLM) enters it as ``k + 1``.
    """
    tokens, current = [], n_tokens
    for layer in range(num_layers):
        current = keep_from.get(layer, current)
        tokens.append(current)
    return tokens


# ---------------------------------------------------------------------------------------------- memory

def kv_cache_bytes(shape: TextShape, tokens_per_layer: TokensPerLayer, text_tokens: int,
                   dtype_bytes: int = 2) -> int:
    """KV-cache bytes after prefill, batch 1: K and V of ``num_kv_heads·head_dim`` per token per layer.

    A layer that ran on fewer visual tokens caches fewer. FastV's KV-cache variant, which runs
    layer K-1 twice and caches it twice, is not modelled.
    """
    tokens = _per_layer(tokens_per_layer, shape.num_layers)
    per_token = 2 * shape.num_kv_heads * shape.head_dim * dtype_bytes
    return sum((v + text_tokens) * per_token for v in tokens)


# ---------------------------------------------------------------------------------------------- rates

# ---------------------------------------------------------------------------------------------- latency

@dataclass(frozen=True)
class Latency:
    """Wall-clock seconds of the timed calls and peak memory (bytes) while they ran.

    ``peak_bytes`` is absolute, ``baseline_bytes`` the level before the timed calls, so their
    difference is what the calls added; ``memory`` says what was measured.
    """

    median_s: float
    mean_s: float
    times_s: tuple[float, ...]
    peak_bytes: int
    baseline_bytes: int
    memory: str


def _proc_status_kb(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _ru_maxrss() -> int:
    import resource  # POSIX only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def _cpu_memory_probe() -> tuple[int, Callable[[], int], str]:
    """Baseline, a reader of the peak, and what it measures; resets the peak RSS where Linux allows."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return (_proc_status_kb("VmRSS") * 1024, lambda: _proc_status_kb("VmHWM") * 1024,
                "cpu: peak RSS of the process (VmHWM, reset before the timed calls)")
    except OSError:
        return (_ru_maxrss(), _ru_maxrss,
                "cpu: lifetime peak RSS of the process (ru_maxrss); stays at an earlier peak unless exceeded")


def measure_latency(fn: Callable[[], object], warmup: int = 2, repeats: int = 5, device=None) -> Latency:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    CUDA (``device`` a CUDA device, or None once CUDA is initialised): synchronise before and after
    each call; peak memory is ``torch.cuda.max_memory_allocated`` (tensors only, not the caching
    allocator's reserve). CPU: peak resident set size of the whole process, which includes weights,
    the Python heap and other threads (tracemalloc does not see torch's allocator).
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() and torch.cuda.is_initialized() else "cpu"
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        read_peak = lambda: torch.cuda.max_memory_allocated(device)  # noqa: E731 - read after the calls
        memory = "cuda: torch.cuda.max_memory_allocated (tensors, not the allocator's reserve)"
    else:
        baseline, read_peak, memory = _cpu_memory_probe()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = read_peak()
    return Latency(statistics.median(times), statistics.fmean(times), tuple(times), peak, baseline, memory)


__all__ = [
    "CLIP_VIT_L14_336", "CONVENTIONS", "LLAVA_1_5_7B", "VICUNA_7B", "Flops", "Latency", "MLLMShape",
    "ProjectorShape", "TextShape", "TokenSummary", "VisionShape", "kv_cache_bytes", "layer_schedule",
    "llm_prefill_flops", "measure_latency", "prefill_flops", "projector_flops",
    "tokens_per_layer_summary", "vit_flops",
]

