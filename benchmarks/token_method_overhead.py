"""Overhead of each registered token-compression method as a fraction of the vision-encoder forward.

Ratio printed: overhead % = median(method call) / median(encoder forward) · 100, both measured in the
same run, interleaved round by round (each round: one encoder forward, then one call of every
method at every N), after one untimed warm-up round. "overhead % (min)" is the same ratio from the
minimum times: on a shared machine, methods made of many small kernels are stalled far more than
the encoder's large matmuls when another process takes a core (OpenMP threads wait for each other),
so when the two columns disagree, the min column is the less contaminated one; on a loaded machine
``--threads 1`` avoids those stalls altogether (the encoder is then single-threaded too).

What is modelled (random weights and random data; only shapes matter for time):

- Encoder: a transformers ``CLIPVisionModel`` built from a CLIP ViT-L/14-336 config (24 layers, d 1024,
  16 heads, MLP 4096, 577 tokens), random weights, float32, default attention implementation, batch 1.
- N = 576: one crop; encoder cost = one crop forward.
- N = 2880 (LLaVA-NeXT, 5 crops × 576): the method sees ONE sequence of 2880 tokens (a TokenBatch of
  5 frames of a 24×24 grid, so the pooling baselines pool each crop separately); the encoder cost is
  5 × the measured one-crop forward (crops are independent sequences; no batch-of-5 forward is run).
- Token batch: features [1, N, 1024], or [1, N, 4096] (LLaVA-1.5's projector output) for methods that
  declare ``features = "projected"`` (DivPrune, CDPruner); signals from random data with the adapters'
  shapes: cls_attention [1, N] (softmax rows summed over 16 heads), keys [1, N, 64] (head_dim, averaged
  over heads), text_attention [1, N], mean_attention and pooler_attention [1, N] (softmax per crop: HoliTom,
  FastVID), image_embedding [1, N, 768] (CDPruner); context rater_attention [1, 16, N] (SparseVLM),
  text_keys [1, 46, 64] and text_features [1, 46, 1024] (DART's text pivots), frame_features [1, crops,
  1152] (FastVID), text_embedding [1, 1, 768] (CDPruner: one 77-token chunk). The batch is built outside
  the timing; the adapter's signal extraction (hooks, CLS attention from q/k, CLIP's text tower) is not
  timed, only
  ``method(batch, budget)``.
- Budget: Budget(ratio=0.25) for every method except ToMe and uniform-frames (one whole crop of the
  five); one call = one stage for the multi-stage methods (PyramidDrop, SparseVLM). Video methods
  (temporal, uniform-frames, holitom, fastvid) run at N = 2880 only, its 5 crops standing for 5 frames
  (random frames: HoliTom finds no static token, every frame is its own window).
- ToMe: the whole merge schedule of the ToMeVisionPatch-ed encoder with layer=-2, i.e. layers 0..22
  (23 merges), r per layer = round(0.75·576/23) = 19 (576 → 139 patches, 24 %): per layer, the
  head-averaged metric from k_proj output [B, T, 1024], bipartite_soft_matching (CLS protected),
  merge_source, merge_wavg and the position bookkeeping, on inputs shrinking as the encoder's do.
  At N = 2880 ToMe runs inside the encoder, i.e. per crop: a batch of 5 crops of 577 tokens.
  ToMe also makes the encoder itself cheaper; that saving is not measured here.
- FlowCut: the whole per-layer schedule of ``FlowCutRun`` with feature layer 22 (its default mode, which
  hides pruned patches by an attention bias and cuts the sequence once, so shapes never depend on data):
  per layer 0..21, the signals from that layer's q/k/v projections [crops, 577, 1024] (random) and the
  step; the final cut to 1 + K. Per crop at N = 2880, as in the ViT. The ViT layers it makes cheaper
  (22, 23 on 1 + K tokens) are not credited.

Run:  python benchmarks/token_method_overhead.py [--repeats 5] [--n 576 2880] [--methods ...]
      [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from tokencodec.adapters.vision_tower import merged_positions, split_heads
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import METHODS, Budget, get_method
from tokencodec.tokens.compress import tome as tome_fns
from tokencodec.tokens.compress.flowcut import FlowCutRun

KEEP = 0.25
TEXT_TOKENS = 46
RATERS = 16
FRAME_FEATURE_DIM = 1152        # SigLIP-so400m's pooled output (FastVID's frame features)
PROJECTED = 4096        # LLaVA-1.5-7B's LLM width: the projector's output
CLIP_EMBED = 768        # CLIP ViT-L/14's joint image–text space


def encoder_config(quick: bool) -> CLIPVisionConfig:
    if quick:  # 8×8 = 64 patches per crop, 4 layers, d 256
        return CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_attention_heads=4,
                                num_hidden_layers=4, image_size=112, patch_size=14)
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                            num_hidden_layers=24, image_size=336, patch_size=14)


def make_batch(n: int, side: int, d: int, heads: int, gen: torch.Generator, width: int | None = None) -> TokenBatch:
    """A TokenBatch of n tokens (n / side² crops of side×side) with every signal any method reads;
    ``width``: the features' width (default d, the vision width)."""
    dk = d // heads
    frames = n // (side * side)
    cls_logits = torch.randn(1, heads, n, generator=gen) * 2
    cls_attention = cls_logits.softmax(-1).sum(1)                      # summed over heads
    text_attention = (torch.randn(1, n, generator=gen) * 2).softmax(-1)
    rater_attention = (torch.randn(1, RATERS, n, generator=gen) * 2).softmax(-1)
    # per frame: attention received (mean over heads and rows) and SigLIP's pooling-head attention
    mean_attention = (torch.randn(frames, side * side, generator=gen) * 2).softmax(-1).reshape(1, n)
    pooler_attention = (torch.randn(frames, side * side, generator=gen) * 2).softmax(-1).reshape(1, n)
    context = {"rater_attention": rater_attention,
               "text_keys": torch.randn(1, TEXT_TOKENS, dk, generator=gen),
               "text_features": F.normalize(torch.randn(1, TEXT_TOKENS, d, generator=gen), dim=-1),
               "frame_features": torch.randn(1, frames, FRAME_FEATURE_DIM, generator=gen),
               "text_embedding": torch.randn(1, 1, CLIP_EMBED, generator=gen)}
    return TokenBatch.from_grid(torch.randn(1, n, width or d, generator=gen), (side, side), frames=frames,
                                cls_token=torch.randn(1, d, generator=gen), context=context,
                                cls_attention=cls_attention, keys=torch.randn(1, n, dk, generator=gen),
                                text_attention=text_attention, mean_attention=mean_attention,
                                pooler_attention=pooler_attention,
                                image_embedding=torch.randn(1, n, CLIP_EMBED, generator=gen))


