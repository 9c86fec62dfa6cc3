"""A small ViT with a CLS token, trained here on Fashion-MNIST: an observer on real labelled data.

The encoder is an HF ``CLIPVisionModel`` (greyscale input, 56×56 pixels, 4×4 patches: 196 patch
tokens + CLS), so the repository's tower adapters (ToMe, VisionZip, PruMerge, every pre-LLM
method) apply to it unchanged; the head is one linear layer on the CLS after the final layer norm
(``pooler_output``). Images are the 28×28 originals with each pixel repeated 2×2 (nearest
upsampling keeps every 4×4 patch an exact 2×2 block of the original), scaled by the data set's
mean and standard deviation. Weights: ``models/weights/fashion-vit`` (see its MODEL_CARD.md),
written by ``scripts/train_fashion_vit.py``.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

MEAN, STD = 0.2860, 0.3530          # Fashion-MNIST train pixels / 255
UPSAMPLE = 2
DEFAULT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      image_size=28 * UPSAMPLE, patch_size=4, num_channels=1)


def weights_folder() -> Path:
    return Path(str(files("tokencodec.models").joinpath("weights", "fashion-vit")))


def preprocess(images: np.ndarray | Tensor) -> Tensor:
    """uint8 [N, 28, 28] → float32 [N, 1, 56, 56] (2×2 pixel repeat, standardised)."""
    x = torch.tensor(np.asarray(images), dtype=torch.float32) / 255.0   # a copy: the idx arrays are read-only
    if x.dim() != 3 or tuple(x.shape[1:]) != (28, 28):
        raise ValueError(f"expected greyscale images [N, 28, 28]; got shape {tuple(x.shape)}")
    x = x.repeat_interleave(UPSAMPLE, 1).repeat_interleave(UPSAMPLE, 2)
    return ((x - MEAN) / STD)[:, None]


class FashionViT(nn.Module):
    """``vision_tower`` (CLIPVisionModel) + ``head`` (Linear on the CLS); ``forward`` gives class logits."""

    def __init__(self, config=None, num_classes: int = 10):
        super().__init__()
        import transformers

        if config is None or isinstance(config, dict):
            config = transformers.CLIPVisionConfig(**{**DEFAULT_CONFIG, **(config or {})})
        self.vision_tower = transformers.CLIPVisionModel(config)
        self.head = nn.Linear(config.hidden_size, num_classes)

    @property
    def config(self):
        return self.vision_tower.config

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.head(self.vision_tower(pixel_values=pixel_values).pooler_output)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(
            {"vision_config": self.config.to_diff_dict(), "num_classes": self.head.out_features}, indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, attn_implementation: str = "sdpa") -> FashionViT:
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else weights_folder()
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"no FashionViT weights in {folder} (config.json + model.safetensors); "
                                    "train them with scripts/train_fashion_vit.py")
        meta = json.loads((folder / "config.json").read_text())
        import transformers

        config = transformers.CLIPVisionConfig(**meta["vision_config"])
        model = cls(config, meta["num_classes"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.vision_tower.set_attn_implementation(attn_implementation)
        return model.eval()


__all__ = ["DEFAULT_CONFIG", "FashionViT", "preprocess", "weights_folder"]
