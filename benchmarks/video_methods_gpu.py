"""HoliTom and FastVID on a GPU at the scale of their official setting: time, host syncs, CPU agreement.

Ratio printed: overhead % = median(method call) / median(vision-tower forward of the same clip) · 100,
both measured in the same run on the same device (CUDA events around each call, after warm-up).

- Clip: T frames of S = side² tokens of width D (default the LLaVA-OneVision-7B video input: 32 frames of
  14×14 pooled tokens, D = 3584), bf16, built from scenes (cuts), static background tokens with small
  noise and a share of moving tokens, so both methods find several windows / segments; signals with the
  adapters' shapes (mean_attention, pooler_attention [1, T·S], frame_features [1, T, 1152]).
- Baseline: the vision tower the clip comes from, a transformers ``SiglipVisionModel`` built from
  so400m-patch14-384's config with its last layer removed (as LLaVA-OV does: 26 layers), random weights,
  bf16, SDPA, one forward of the T frames. The projector, pooling and LLM are not counted (the method's
  share of the whole prefill is smaller still).
- Host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` warns on every synchronising CUDA call; the
  warnings of one call are counted, split into those raised from ``tokens/batch.py`` (TokenBatch's own
  position check) and the rest.
- Agreement: the same clip in fp32 on the CPU and on the GPU (kept positions equal, features max |diff|),
  and the bf16 GPU run against the fp32 GPU run (share of equal kept positions).
- Also the project's reference point: N = 2880 as 5 frames of 24×24 tokens, D = 1024, against a CLIP-L/336
  forward of 5 crops (``benchmarks/token_method_overhead.py`` measures the same on the CPU).

Run:  python benchmarks/video_methods_gpu.py [--frames 32] [--side 14] [--dim 3584] [--keep 0.1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import traceback
import warnings

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, get_method


def clip(t: int, side: int, d: int, seed: int = 0, scenes: int = 4) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    s = side * side
    cuts = sorted(torch.randperm(t - 1, generator=g)[:scenes - 1].add(1).tolist())
    bounds = [0, *cuts, t]
    frames, glob = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        base = torch.randn(s, d, generator=g)
        gbase = torch.randn(1152, generator=g)
        moving = torch.rand(s, generator=g) < 0.3
        for _ in range(a, b):
            f = base + 0.25 * torch.rand(1, generator=g) * torch.randn(s, d, generator=g)
            f[moving] = base[moving] + 1.2 * torch.randn(int(moving.sum()), d, generator=g)
            frames.append(f)
            glob.append(gbase + 0.2 * torch.randn(1152, generator=g))
    x = torch.stack(frames).reshape(1, t * s, d)
    att = (torch.randn(t, s, generator=g) * 2).softmax(-1).reshape(1, t * s)
    pool = (torch.randn(t, s, generator=g) * 2).softmax(-1).reshape(1, t * s)
    return TokenBatch.from_grid(x, (side, side), frames=t, mean_attention=att, pooler_attention=pool,
                                context={"frame_features": torch.stack(glob)[None]})


def to(batch: TokenBatch, device, dtype) -> TokenBatch:
    return TokenBatch.from_grid(batch.features.to(device, dtype), batch.grid, frames=batch.frames,
                                context={k: v.to(device, dtype) for k, v in batch.context.items()},
                                **{k: v.to(device, dtype) for k, v in batch.signals.items()})


def cuda_ms(fn, repeats: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def syncs(fn) -> tuple[int, list[str]]:
    """(syncs raised from TokenBatch's own checks, "file:line" of every other one) in one call."""
    where: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            frames = [f for f in traceback.extract_stack() if "tokencodec" in f.filename]
            where.append(f"{frames[-1].filename.split('tokencodec/')[-1]}:{frames[-1].lineno}" if frames else "?")

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    batch = [w for w in where if w.startswith("tokens/batch.py")]
    return len(batch), [w for w in where if not w.startswith("tokens/batch.py")]


def methods():
    return [("holitom", {}), ("holitom", {"length": "bound"}), ("fastvid", {}), ("fastvid", {"length": "bound"})]


def run(batch: TokenBatch, budget: Budget, encoder_ms: float, repeats: int, label: str) -> None:
    cpu = to(batch, "cpu", torch.float32)
    gpu32 = to(batch, "cuda", torch.float32)
    gpu16 = to(batch, "cuda", torch.bfloat16)
    print(f"\n{label}: encoder forward median {encoder_ms:.2f} ms\n")
    print("| method | tokens out | ms (median, bf16) | overhead % | syncs: method / TokenBatch | CPU = GPU fp32 "
          "(positions; max abs diff) | bf16 = fp32 positions |")
    print("|---|---:|---:|---:|---|---|---:|")
    for name, opts in methods():
        m = get_method(name, **opts)
        ref = m(cpu, budget)
        got = m(gpu32, budget)
        low = m(gpu16, budget)
        same = torch.equal(got.positions.cpu(), ref.positions)
        diff = float((got.features.cpu() - ref.features).abs().max()) if same else float("nan")
        agree = float((low.positions == got.positions).float().mean()) if low.positions.shape == got.positions.shape \
            else float("nan")
        times = cuda_ms(lambda m=m: m(gpu16, budget), repeats)
        b_syncs, m_syncs = syncs(lambda m=m: m(gpu16, budget))
        med = statistics.median(times)
        print(f"| {m.label} | {int(low.counts().max())} | {med:.2f} | {100 * med / encoder_ms:.2f} | "
              f"{len(m_syncs)} ({', '.join(m_syncs) or 'none'}) / {b_syncs} | {same}; {diff:.1e} | {agree:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--side", type=int, default=14)
    ap.add_argument("--dim", type=int, default=3584)
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures GPU time (token_method_overhead.py is the CPU one)")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.device("cuda"):
        cfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                 num_attention_heads=16, image_size=384, patch_size=14)
        siglip = SiglipVisionModel(cfg).to(torch.bfloat16).eval()
        clip_l = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                                  num_hidden_layers=24, image_size=336, patch_size=14))
        clip_l = clip_l.to(torch.bfloat16).eval()
    with torch.inference_mode():
        px = torch.randn(args.frames, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
        enc = statistics.median(cuda_ms(lambda: siglip(pixel_values=px), args.repeats))
        run(clip(args.frames, args.side, args.dim), Budget(ratio=args.keep), enc, args.repeats,
            f"LLaVA-OV video: {args.frames} frames × {args.side}² tokens, D {args.dim}, keep {args.keep}; "
            f"SigLIP-so400m (26 layers) on {args.frames} frames")
        # holitom-llm: the inner merge on what the outer stage sends at 10 %, in the LLM's width
        m = get_method("holitom-llm")
        n = round(args.keep * args.frames * args.side ** 2)
        g = torch.Generator().manual_seed(1)
        span = TokenBatch.from_grid(torch.randn(1, n, args.dim, generator=g).cuda().bfloat16(), (n, 1),
                                    text_attention=torch.rand(1, n, generator=g).cuda().bfloat16())
        ms = statistics.median(cuda_ms(lambda: m(span, Budget(ratio=0.5)), args.repeats))
        b_syncs, m_syncs = syncs(lambda: m(span, Budget(ratio=0.5)))
        print(f"\nholitom-llm on {n} tokens (D {args.dim}), keep 0.5: {ms:.2f} ms = {100 * ms / enc:.2f} % of the "
              f"SigLIP forward; syncs method {len(m_syncs)} {m_syncs} / TokenBatch {b_syncs}")
        px = torch.randn(5, 3, 336, 336, device="cuda", dtype=torch.bfloat16)
        enc = statistics.median(cuda_ms(lambda: clip_l(pixel_values=px), args.repeats))
        run(clip(5, 24, 1024, seed=2, scenes=2), Budget(ratio=0.25), enc, args.repeats,
            "N = 2880 (5 frames × 24², D 1024), keep 0.25; CLIP-L/336 on 5 crops")


if __name__ == "__main__":
    main()
