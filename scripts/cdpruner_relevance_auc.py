"""How well each pre-LLM ranking signal finds the patches a question depends on, on the diagnostic MLLM.

    python scripts/cdpruner_relevance_auc.py --n 350 --seed 0

For each test question: the ROC AUC of a per-patch score against the question's relevant-patch mask (the
objects the answer depends on; questions without such patches are skipped), averaged over questions with a
95 % percentile-bootstrap interval. Scores: CDPruner's relevance in the ``llm-input`` space (the LLM's input
embeddings of the question against the projected tokens; mean over question tokens of −cos, the official
sign, and +cos), the CLS attention of the feature layer (VisionZip's and VisPruner's signal), and FlowCut's
score at layer 0 (the only layer it scores before its cut on this 3-layer tower). 0.5 is chance; below 0.5
the score ranks the relevant patches last.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from tokencodec.adapters.vision_tower import capture_signals
from tokencodec.data.vqa import VQADataset
from tokencodec.models.diagnostic import DiagnosticMLLM, preprocess
from tokencodec.tokens.compress.cdpruner import relevance
from tokencodec.tokens.compress.flowcut import flowcut_score, layer_signals


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half."""
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def interval(x: np.ndarray, resamples: int = 2000) -> tuple[float, float]:
    idx = np.random.default_rng(0).integers(0, len(x), (resamples, len(x)))
    means = x[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=350)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    mllm = DiagnosticMLLM.from_pretrained()
    llava = mllm.model.model
    scores: dict[str, list[float]] = {"cdpruner −cos (official sign)": [], "cdpruner +cos": [], "CLS attention": [],
                                      "flowcut score, layer 0": []}
    qkv: dict[str, torch.Tensor] = {}
    attn = llava.vision_tower.encoder.layers[0].self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(attn, name).register_forward_hook(lambda m, i, o, n=name: qkv.__setitem__(n, o))
    for s in VQADataset("test", a.n, a.seed):
        positive = s.relevant_mask.reshape(-1).astype(bool)
        if positive.all() or not positive.any():
            continue
        pixels = preprocess(s.image[None])
        captured = capture_signals(llava.vision_tower, pixels, layer=-2, signals=["cls_attention"])
        projected = llava.multi_modal_projector(captured.hidden[:, 1:])
        ids = torch.tensor([mllm.tokenizer.encode(s.question, add_special_tokens=False).ids])
        text = llava.get_input_embeddings()(ids)
        scores["cdpruner −cos (official sign)"].append(auc(relevance(projected, text)[0].numpy(), positive))
        scores["cdpruner +cos"].append(auc(relevance(projected, text, negate=False)[0].numpy(), positive))
        scores["CLS attention"].append(auc(captured.signals["cls_attention"][0].numpy(), positive))
        flow = flowcut_score(layer_signals(qkv["q_proj"], qkv["k_proj"], qkv["v_proj"], attn.num_heads))
        scores["flowcut score, layer 0"].append(auc(flow[0].numpy(), positive))
    print(f"{len(scores['CLS attention'])} questions with relevant patches (test, n={a.n}, seed={a.seed})\n")
    print("| score | mean ROC AUC vs relevant patches [95 % CI] |\n|---|---|")
    for name, v in scores.items():
        x = np.array(v)
        lo, hi = interval(x)
        print(f"| {name} | {x.mean():.3f} [{lo:.3f}, {hi:.3f}] |")


if __name__ == "__main__":
    main()
