import pytest
import torch


@pytest.fixture(scope="session")
def random_vit(tmp_path_factory):
    """A randomly initialised Fashion-MNIST ViT saved to a folder (fidelity tests, not accuracy)."""
    from tokencodec.models.fashion_vit import FashionViT

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fvit")
    FashionViT().save_pretrained(folder)
    return folder