def tome_schedule(patches: int, layers: int, keep: float) -> tuple[list[int], list[int]]:
    """ToMe's own r per layer for the keep ratio, and the token counts (CLS included) entering each layer."""
    r = tome_fns.keep_schedule(patches, round(keep * patches), layers)
    counts, t = [], patches + 1
    for merged in r:
        counts.append(t)
        t -= merged
    return r, counts


def tome_runner(crops: int, side: int, d: int, heads: int, merge_layers: int, gen: torch.Generator):
    """A closure running ToMe's whole per-layer merge schedule on pre-generated shrinking inputs."""
    r, counts = tome_schedule(side * side, merge_layers, KEEP)
    keys = [torch.randn(crops, t, d, generator=gen) for t in counts]   # k_proj outputs
    xs = [torch.randn(crops, t, d, generator=gen) for t in counts]     # residual stream after attention

    def run() -> int:
        size = source = pos = None
        t0 = counts[0]
        for k, x, merged in zip(keys, xs, r, strict=True):
            if size is None:
                size = torch.ones_like(x[..., :1])
                pos = torch.arange(t0, dtype=torch.float32).expand(crops, -1)[..., None]
            metric = split_heads(k, heads).mean(1)
            merge, _ = tome_fns.bipartite_soft_matching(metric, merged, class_token=True)
            source = tome_fns.merge_source(merge, x, source)
            _, size = tome_fns.merge_wavg(merge, x, size)
            pos = merged_positions(merge, pos, t0)
        return size.shape[1] - 1                                      # patches left

    return run, r


