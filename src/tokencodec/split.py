"""Split inference with token bitstreams: the sender runs the vision side and writes a file, the receiver
finishes the job from the file alone (no pixels).

Supported observers: ``diagnostic-mllm`` (the receiver answers questions: the sender runs the tower on
the 64×64 image, resized if needed, and takes layer −2's patch tokens) and ``efficientnet-lite0``
(the receiver classifies: the sender runs the backbone at 224 px and takes the final 7×7 feature
map's tokens). The sender keeps K tokens with a pre-LLM method and codes them with a shipped profile
(``tokencodec/entropy/profiles/<observer>/<name>``: ``step-<s>`` scalar, ``vq-<k>`` codebook). The
receiver finds the profile by the id in the file's header and decodes the tokens; the MLLM gets them
through the LLaVA adapter and :class:`Replay` (a method that returns the decoded tokens at their
positions; the tower runs on a blank image whose tokens are replaced, so only the decoded tokens
reach the LLM); EfficientNet-Lite0's head pools them directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, TokenMethod
from tokencodec.tokens.compress.coded import PROFILES

SPLIT_OBSERVERS = ("diagnostic-mllm", "efficientnet-lite0")


class SplitError(ValueError):
    """Bad input to the split-inference commands; the message names it and what is allowed."""


class Replay(TokenMethod):
    """Returns fixed decoded tokens (features [K, D], raster positions) in place of the encoder's."""

    name = "replay"
    positions = "original"

    def __init__(self, features: np.ndarray, positions: np.ndarray):
        super().__init__()
        self.tokens, self.at = torch.from_numpy(np.ascontiguousarray(features)), torch.from_numpy(positions)

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        k = len(self.at)
        dummy = batch.take(self.at.to(batch.features.device)[None].expand(batch.batch_size, k))
        return TokenBatch(features=self.tokens[None].to(batch.features), grid=batch.grid, frames=batch.frames,
                          positions=dummy.positions, source=dummy.source, sizes=dummy.sizes)


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
    return encode_tokens(out.features[0].float().numpy(), out.positions[0].numpy(), out.grid, out.frames,
                         TokenCodecProfile.load(profiles[profile]))


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
        from tokencodec.models.diagnostic import IMAGE_SIZE, N_IMAGE_TOKENS, preprocess
        from tokencodec.models.vision_tower import VisionTokenCompressor

        if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise SplitError(f"image of shape {image.shape}; the diagnostic MLLM takes {IMAGE_SIZE}×{IMAGE_SIZE}×3")
        budget = check(N_IMAGE_TOKENS)       # layer −2 of the tower, with the signals the method reads
        return VisionTokenCompressor(_diagnostic().model.model, inner, budget, layer=-2).compress(preprocess(image))


def decode_file(path: Path):
    """(header dict, DecodedTokens, profile path) of a token bitstream file."""
    from tokencodec.entropy import decode_tokens, read_header

    data = Path(path).read_bytes()
    head = read_header(data, str(path))
    profile, where = find_profile(head["profile"])
    return head, decode_tokens(data, profile, str(path)), where


def answer(path: Path, question: str) -> str:
    """The diagnostic MLLM's answer from a token bitstream alone."""
    from tokencodec.models.diagnostic import IMAGE_SIZE
    from tokencodec.models.llava import LlavaTokenCompression

    _, tokens, where = decode_file(path)
    if where.parent.name != "diagnostic-mllm":
        raise SplitError(f"{path}: its profile is for {where.parent.name}; answer reads diagnostic-mllm files")
    mllm = _diagnostic()
    unknown = [w for w in question.replace("?", " ?").split() if mllm.tokenizer.token_to_id(w) is None]
    if unknown:
        raise SplitError(f"question words {unknown} are not in the diagnostic model's vocabulary "
                         "(its questions: tokencodec.data.vqa)")
    if not question.rstrip().endswith("?"):
        question = question.rstrip() + " ?"
    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)      # the tower's output is replaced
    kw = mllm.inputs([blank], [question])
    last = int(kw.pop("last")[0])
    with torch.inference_mode(), LlavaTokenCompression(mllm.model, Replay(tokens.features, tokens.positions),
                                                        Budget(keep=max(1, len(tokens.positions)))) as patch:
        logits = mllm.model(**kw).logits
    slot = int((patch.sequence_index[0] == last).nonzero()[0, 0])
    return mllm.answers[int(logits[0, slot, mllm.answer_ids].argmax())]


def classify(path: Path, top: int = 5) -> list[tuple[str, float]]:
    """EfficientNet-Lite0's top classes (name, probability) from a token bitstream alone."""
    from tokencodec.models.efficientnet_lite0 import EfficientNetLite0, classify_batch, imagenet_class_names

    _, tokens, where = decode_file(path)
    if where.parent.name != "efficientnet-lite0":
        raise SplitError(f"{path}: its profile is for {where.parent.name}; classify reads efficientnet-lite0 files")
    batch = TokenBatch(features=torch.from_numpy(tokens.features)[None], grid=tokens.grid, frames=tokens.frames,
                       positions=torch.from_numpy(tokens.positions)[None])
    with torch.inference_mode():
        p = classify_batch(EfficientNetLite0.from_pretrained(), batch)[0].float().softmax(-1)
    names = imagenet_class_names()
    best = p.topk(top)
    return [(names[i], float(v)) for v, i in zip(best.values, best.indices, strict=True)]


__all__ = ["Replay", "SplitError", "answer", "classify", "decode_file", "encode_image", "find_profile",
           "shipped_profiles"]
