"""Measured prefill time on this CPU ÷ the roofline model's prediction with the probed "cpu" profile.

The roofline's "cpu" profile is calibrated by a few-second probe (a matmul, a copy, a loop of tiny ops);
this checks it against a real forward: a random-weight LLaVA (CLIP ViT-B/16-like tower at 224 px, 196
image tokens, + a Llama-shaped LLM) built from a config, HF eager with SDPA, 20 text tokens,
``logits_to_keep=1``, fp32 and bf16, batch 1 and 4. Each row: the minimum and the median of
``--repeats`` timed calls after 2 warm-ups (one thread by default: the probe ran at the same count), the
prediction, and measured ÷ predicted (1 = the model is right; the minimum is the less contaminated on a
shared machine).

Run:  python benchmarks/roofline_cpu.py [--repeats 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

from tokencodec.metrics.cost import MLLMShape
from tokencodec.metrics.roofline import predict_prefill, probe_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 layers each, 2 repeats: a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    layers = 2 if args.quick else 4
    repeats = 2 if args.quick else args.repeats
    vc = transformers.CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=layers,
                                       num_attention_heads=12, image_size=224, patch_size=16)
    tc = transformers.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
                                  num_attention_heads=16, vocab_size=32000)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_id=5, image_seq_length=196,
                                   attn_implementation="sdpa")
    shape = MLLMShape.from_config(cfg)
    profile = probe_cpu()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    print(f"probe: fp32 {profile.peak(4) / 1e9:.1f} GFLOP/s, bf16 {profile.peak(2) / 1e9:.1f} GFLOP/s, "
          f"copy {profile.bandwidth / 1e9:.1f} GB/s, one op {profile.launch_s * 1e6:.2f} µs")
    print(f"model: CLIP {layers} layers × 768 + Llama {layers} layers × 1024, 196 image + 20 text tokens\n")
    print("dtype     batch   min ms  median ms  predicted ms  min ÷ pred  median ÷ pred  bound")
    torch.manual_seed(0)
    for dtype, dtype_bytes in ((torch.float32, 4), (torch.bfloat16, 2)):
        model = transformers.LlavaForConditionalGeneration(cfg).eval().to(dtype)
        for batch in (1, 4):
            ids = torch.tensor([[1, 2, 3] + [5] * 196 + [7] * 17] * batch)
            inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1,
                          pixel_values=torch.randn(batch, 3, 224, 224, dtype=dtype))
            times = []
            with torch.no_grad():
                for i in range(2 + repeats):
                    start = time.perf_counter()
                    model(**inputs)
                    if i >= 2:
                        times.append(time.perf_counter() - start)
            times.sort()
            low, median = times[0], times[len(times) // 2]
            p = predict_prefill(shape, None, 196, 20, batch, profile, dtype_bytes=dtype_bytes)
            print(f"{str(dtype).removeprefix('torch.'):9s}{batch:6d}{low * 1e3:9.1f}{median * 1e3:11.1f}"
                  f"{p.latency_s * 1e3:14.1f}{low / p.latency_s:11.2f}{median / p.latency_s:15.2f}  {p.bound}")


if __name__ == "__main__":
    main()
