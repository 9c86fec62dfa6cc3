"""Measured LLM prefill speed-up from pre-LLM visual-token pruning, divided by the FLOPs-predicted one.

Pre-LLM pruning (VisionZip, DivPrune, pooling…) only shortens the LLM input: 576·keep visual tokens
plus 46 text tokens instead of 576 + 46. For keep = 50, 25, 12.5 % we compare

- predicted × = FLOPs(full) / FLOPs(pruned) from ``tokencodec.metrics.cost.llm_prefill_flops`` (default
  convention ``macs2``; FastV's convention and ``macs2-causal`` printed too), no lm_head;
- measured × = latency(full) / latency(pruned), each a median of ``measure_latency`` calls, the four
  sequence lengths interleaved round by round (one untimed warm-up round first) so that load from
  other processes hits every length alike.

Two other estimates are printed: "paired" = the median over rounds of that round's full/pruned time
ratio (cancels slow drifts of load), and "min" = ratio of the minimum times: on a shared machine other
processes only ever add time, and a long call is more likely to be hit than a short one, which
inflates the median-based speed-up; the minimum-based one is the less contaminated estimate.

measured ÷ predicted = 1 means FLOPs predict wall-clock; < 1 means the shorter sequence runs at lower
throughput (fixed per-layer costs, less efficient small matmuls), so the FLOPs model overstates the gain.

Model: a randomly initialised transformers ``LlamaModel`` (no lm_head) from a ``LlamaConfig`` (GQA),
float32, default attention implementation (sdpa, causal), batch 1, fed ``inputs_embeds`` (the visual
tokens arrive as projected embeddings anyway). Default: hidden 2048, 4 layers, 16 heads, 4 KV heads,
intermediate 5632 (TinyLlama's width; 45 M parameters per layer). All layers are identical, so the
speed-up ratio does not depend on the depth, only on the width and the sequence lengths; a shallow
model gives short calls, hence many rounds in a few minutes, which matters far more on a shared
machine than depth (``--layers 16 --repeats 5`` works: ~2.5 min on 2 idle cores, 7+ min under load,
and its medians were no steadier). Not Vicuna-7B: the ratio, not the absolute time, is the result.

Run:  python benchmarks/prefill_speedup.py [--repeats 15] [--hidden 2048 --layers 4 --heads 16
      --kv-heads 4 --intermediate 5632] [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from transformers import LlamaConfig, LlamaModel

from tokencodec.metrics.cost import CONVENTIONS, TextShape, llm_prefill_flops, measure_latency

VISUAL = 576
TEXT = 46
KEEPS = (1.0, 0.5, 0.25, 0.125)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved timed rounds (default 15)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch.set_num_threads (default: all cores available to this process)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 rounds: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate = 256, 2, 4, 2, 688
        args.repeats = min(args.repeats, 2)
    torch.set_num_threads(args.threads)

    cfg = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, intermediate_size=args.intermediate,
                      vocab_size=32000, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaModel(cfg).eval()
    shape = TextShape.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())
    emb = model.embed_tokens.weight.numel()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats} "
          f"(interleaved, + 1 warm-up round), attention {cfg._attn_implementation}, float32, batch 1")
    print(f"LlamaModel: hidden {cfg.hidden_size}, layers {cfg.num_hidden_layers}, heads {cfg.num_attention_heads}, "
          f"kv heads {cfg.num_key_value_heads}, head_dim {shape.head_dim}, intermediate {cfg.intermediate_size}; "
          f"{params / 1e6:.0f} M parameters ({(params - emb) / 1e6:.0f} M without the embedding table, unused)")
    print(f"sequence = round({VISUAL}·keep) visual + {TEXT} text tokens; FLOPs without lm_head")
    print(f"default convention: {CONVENTIONS['macs2']}\n")

    visual = [round(VISUAL * k) for k in KEEPS]
    gen = torch.Generator().manual_seed(0)
    embeds = {v: torch.randn(1, v + TEXT, cfg.hidden_size, generator=gen) * 0.02 for v in visual}
    times: dict[int, list[float]] = {v: [] for v in visual}
    with torch.inference_mode():
        for rnd in range(args.repeats + 1):                 # round 0: warm-up, not recorded
            order = visual if rnd % 2 else visual[::-1]     # alternate the order between rounds
            for v in order:
                lat = measure_latency(lambda v=v: model(inputs_embeds=embeds[v]), warmup=0, repeats=1)
                if rnd:
                    times[v].append(lat.median_s)

    def flops(v: int, convention: str) -> int:
        return llm_prefill_flops(shape, v, TEXT, convention=convention).total

    full = visual[0]
    t_full = statistics.median(times[full])
    m_full = min(times[full])
    print("| keep % | tokens (visual+text) | ms median [min–max] | predicted × macs2 | predicted × fastv "
          "| predicted × macs2-causal | measured × | measured ÷ predicted (macs2) | paired × | ÷ pred. (paired) "
          "| min × | ÷ pred. (min) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for keep, v in zip(KEEPS, visual, strict=True):
        t = statistics.median(times[v])
        pred = {c: flops(full, c) / flops(v, c) for c in ("macs2", "fastv", "macs2-causal")}
        meas, meas_min = t_full / t, m_full / min(times[v])
        paired = statistics.median(a / b for a, b in zip(times[full], times[v], strict=True))
        print(f"| {keep * 100:g} | {v}+{TEXT}={v + TEXT} | {t * 1e3:.0f} [{min(times[v]) * 1e3:.0f}–"
              f"{max(times[v]) * 1e3:.0f}] | {pred['macs2']:.3f} | {pred['fastv']:.3f} | {pred['macs2-causal']:.3f} "
              f"| {meas:.3f} | {meas / pred['macs2']:.3f} | {paired:.3f} | {paired / pred['macs2']:.3f} "
              f"| {meas_min:.3f} | {meas_min / pred['macs2']:.3f} |")
    tflops = flops(full, "macs2") / t_full / 1e9
    print(f"\nfull prefill: {flops(full, 'macs2') / 1e12:.3f} TFLOPs (macs2) in {t_full:.2f} s = {tflops:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
