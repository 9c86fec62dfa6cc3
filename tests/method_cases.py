"""Every registered token method on fixed seeded batches: the cases shared by the host-sync, faithfulness and
low-precision tests, and the script that records their outputs.

Each case is a method with options, a batch builder (batch 2, every signal the method reads, a CLS) and a
budget; spatial pre-LLM methods also run on a 3-frame video through ``compress_per_frame``. Scores are
well separated (attentions are permutations of evenly spaced values, 1/N apart), so no selection rests
on a tie.

    PYTHONPATH=src python tests/method_cases.py      # rewrites tests/expected/method_outputs.json

The JSON was written by the code at commit 3a2a81d (before the sync-free rewrite of issue 18); the
faithfulness test asserts that today's methods still give those selections, counts, positions, sources,
sizes and features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import METHODS, Budget, get_method
from tokencodec.tokens.frames import compress_per_frame

EXPECTED = Path(__file__).resolve().parent / "expected" / "method_outputs.json"
H, W, D, B = 6, 6, 8, 2                 # images: 6×6 grid, 36 tokens of width 8, batch 2
VH, VW, T = 4, 4, 3                      # videos: 3 frames of 4×4
TEXT = 5                                 # text tokens (DART pivots, SparseVLM raters)


def separated(b: int, n: int, g: torch.Generator, lo: float = 0.01, hi: float = 0.2) -> torch.Tensor:
    """[b, n] positive scores, each row a random permutation of n evenly spaced values (no ties)."""
    values = torch.linspace(lo, hi, n)
    return torch.stack([values[torch.randperm(n, generator=g)] for _ in range(b)])


def make_batch(seed: int = 0, grid: tuple[int, int] = (H, W), frames: int = 1, b: int = B, d: int = D,
               cls: bool = True, dtype: torch.dtype = torch.float32) -> TokenBatch:
    """Tokens with every signal any method reads (signals per token, text signals in the context)."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * frames
    feats = torch.randn(b, n, d, generator=g)
    if frames > 1:                       # video: later frames are the first one plus small changes
        first = feats[:, : n // frames]
        drift = 0.3 * torch.randn(b, n, d, generator=g)
        feats = first.repeat(1, frames, 1) + drift * (torch.rand(b, n, 1, generator=g) < 0.4)
    keys = torch.randn(b, n, 4, generator=g)
    signals = dict(cls_attention=separated(b, n, g), cls_attention_single_head=separated(b, n, g),
                   mean_attention=separated(b, n, g), keys=keys, keys_full=torch.randn(b, n, d, generator=g),
                   text_attention=separated(b, n, g), normed_features=torch.randn(b, n, d, generator=g))
    # SparseVLM ranks by the raters' mean: rows that share one order (scaled) keep the mean separated too
    raters = separated(b, n, g)[:, None] * torch.tensor([0.8, 1.0, 1.2])[:, None]
    context = dict(rater_attention=raters,
                   text_keys=torch.randn(b, TEXT, 4, generator=g), text_features=torch.randn(b, TEXT, d, generator=g))
    # the 2025 methods' signals come from a generator of their own, so the draws above (and the outputs
    # recorded from them) stay as they were: CLIP image / text embeddings (CDPruner), FlowCut's semantic
    # attention and head-mean values
    g25 = torch.Generator().manual_seed(10_000 + seed)
    signals.update(image_embedding=torch.randn(b, n, 6, generator=g25), cls_value_attention=separated(b, n, g25),
                   values=torch.randn(b, n, 4, generator=g25))
    context["text_embedding"] = torch.randn(b, 2, 6, generator=g25)
    # and the 2025 video methods' (FastVID: the pooling head's attention and one global feature per frame)
    gv = torch.Generator().manual_seed(20_000 + seed)
    signals["pooler_attention"] = separated(b, n, gv)
    context["frame_features"] = torch.randn(b, frames, 6, generator=gv)
    if not cls:
        signals = {k: v for k, v in signals.items() if not k.startswith("cls_attention")}
    cast = {k: v.to(dtype) for k, v in signals.items()}
    return TokenBatch.from_grid(feats.to(dtype), grid, frames,
                                cls_token=torch.randn(b, d, generator=g).to(dtype) if cls else None,
                                context={k: v.to(dtype) for k, v in context.items()}, **cast)


def video_batch(seed: int = 0, **kw) -> TokenBatch:
    return make_batch(seed, grid=(VH, VW), frames=T, **kw)


@dataclass(frozen=True)
class Case:
    label: str
    method: str
    options: dict
    budget: Budget
    video: bool = False                  # a 3-frame video (spatial methods run per frame)
    cls: bool = True                     # the batch has a CLS (and CLS attention)
    batch_size: int = B
    dim: int = D

    def build(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> TokenBatch:
        kw = dict(cls=self.cls, b=self.batch_size, d=self.dim, dtype=dtype)
        return video_batch(seed, **kw) if self.video else make_batch(seed, **kw)

    def instance(self):
        return get_method(self.method, **self.options)

    def run(self, batch: TokenBatch, method=None) -> TokenBatch:
        method = method or self.instance()
        if self.video and not method.video:
            return compress_per_frame(method, batch, self.budget)
        return method(batch, self.budget)


def _cases() -> list[Case]:
    k, kv = Budget(keep=9), Budget(keep=12)          # image: 9 of 36; video: 12 of 48 (4 per frame)
    out = [
        Case("random", "random", {}, k), Case("random-shared", "random", {"content_seed": False}, k),
        Case("pool-avg", "pool-avg", {}, k), Case("pool-avg-at-most", "pool-avg", {"at_most": True}, Budget(keep=10)),
        Case("pool-resize", "pool-resize", {}, k), Case("pool-resize-plain", "pool-resize", {"antialias": False}, k),
        Case("divprune", "divprune", {}, k), Case("divprune-fp32", "divprune", {"compute_dtype": "float32"}, k),
        Case("visionzip", "visionzip", {}, Budget(keep=10)),
        Case("visionzip-no-count-cls", "visionzip", {"count_cls": False}, Budget(keep=10)),
        Case("visionzip-mean", "visionzip", {"merge": "mean"}, Budget(keep=10)),
        Case("visionzip-no-cls", "visionzip", {}, Budget(keep=10), cls=False),
        Case("visionzip-full", "visionzip", {}, Budget(ratio=1.0)),
        Case("prumerge", "prumerge", {}, Budget(keep=10)),
        Case("prumerge-adaptive", "prumerge", {"adaptive": True}, Budget(keep=10)),
        Case("prumerge-old", "prumerge", {"order": "raster", "normalize_attention": True, "attention": "head-sum",
                                          "keys": "head-mean", "normalize_merge": True}, Budget(keep=10)),
        Case("prumerge+", "prumerge+", {}, Budget(keep=10)),
        Case("prumerge+-adaptive", "prumerge+", {"adaptive": True}, Budget(keep=20)),
        Case("prumerge+-full", "prumerge+", {}, Budget(ratio=1.0)),
        Case("tome", "tome", {}, Budget(r=6)), Case("tome-no-cls", "tome", {}, Budget(r=6), cls=False),
        Case("fastv", "fastv", {}, k), Case("pyramiddrop", "pyramiddrop", {}, k),
        Case("sparsevlm", "sparsevlm", {}, Budget(keep=20)),
        Case("sparsevlm-exact", "sparsevlm", {"count_recycled": True}, Budget(keep=20)),
        Case("sparsevlm-no-recycle", "sparsevlm", {"recycle": False}, Budget(keep=20)),
        Case("dart", "dart", {}, k), Case("dart-2-pivots", "dart", {"pivots": 2}, Budget(keep=12)),
        Case("dct", "dct", {}, k), Case("dct-energy", "dct", {"zone": "energy"}, k),
        Case("rdo", "rdo", {}, k), Case("rdo-norm", "rdo", {"value": "norm"}, k),
        Case("rdo-vbr", "rdo", {"rate_control": "vbr", "ratios": [0.25], "lambdas": [0.15]}, Budget(ratio=0.25)),
        Case("scalable", "scalable", {}, k), Case("scalable-priority", "scalable", {"order": "priority"}, k),
        Case("quadtree", "quadtree", {}, k), Case("quadtree-variance", "quadtree", {"criterion": "variance"}, k),
        Case("quadtree-select", "quadtree", {"mode": "select"}, k),
        Case("token-norm", "token-norm", {}, k),
        Case("coded", "coded", {"inner": "random", "profile": "fashion-vit/step-1"}, k, batch_size=1, dim=64),
        # video methods
        Case("temporal", "temporal", {}, Budget(keep=24), video=True),
        Case("temporal-threshold", "temporal", {"threshold": 0.05}, Budget(keep=24), video=True),
        Case("temporal-search", "temporal", {"search": 1, "intra": "residual"}, Budget(keep=12), video=True),
        Case("temporal-vbr", "temporal", {"rate_control": "vbr", "ratios": [0.5], "thresholds": [0.05]},
             Budget(ratio=0.5), video=True),
        Case("uniform-frames", "uniform-frames", {}, Budget(keep=32), video=True),
        # the 2025 image methods
        # (6 < D = 8: past the features' rank every DPP gain is rounding noise)
        Case("cdpruner", "cdpruner", {}, Budget(keep=6)),
        Case("cdpruner-cosine", "cdpruner", {"relevance": "cosine"}, Budget(keep=6)),
        Case("cdpruner-full", "cdpruner", {}, Budget(ratio=1.0)),
        Case("vispruner", "vispruner", {}, Budget(keep=10)),
        Case("vispruner-0.75", "vispruner", {"important_ratio": 0.75}, Budget(keep=12)),
        Case("vispruner-no-cls", "vispruner", {}, Budget(keep=10), cls=False),
        Case("flowcut", "flowcut", {}, k),
        # the 2025 video methods (HoliTom's inner-LLM merge ranks by text attention, like FastV)
        Case("holitom", "holitom", {}, Budget(ratio=0.25), video=True),
        Case("holitom-llm", "holitom-llm", {}, Budget(ratio=0.5)),
        Case("fastvid", "fastvid", {}, Budget(ratio=0.25), video=True),
    ]
    # the usual video baseline: every spatial pre-LLM method on each frame alone
    for name in ("random", "pool-avg", "pool-resize", "divprune", "visionzip", "prumerge", "prumerge+", "dct",
                 "rdo", "scalable", "quadtree", "token-norm", "vispruner"):
        out.append(Case(f"{name}-video", name, {}, kv, video=True))
    return out


CASES: list[Case] = _cases()
# in-LLM methods: their per-stage plans (layer, scoring layer, keep) at a few budgets
PLANS = [("fastv", {}, Budget(keep=64)), ("pyramiddrop", {}, Budget(keep=144)), ("sparsevlm", {}, Budget(keep=192)),
         ("sparsevlm", {"count_recycled": True}, Budget(keep=96)), ("dart", {}, Budget(ratio=0.25))]


def describe(out: TokenBatch) -> dict:
    """What a method decided, JSON-ready: positions, mask, sizes, sources (as patch lists), and the features
    projected on two fixed directions (a changed merge weight moves them; the whole features would be 4× larger)."""
    probe = torch.randn(out.features.shape[-1], 2, generator=torch.Generator().manual_seed(7))
    record = {"positions": out.positions.tolist(),
              "mask": None if out.mask is None else out.mask.tolist(),
              "sizes": [[round(float(s), 5) for s in row] for row in out.sizes.float()],
              "source": [[torch.nonzero(t).flatten().tolist() for t in row] for row in out.source.bool()],
              "features": [[[round(float(v), 4) for v in tok] for tok in row] for row in out.features.float() @ probe]}
    for key in ("rdo_lambda", "temporal_threshold"):
        if key in out.context:
            record[key] = [round(float(v), 5) for v in out.context[key].reshape(-1)]
    return record


def record_all() -> dict:
    outputs = {c.label: describe(c.run(c.build())) for c in CASES}
    plans = {f"{name}{options}{budget}": [list(map(int, (s.layer, s.score_layer, s.keep)))
                                          for s in get_method(name, **options).plan(budget, 576, 32)]
             for name, options, budget in PLANS}
    return {"methods": sorted(METHODS.names()), "outputs": outputs, "plans": plans}


if __name__ == "__main__":
    torch.set_num_threads(1)
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps(record_all(), separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {EXPECTED} ({EXPECTED.stat().st_size} bytes, {len(CASES)} cases)")
