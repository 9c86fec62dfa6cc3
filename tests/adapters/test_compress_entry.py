"""``tokencodec.compress`` picks the adapter from the model's class, and every adapter gives one record."""

import pytest
import torch

import tokencodec
from tokencodec.adapters.registry import adapter_class
from tokencodec.tokens.compress import Budget

transformers = pytest.importorskip("transformers")


def _clip():
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, image_size=32, patch_size=8)
    torch.manual_seed(0)
    return transformers.CLIPVisionModel(cfg).eval()


def test_the_adapter_follows_the_model_class_and_the_method_stage():
    from tokencodec.adapters.efficientnet import EfficientNetTokenCompression
    from tokencodec.adapters.vision_tower import ToMeVisionPatch, VisionTokenCompressor
    from tokencodec.models.efficientnet_lite0 import EfficientNetLite0

    tower = _clip()
    assert adapter_class(tower, "divprune") is VisionTokenCompressor
    assert adapter_class(tower, "tome") is ToMeVisionPatch
    assert adapter_class(EfficientNetLite0(), "random") is EfficientNetTokenCompression
    with pytest.raises(TypeError, match="no token-compression adapter for Linear; supported: CLIPVisionModel"):
        tokencodec.compress(torch.nn.Linear(2, 2), "random", Budget(keep=1))


def test_every_adapter_reports_one_record():
    tower = _clip()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), tokencodec.compress(tower, "divprune", Budget(keep=5)) as patch:
        tower(pixel_values=pixels)
    assert patch.record().kept.num_tokens == 5
    with torch.no_grad(), tokencodec.compress(tower, "tome", Budget(r=2), layer=-1) as patch:
        tower(pixel_values=pixels)
    rec = patch.record()
    assert rec.tokens_per_layer == [15, 13, 11] and rec.kept.num_tokens == 10  # 16 patches + CLS, 2 merged per layer
