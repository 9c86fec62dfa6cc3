"""The Fashion-MNIST ViT observer and pruning inside a ViT classifier, on a randomly initialised model (weights
are tested for accuracy in test_fashion_vit_weights.py)."""

import numpy as np
import pytest
import torch

from tokencodec.adapters.vision_tower import TowerTokenPruning
from tokencodec.bench.engine import run_sweep
from tokencodec.models.fashion_vit import FashionViT, preprocess
from tokencodec.observers.fashion_vit import FashionViTObserver
from tokencodec.pipeline import PipelineSpec
from tokencodec.tokens.compress import Budget, get_method
from tokencodec.tokens.compress.tome import keep_schedule as tome_schedule


def _images(n=3):
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_pruning_after_a_layer_equals_running_the_later_layers_on_the_kept_tokens(random_vit):
    model = FashionViT.from_pretrained(random_vit, attn_implementation="eager")
    x = preprocess(_images())
    with torch.no_grad(), TowerTokenPruning(model, get_method("token-norm"), Budget(keep=20), layer=1) as patch:
        got = model(x)
        tower = model.vision_tower
        h = tower.pre_layrnorm(tower.embeddings(x))
        for layer in tower.encoder.layers[:2]:
            h = layer(h, None)
        keep = h[:, 1:].norm(dim=-1).topk(20, dim=1).indices.sort(1).values          # token-norm, raster order
        h = torch.cat([h[:, :1], h[:, 1:].gather(1, keep[..., None].expand(-1, -1, h.shape[-1]))], 1)
        for layer in tower.encoder.layers[2:]:
            h = layer(h, None)
        want = model.head(tower.post_layernorm(h[:, 0]))
    torch.testing.assert_close(got, want)
    assert patch.tokens_per_layer == [197, 197, 21, 21]
    with torch.no_grad():
        ref = model(x)
        with TowerTokenPruning(model, "random", Budget(ratio=1.0), layer=1):
            assert torch.equal(model(x), ref)                                        # full budget: exact


def test_tome_schedule_reaches_the_budget_within_the_half_rule():
    assert tome_schedule(196, 98, 4) == [25, 25, 24, 24] and sum(tome_schedule(196, 98, 4)) == 98
    assert sum(tome_schedule(196, 13, 4)) == 196 - 13            # the floor of 4 halvings
    r = tome_schedule(196, 12, 4)
    tokens_in = 196 - np.cumsum([0, *r[:-1]])
    assert sum(r) == 196 - 13 and all(ri <= t // 2 for ri, t in zip(r, tokens_in, strict=True))


def test_observer_runs_every_supported_method_and_scores_labels(random_vit, tmp_path):
    obs = FashionViTObserver(weights=str(random_vit))
    samples = obs.samples(split="val", limit=3, seed=1)
    assert len(samples) == 3 and samples[0].image.shape == (28, 28, 3) and isinstance(samples[0].payload, int)
    assert [s.id for s in obs.samples(split="val", limit=3, seed=2)] != [s.id for s in samples]   # seeded subsets
    from tokencodec.data.fashion_mnist import CLASSES

    groups = {obs.group(s.id) for s in obs.samples(split="test", limit=200)}
    assert groups == {c.replace("/", "-") for c in CLASSES}                    # one group per class
    names = ["random", "token-norm", "visionzip", "prumerge", "divprune", "tome", "pool-avg"]
    assert all(obs.method_support(get_method(n).__class__) is None for n in names)
    assert "no LLM" in obs.method_support(get_method("fastv").__class__)
    curves = run_sweep(obs, samples, [PipelineSpec(method=n, keep_ratios=(1.0, 0.25)) for n in names], tmp_path)
    for name, curve in curves.items():
        quarter, full = curve.points                 # ascending rate, as CompressAI's files
        cls_counted = int(getattr(get_method(name), "sends_cls", False))   # VisionZip's K counts the CLS
        assert full["tokens"] == 196 - cls_counted and quarter["tokens"] == 49 - cls_counted, name
        if not name.startswith("prumerge"):      # PruMerge merges neighbours into kept tokens even at 100 %
            assert full["top1_agreement"] == 1.0, name
        assert quarter["flops"] < full["flops"] and quarter["tokens_avg_layers"] < full["tokens_avg_layers"]
        assert {"accuracy", "top1_agreement", "top5_agreement", "kl"} <= set(full.values), name
    with pytest.raises(ValueError, match="prune_layer=3"):
        FashionViTObserver(weights=str(random_vit), prune_layer=3)
