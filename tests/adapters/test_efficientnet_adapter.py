import pytest
import torch
from skimage import data

from tokencodec.adapters.efficientnet import EfficientNetTokenCompression, supported_methods
from tokencodec.adapters.hooks import PatchError
from tokencodec.models.efficientnet_lite0 import EfficientNetLite0, preprocess
from tokencodec.tokens.compress import Budget, BudgetError


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return EfficientNetLite0.from_pretrained()


@pytest.fixture(scope="module")
def images():
    return torch.cat([preprocess(data.chelsea()), preprocess(data.coffee())])


def test_supported_methods_are_the_feature_only_ones():
    assert supported_methods() == ["coded", "dct", "divprune", "pool-avg", "pool-resize", "quadtree", "random",
                                   "token-norm"]


@pytest.mark.parametrize("method", ["random", "divprune"])
def test_full_budget_equals_the_unpatched_model(model, images, method):
    with torch.inference_mode():
        expected = model(images)
        with EfficientNetTokenCompression(model, method, Budget(ratio=1.0)):
            got = model(images)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # same tokens, pooled in raster order


def test_compression_keeps_the_budget_changes_logits_and_unpatches(model, images):
    with torch.inference_mode():
        full = model(images)
        with EfficientNetTokenCompression(model, "divprune", Budget(keep=5)) as patch:
            small = model(images)
        assert patch.last_batch.num_tokens == 5 and patch.last_batch.grid == (7, 7)
        assert not torch.allclose(small, full)
        assert "forward" not in vars(model)  # the instance attribute is gone again
        assert torch.equal(model(images), full)


def test_each_image_is_compressed_on_its_own(model, images):
    with torch.inference_mode(), EfficientNetTokenCompression(model, "divprune", Budget(keep=8)):
        both = model(images)
        alone = torch.cat([model(images[:1]), model(images[1:])])
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-4)  # batched convs differ by rounding only


def test_bad_inputs(model, images):
    with pytest.raises(ValueError, match="Supported here: coded, dct, divprune, pool-avg, pool-resize, quadtree"):
        EfficientNetTokenCompression(model, "visionzip", Budget(keep=8))
    with pytest.raises(KeyError, match="unknown token-compression method 'nope'"):
        EfficientNetTokenCompression(model, "nope", Budget(keep=8))
    with pytest.raises(BudgetError, match=r"allowed range \[1, 49\]"):
        with EfficientNetTokenCompression(model, "random", Budget(keep=50)):
            model(images)
    assert "forward" not in vars(model)
    patch = EfficientNetTokenCompression(model, "random", Budget(keep=8))
    with patch, pytest.raises(PatchError):
        with EfficientNetTokenCompression(model, "random", Budget(keep=8)):
            pass
