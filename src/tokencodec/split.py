"""Split inference with token bitstreams: the sender runs the vision side and writes a file, the receiver
finishes the job from the file alone (no pixels).

Supported observers: ``diagnostic-mllm`` (the receiver answers questions: the sender runs the tower on
the 64×64 image, resized if needed, and takes layer −2's patch tokens), ``efficientnet-lite0``
(the receiver classifies: the sender runs the backbone at 224 px and takes the final 7×7 feature
map's tokens) and ``fashion-vit`` (the receiver classifies: the sender runs the ViT's first two
layers on the 28×28 greyscale image and sends the CLS and K patch tokens of layer 1; the receiver
runs the last two layers and the head on them).
The sender keeps K tokens with a pre-LLM method and codes them with a shipped profile
(``tokencodec/entropy/profiles/<observer>/<name>``: ``step-<s>`` scalar, ``vq-<k>`` codebook). The
receiver finds the profile by the id in the file's header and decodes the tokens; the MLLM gets them
through the LLaVA adapter and :class:`Replay` (a method that returns the decoded tokens at their
positions; the tower runs on a blank image whose tokens are replaced, so only the decoded tokens
reach the LLM); EfficientNet-Lite0's head pools them directly; the ViT's later layers read them (and
the decoded CLS) through the same replay, in :class:`~tokencodec.models.vision_tower.TowerTokenPruning`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, TokenMethod
from tokencodec.tokens.compress.coded import PROFILES

SPLIT_OBSERVERS = ("diagnostic-mllm", "efficientnet-lite0", "fashion-vit")
INPUT_SIZE = {"diagnostic-mllm": 64, "fashion-vit": 28}     # images are resized to this (EfficientNet crops)
FASHION_LAYER = 1           # the fashion-vit observer's default prune_layer: the sender runs layers 0 and 1


class SplitError(ValueError):
    """Bad input to the split-inference commands; the message names it and what is allowed."""


class Replay(TokenMethod):
    """Returns fixed decoded tokens (features [K, D], raster positions, optionally a CLS [D]) in place of
    the encoder's."""

    name = "replay"
    positions = "original"

    def __init__(self, features: np.ndarray, positions: np.ndarray, cls: np.ndarray | None = None):
        super().__init__()
        self.tokens, self.at = torch.from_numpy(np.ascontiguousarray(features)), torch.from_numpy(positions)
        self.cls = None if cls is None else torch.from_numpy(np.ascontiguousarray(cls)).reshape(1, -1)

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        k = len(self.at)
        dummy = batch.take(self.at.to(batch.features.device)[None].expand(batch.batch_size, k))
        cls = None if self.cls is None else self.cls.to(batch.features)
        return TokenBatch(features=self.tokens[None].to(batch.features), grid=batch.grid, frames=batch.frames,
                          positions=dummy.positions, source=dummy.source, sizes=dummy.sizes, cls=cls)


def shipped_profiles(observer: str) -> dict[str, Path]:
    """{step name: file} of the profiles shipped for an observer."""
    folder = PROFILES / observer
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))}


def find_profile(profile_id: str):
    """The shipped profile with this id (hex), or SplitError listing what is there."""
    from tokencodec.entropy import TokenCodecProfile

    seen = []
    for path in sorted(PROFILES.rglob("*.safetensors")):
        profile = TokenCodecProfile.load(path)
        if profile.id.hex() == profile_id:
            return profile, path
        seen.append(f"{path.parent.name}/{path.stem} ({profile.id.hex()})")
    raise SplitError(f"no shipped profile has id {profile_id}; shipped: {', '.join(seen) or 'none'}")


def _fashion_vit():
    from tokencodec.models.fashion_vit import FashionViT

    return FashionViT.from_pretrained()


def _diagnostic():
    from tokencodec.models.diagnostic import DiagnosticMLLM

    return DiagnosticMLLM.from_pretrained()


def load_image(path: Path, size: int | None) -> np.ndarray:
    """An RGB image file, resized to size×size when ``size`` is given."""
    from tokencodec.data.images import read_image

    img = read_image(path)
    if size is not None and img.shape[:2] != (size, size):
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return np.array(img, dtype=np.uint8)       # a writable copy (torch refuses read-only arrays)


