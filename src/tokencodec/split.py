"""Split inference with token bitstreams: the sender runs the vision side and writes a file, the receiver
finishes the job from the file alone (no pixels).

Each observer that supports it names its :class:`~tokencodec.observers.base.SplitInference` (``split``):
the sender's tokens of an image and what its receiver does with decoded tokens — ``diagnostic-mllm``
answers questions, ``efficientnet-lite0`` and ``fashion-vit`` classify. This module is the part they
share: the sender keeps K tokens with a spatial pre-LLM method the observer can run and codes them with a
shipped profile (``tokencodec/entropy/profiles/<observer>/<name>``: ``step-<s>`` scalar, ``vq-<k>``
codebook); the receiver finds the profile by the id in the file's header, decodes the tokens and hands them
to the observer's receiver. An observer's defaults (method, keep, profile) apply where the user names none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokencodec.tokens.compress.base import Budget
from tokencodec.tokens.compress.coded import PROFILES


class SplitError(ValueError):
    """Bad input to the split-inference commands; the message names it and what is allowed."""


def split_observers() -> list[str]:
    """Observers with split inference."""
    from tokencodec.observers import OBSERVERS

    return [n for n in OBSERVERS.names() if OBSERVERS.get(n).split is not None]


def splitter(observer: str):
    """The observer's SplitInference class, or SplitError listing the observers that have one."""
    from tokencodec.observers import OBSERVERS

    cls = OBSERVERS.get(observer).split if observer in OBSERVERS.names() else None
    if cls is None:
        raise SplitError(f"observer {observer!r}: split inference supports {', '.join(split_observers())}")
    return cls


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


def input_size(observer: str) -> int | None:
    """The square an observer's sender resizes images to (None: it crops as its model does)."""
    return splitter(observer).input_size


def load_image(path: Path, size: int | None) -> np.ndarray:
    """An RGB image file, resized to size×size when ``size`` is given."""
    from tokencodec.data.images import read_image

    img = read_image(path)
    if size is not None and img.shape[:2] != (size, size):
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return np.array(img, dtype=np.uint8)       # a writable copy (torch refuses read-only arrays)


def encode_image(image: np.ndarray, observer: str = "diagnostic-mllm", method: str | None = None,
                 keep: int | None = None, profile: str | None = None):
    """The EncodedTokens (bytes and bit budget) of one image at K tokens under a shipped profile; what is not
    given comes from the observer's defaults."""
    from tokencodec.entropy import TokenCodecProfile, encode_tokens
    from tokencodec.observers import OBSERVERS
    from tokencodec.tokens.compress import get_method

    end_class = splitter(observer)
    defaults = end_class.defaults
    method, keep, profile = method or defaults["method"], keep or defaults["keep"], profile or defaults["profile"]
    profiles = shipped_profiles(observer)
    if profile not in profiles:
        raise SplitError(f"profile {profile!r}: the shipped profiles for {observer} are {', '.join(profiles)}")
    inner = get_method(method)
    if inner.stage != "pre-llm" or inner.video:
        raise SplitError(f"method {method!r} acts at stage {inner.stage!r}; the sender runs spatial pre-LLM methods")
    why = OBSERVERS.get(observer).method_support(type(inner))
    if why:
        raise SplitError(f"method {method!r} cannot run on {observer}: {why}")
    end = end_class()
    if not 1 <= keep <= end.tokens():
        raise SplitError(f"keep={keep}: between 1 and {end.tokens()} tokens")
    try:
        out = end.send(image, inner, Budget(keep=keep))
    except ValueError as err:                       # the observer's own input checks
        raise SplitError(str(err)) from None
    chosen = TokenCodecProfile.load(profiles[profile])
    cls = out.cls.float().numpy() if chosen.prefix else None        # a ViT classifier's receiver reads the CLS
    return encode_tokens(out.features[0].float().numpy(), out.positions[0].numpy(), out.grid, out.frames, chosen, cls)


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


def _receiver(path: Path, role: str):
    """(decoded tokens, the receiver of the file's observer) when that observer's receiver does ``role``."""
    _, tokens, where = decode_file(path)
    observer = where.parent.name
    end_class = splitter(observer)
    if end_class.receiver != role:
        readers = [o for o in split_observers() if splitter(o).receiver == role]
        raise SplitError(f"{path}: its profile is for {observer}, whose receiver does {end_class.receiver!r}; "
                         f"{role} reads files of {', '.join(readers)}")
    return tokens, end_class()


def answer(path: Path, question: str) -> str:
    """The answer of the file's MLLM (the diagnostic MLLM) from a token bitstream alone, or from the tokens of
    a packet capture that arrived (none: the receiver's answer to "no image")."""
    from tokencodec.channels.files import NothingArrived

    try:
        tokens, end = _receiver(path, "answer")
    except NothingArrived:          # no token packet survived the channel: nothing names the observer
        readers = [o for o in split_observers() if splitter(o).receiver == "answer"]
        if len(readers) != 1:
            raise
        tokens, end = None, splitter(readers[0])()
    try:
        return end.answer(tokens, question)
    except ValueError as err:
        raise SplitError(str(err)) from None


def classify(path: Path, top: int = 5) -> list[tuple[str, float]]:
    """The top classes (name, probability) of the file's classifier (EfficientNet-Lite0 or the Fashion-MNIST
    ViT) from a token bitstream alone."""
    tokens, end = _receiver(path, "classify")
    try:
        return end.classify(tokens, top)
    except ValueError as err:
        raise SplitError(str(err)) from None


__all__ = ["SplitError", "answer", "classify", "decode_file", "encode_image", "find_profile", "input_size",
           "load_image", "shipped_profiles", "split_observers", "splitter"]
