"""The shipped Fashion-MNIST ViT: it loads, and reproduces the test accuracy its training run recorded."""

import json

import numpy as np
import torch

from tokencodec.data.fashion_mnist import load_fashion_mnist
from tokencodec.models.fashion_vit import FashionViT, preprocess, weights_folder


def test_shipped_weights_reproduce_the_recorded_test_accuracy():
    record = json.loads((weights_folder() / "training.json").read_text())
    model = FashionViT.from_pretrained()
    images, labels = load_fashion_mnist("test")
    torch.set_num_threads(2)
    with torch.inference_mode():
        predicted = np.concatenate([model(preprocess(images[s:s + 1000])).argmax(-1).numpy()
                                    for s in range(0, 10000, 1000)])
    accuracy = float((predicted == labels).mean())
    assert abs(accuracy - record["test_accuracy"]) <= 0.001          # float summation order may flip a tie
    assert model.config.image_size // model.config.patch_size == 14   # 196 patch tokens + CLS