def flowcut_runner(crops: int, side: int, d: int, heads: int, feature_layer: int, gen: torch.Generator):
    """A closure running FlowCut's whole per-layer schedule (FlowCutRun) on pre-generated q/k/v projections."""
    t = side * side + 1
    target = round(KEEP * side * side)
    qkv = [tuple(torch.randn(crops, t, d, generator=gen) for _ in range(3)) for _ in range(feature_layer)]

    def run() -> int:
        flow = FlowCutRun(target, feature_layer)
        for i, (q, k, v) in enumerate(qkv):
            flow.key_bias(torch.float32)                              # what the next layer would be masked with
            slots = flow.after_layer(i, q, k, v, heads)
        return slots.shape[1] - 1                                     # patches left

    return run, target


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (default 5)")
    ap.add_argument("--n", type=int, nargs="+", default=None,
                    help="token counts, multiples of one crop's patches (default 576 2880; quick: 64 320)")
    ap.add_argument("--methods", nargs="+", default=None, help=f"default: all of {METHODS.names()}")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch.set_num_threads (default: all cores available to this process)")
    ap.add_argument("--quick", action="store_true", help="tiny encoder and N, 2 rounds: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 2)
    torch.set_num_threads(args.threads)
    cfg = encoder_config(args.quick)
    side = cfg.image_size // cfg.patch_size
    per_crop = side * side
    ns = args.n or ([per_crop, 5 * per_crop])
    for n in ns:
        if n % per_crop:
            raise SystemExit(f"--n {n} is not a multiple of one crop's {per_crop} patches")
    names = args.methods or METHODS.names()
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    merge_layers = cfg.num_hidden_layers - 1                            # ToMe with layer=-2
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats} "
          f"(interleaved, + 1 warm-up round)")
    print(f"encoder: CLIPVisionModel, random weights, {cfg.num_hidden_layers} layers, d {d}, {heads} heads, "
          f"mlp {cfg.intermediate_size}, {per_crop + 1} tokens/crop, batch 1 (one crop); "
          f"N = c·{per_crop} is charged c × the one-crop time")

    gen = torch.Generator().manual_seed(0)
    model = CLIPVisionModel(cfg).eval()
    pixels = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=gen)
    jobs = []                                                           # (method, n, fn, note)
    with torch.inference_mode():
        batches = {n: make_batch(n, side, d, heads, gen) for n in ns}
        projected = {}                                                  # built when a method asks for them
        for name in names:
            for n in ns:
                if name == "tome":
                    fn, r = tome_runner(n // per_crop, side, d, heads, merge_layers, gen)
                    jobs.append((name, n, fn, f"r={sum(r)} over {merge_layers} layers, {n // per_crop} crop(s) → "
                                              f"{fn()}/{per_crop} patches per crop"))
                elif name == "flowcut":
                    fn, k = flowcut_runner(n // per_crop, side, d, heads, merge_layers - 1, gen)
                    jobs.append((name, n, fn, f"{merge_layers - 1} layers, {n // per_crop} crop(s) → "
                                              f"{fn()}/{per_crop} patches per crop"))
                else:
                    method = get_method(name)
                    if getattr(method, "features", "vision") == "projected":
                        if n not in projected:
                            projected[n] = make_batch(n, side, d, heads, gen, width=PROJECTED)
                        batch = projected[n]
                    else:
                        batch = batches[n]
                    if method.video and batch.frames == 1:
                        print(f"{name} at N={n}: skipped (a video method; N={n} is one crop)")
                        continue
                    # uniform frame sampling keeps whole frames: one of the five
                    budget = Budget(keep=per_crop) if name == "uniform-frames" else Budget(ratio=KEEP)
                    out = method(batch, budget)
                    jobs.append((name, n, lambda m=method, b=batch, k=budget: m(b, k),
                                 f"→ {out.num_tokens} tokens"))

        enc_times: list[float] = []
        times: dict[tuple[str, int], list[float]] = {(j[0], j[1]): [] for j in jobs}
        for rnd in range(args.repeats + 1):                             # round 0 is the warm-up
            t = timed(lambda: model(pixel_values=pixels))
            if rnd:
                enc_times.append(t)
            for name, n, fn, _ in jobs:
                t = timed(fn)
                if rnd:
                    times[(name, n)].append(t)

    enc = statistics.median(enc_times)
    print(f"encoder one-crop forward: median {enc * 1e3:.1f} ms over {len(enc_times)} "
          f"(min {min(enc_times) * 1e3:.1f}, max {max(enc_times) * 1e3:.1f})\n")
    print("| method | N | method ms (median) | encoder ms | overhead % | overhead % (min) | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, n, _, note in jobs:
        m = statistics.median(times[(name, n)])
        e, crops = enc * (n // per_crop), n // per_crop
        low = 100 * min(times[(name, n)]) / (min(enc_times) * crops)
        print(f"| {name} | {n} | {m * 1e3:.2f} | {e * 1e3:.0f} | {100 * m / e:.2f} | {low:.2f} | {note} |")


if __name__ == "__main__":
    main()