def encode_image(image: np.ndarray, observer: str = "diagnostic-mllm", method: str = "rdo", keep: int = 16,
                 profile: str = "step-4"):
    """The EncodedTokens (bytes and bit budget) of one image at K tokens under a shipped profile."""
    from tokencodec.entropy import TokenCodecProfile, encode_tokens
    from tokencodec.tokens.compress import get_method

    if observer not in SPLIT_OBSERVERS:
        raise SplitError(f"observer {observer!r}: split inference supports {', '.join(SPLIT_OBSERVERS)}")
    profiles = shipped_profiles(observer)
    if profile not in profiles:
        raise SplitError(f"profile {profile!r}: the shipped profiles for {observer} are {', '.join(profiles)}")
    inner = get_method(method)
    if inner.stage != "pre-llm" or inner.video:
        raise SplitError(f"method {method!r} acts at stage {inner.stage!r}; the sender runs spatial pre-LLM methods")
    if observer == "efficientnet-lite0" and (inner.needs or inner.needs_cls):
        raise SplitError(f"method {method!r} reads attention; EfficientNet-Lite0 tokens have none")
    out = _sender(observer, image, inner, keep)
    chosen = TokenCodecProfile.load(profiles[profile])
    cls = out.cls.float().numpy() if chosen.prefix else None        # a ViT classifier's receiver reads the CLS
    return encode_tokens(out.features[0].float().numpy(), out.positions[0].numpy(), out.grid, out.frames, chosen, cls)


def _sender(observer: str, image: np.ndarray, inner: TokenMethod, keep: int) -> TokenBatch:
    """The vision side: the observer's tokens of ``image``, K of them kept by ``inner``."""
    def check(n: int) -> Budget:
        if not 1 <= keep <= n:
            raise SplitError(f"keep={keep}: between 1 and {n} tokens")
        return Budget(keep=keep)

    with torch.inference_mode():
        if observer == "efficientnet-lite0":
            from tokencodec.models.efficientnet_lite0 import EfficientNetLite0, image_tokens, preprocess

            tokens = image_tokens(EfficientNetLite0.from_pretrained(), preprocess(image, 224))
            return inner(tokens, check(tokens.num_tokens))
        from tokencodec.models.vision_tower import VisionTokenCompressor

        if observer == "fashion-vit":
            from tokencodec.models.fashion_vit import preprocess as fashion_pixels

            grey = np.rint(image.mean(2) if image.ndim == 3 else image).astype(np.uint8)
            if grey.shape != (28, 28):
                raise SplitError(f"image of shape {image.shape}; the Fashion-MNIST ViT takes 28×28 greyscale")
            vit = _fashion_vit()
            budget = check((vit.config.image_size // vit.config.patch_size) ** 2)
            return VisionTokenCompressor(vit.vision_tower, inner, budget, layer=FASHION_LAYER).compress(
                fashion_pixels(grey[None]))
        from tokencodec.models.diagnostic import IMAGE_SIZE, N_IMAGE_TOKENS, preprocess

        if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise SplitError(f"image of shape {image.shape}; the diagnostic MLLM takes {IMAGE_SIZE}×{IMAGE_SIZE}×3")
        budget = check(N_IMAGE_TOKENS)       # layer −2 of the tower, with the signals the method reads
        return VisionTokenCompressor(_diagnostic().model.model, inner, budget, layer=-2).compress(preprocess(image))


def decode_file(path: Path):
    """(header dict, DecodedTokens, profile path) of a token bitstream file, or of a packet capture (the
    tokens that arrived)."""
    from tokencodec.entropy import decode_tokens, read_header
    from tokencodec.entropy.packets import CAPTURE_MAGIC

    data = Path(path).read_bytes()
    if data[:4] == CAPTURE_MAGIC:       # packets received over a lossy channel (tokencodec.channels.files)
        from tokencodec.channels.files import receive_file

        return receive_file(data, str(path))
    head = read_header(data, str(path))
    profile, where = find_profile(head["profile"])
    return head, decode_tokens(data, profile, str(path)), where


def answer(path: Path, question: str) -> str:
    """The diagnostic MLLM's answer from a token bitstream alone (or from the tokens of a packet capture that
    arrived; none: the answer to a uniform grey image, the receiver's "no image")."""
    from tokencodec.channels.files import NothingArrived
    from tokencodec.models.diagnostic import IMAGE_SIZE
    from tokencodec.models.llava import LlavaTokenCompression

    try:
        _, tokens, where = decode_file(path)
    except NothingArrived:
        tokens = where = None
    if where is not None and where.parent.name != "diagnostic-mllm":
        raise SplitError(f"{path}: its profile is for {where.parent.name}; answer reads diagnostic-mllm files")
    mllm = _diagnostic()
    unknown = [w for w in question.replace("?", " ?").split() if mllm.tokenizer.token_to_id(w) is None]
    if unknown:
        raise SplitError(f"question words {unknown} are not in the diagnostic model's vocabulary "
                         "(its questions: tokencodec.data.vqa)")
    if not question.rstrip().endswith("?"):
        question = question.rstrip() + " ?"
    if tokens is None:
        from tokencodec.channels.pixels import no_image

        with torch.inference_mode():
            logits = mllm.answer_logits([no_image((IMAGE_SIZE, IMAGE_SIZE, 3))], [question])
        return mllm.answers[int(logits[0].argmax())]
    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)      # the tower's output is replaced
    kw = mllm.inputs([blank], [question])
    last = int(kw.pop("last")[0])
    with torch.inference_mode(), LlavaTokenCompression(mllm.model, Replay(tokens.features, tokens.positions),
                                                        Budget(keep=max(1, len(tokens.positions)))) as patch:
        logits = mllm.model(**kw).logits
    slot = int((patch.sequence_index[0] == last).nonzero()[0, 0])
    return mllm.answers[int(logits[0, slot, mllm.answer_ids].argmax())]


def classify(path: Path, top: int = 5) -> list[tuple[str, float]]:
    """The top classes (name, probability) of the file's classifier (EfficientNet-Lite0 or the Fashion-MNIST
    ViT) from a token bitstream alone."""
    _, tokens, where = decode_file(path)
    if where.parent.name == "fashion-vit":
        return _classify_fashion(tokens, top)
    if where.parent.name != "efficientnet-lite0":
        raise SplitError(f"{path}: its profile is for {where.parent.name}; classify reads efficientnet-lite0 "
                         "and fashion-vit files")
    from tokencodec.models.efficientnet_lite0 import EfficientNetLite0, classify_batch, imagenet_class_names
    batch = TokenBatch(features=torch.from_numpy(tokens.features)[None], grid=tokens.grid, frames=tokens.frames,
                       positions=torch.from_numpy(tokens.positions)[None])
    with torch.inference_mode():
        p = classify_batch(EfficientNetLite0.from_pretrained(), batch)[0].float().softmax(-1)
    names = imagenet_class_names()
    best = p.topk(top)
    return [(names[i], float(v)) for v, i in zip(best.values, best.indices, strict=True)]


def _classify_fashion(tokens, top: int) -> list[tuple[str, float]]:
    """The ViT's last layers and head on the decoded [CLS, K tokens] (the tower runs on a blank image
    whose layer-1 output is replaced whole)."""
    from tokencodec.data.fashion_mnist import CLASSES
    from tokencodec.models.fashion_vit import preprocess
    from tokencodec.models.vision_tower import TowerTokenPruning

    if tokens.prefix is None:
        raise SplitError("a fashion-vit file without its CLS (the profile has no prefix token)")
    vit = _fashion_vit()
    replay = Replay(tokens.features, tokens.positions, tokens.prefix[0])
    blank = preprocess(np.zeros((1, 28, 28), dtype=np.uint8))
    with torch.inference_mode(), TowerTokenPruning(vit.vision_tower, replay, Budget(keep=max(1, len(tokens.positions))),
                                                   layer=FASHION_LAYER):
        p = vit(blank)[0].float().softmax(-1)
    best = p.topk(min(top, len(CLASSES)))
    return [(CLASSES[i], float(v)) for v, i in zip(best.values, best.indices, strict=True)]


__all__ = ["Replay", "SplitError", "answer", "classify", "decode_file", "encode_image", "find_profile",
           "shipped_profiles"]
