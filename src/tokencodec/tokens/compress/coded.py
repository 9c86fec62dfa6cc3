"""``coded``: a token bitstream in the pipeline — a pre-LLM method, then the token codec, then the receiver.

Split inference: the sender runs the vision side and a selection method (``inner``, e.g. random,
divprune, visionzip), quantises and entropy-codes the kept tokens with a fitted profile
(:mod:`tokencodec.entropy`: real bytes, every byte counted), and the receiver decodes them and
carries on. The tokens the model then reads are the **decoded** ones, at the decoded positions, so
fidelity includes quantisation. Rates of its own (``last_rates``, merged by the pipeline):
``bits`` and ``bytes`` (the whole file), ``payload_bytes`` (positions + payload, no header),
``encoding_time`` / ``decoding_time`` of the bitstream (quantise + entropy-code, and back; the
model's own time is the observer's ``latency_s``), and the observer's usual token rates. ``bpp`` /
``payload_bpp`` are per pixel of the sample's image (the pipeline divides), so token bitstreams and
pixel codecs share one rate axis.

Choices: the codec acts on the **vision-tower features** (``features="vision"``: on LLaVA the
pre-projector layer −2, D = 1024 on CLIP-L, the receiver projects), for every inner method (DivPrune
officially ranks projected embeddings; here it ranks the same features it sends); the CLS is not
sent (``sends_cls`` off) unless the profile has a prefix token: a ViT classifier's profile (e.g.
``fashion-vit/step-1``) codes the CLS first and the later layers read the decoded one;
the decoded tokens arrive in raster order at their original positions
(``positions="original"``, whatever the inner method's layout: the bitstream carries positions).
``profile``: a profile file, or a name under ``tokencodec/entropy/profiles/`` (e.g.
``diagnostic-mllm/step-0.5``).

Host syncs: the entropy coder runs on the host, so one read brings the kept tokens (with their
positions and the CLS) there, besides the inner method's own; the decoded tokens go back without
blocking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, get_method, register_method
from tokencodec.tokens.transfer import to_device, to_host

PROFILES = Path(__file__).resolve().parents[2] / "entropy" / "profiles"


def profile_path(name: str) -> Path:
    """A profile file by path, or by name under the shipped profiles folder."""
    p = Path(name)
    if p.suffix != ".safetensors":
        p = PROFILES / f"{name}.safetensors"
    if not p.is_file():
        shipped = sorted(str(f.relative_to(PROFILES).with_suffix("")) for f in PROFILES.rglob("*.safetensors"))
        raise FileNotFoundError(f"token codec profile {name!r} not found ({p}); shipped profiles: "
                                f"{', '.join(shipped) or 'none'}")
    return p


@dataclass(frozen=True)
class CodedOptions(MethodOptions):
    inner: str = "random"        # the pre-LLM selection method run before coding
    profile: str = ""            # the quantiser + entropy model (a file, or a shipped name)


@register_method("coded")
class Coded(TokenMethod):
    """A pre-LLM method, then the token codec (real bitstream) and its decoder, before the model goes on."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = ()
    needs_cls = False
    cls_fallback = "as its inner method"
    paper = "tokencodec (tokens → coding): split inference with a token bitstream"
    features = "vision"
    positions = "original"
    Options = CodedOptions
    transport = None             # set by a channel pipeline (tokencodec.channels.transport): a subset arrives

    def __init__(self, seed: int = 0, **options):
        super().__init__(seed, **options)
        self.inner = get_method(self.options.inner, seed=seed)
        if self.inner.stage != "pre-llm" or self.inner.video:
            raise ValueError(f"coded: inner={self.options.inner!r} must be a spatial pre-LLM method")
        # the adapter supplies what the inner method reads, and lays out the decoded tokens its way
        self.needs, self.needs_cls = self.inner.needs, self.inner.needs_cls
        self.signal_layer = self.inner.signal_layer
        self._profile = None
        self.last_rates: dict[str, float] = {}

    @property
    def profile(self):
        if self._profile is None:
            from tokencodec.entropy import TokenCodecProfile

            if not self.options.profile:
                raise ValueError("coded needs a profile (option profile=...: a file or a shipped name)")
            self._profile = TokenCodecProfile.load(profile_path(self.options.profile))
        return self._profile

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"constriction": version("constriction")}

    def describe(self) -> dict:
        out = super().describe()
        return {**out, "profile_id": self.profile.id.hex()} if self.options.profile else out

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        from tokencodec.entropy import decode_tokens, encode_tokens

        out = self.inner(batch, budget)
        if out.mask is not None or out.batch_size != 1:
            raise NotImplementedError("coded codes one image at a time, with one count (no padded batch)")
        t0 = time.perf_counter()
        if self.profile.prefix and (out.cls is None or out.cls.shape[-1] != self.profile.dim
                                    or self.profile.prefix != 1):
            raise ValueError(f"coded: profile {self.options.profile!r} sends {self.profile.prefix} CLS token(s) "
                             f"of width {self.profile.dim}; this model's batch has none that fits")
        # the coder runs on the host: one read brings the kept tokens, their positions and the CLS
        sent = [out.features[0].float(), out.positions[0]] + ([out.cls.float()] if self.profile.prefix else [])
        host = [t.numpy() for t in to_host(*sent)]
        cls = host[2] if self.profile.prefix else None
        enc = encode_tokens(host[0], host[1], batch.grid, batch.frames, self.profile, cls)
        t1 = time.perf_counter()
        dec = decode_tokens(enc.data, self.profile) if self.transport is None else self.transport(batch, out, enc,
                                                                                                 self.profile)
        t2 = time.perf_counter()
        dev = out.features.device
        order = np.argsort(host[1], kind="stable")
        if self.transport is not None:                              # only the tokens that arrived go on
            order = order[np.isin(host[1][order], dec.positions)]
        out = out.take(to_device(torch.from_numpy(order)[None], dev))   # the decoder returns raster order
        features = to_device(torch.from_numpy(dec.features)[None], dev).to(out.features.dtype)
        self.last_rates = {"bits": float(enc.total_bits), "bytes": enc.total_bits / 8,
                           "payload_bytes": (enc.position_bits + enc.payload_bits) / 8,
                           "ideal_bits": enc.ideal_payload_bits + enc.ideal_position_bits,
                           "encoding_time": t1 - t0, "decoding_time": t2 - t1}
        if cls is not None:
            out = replace(out, cls=to_device(torch.from_numpy(dec.prefix), dev).to(out.cls.dtype))
        return replace(out, features=features)


__all__ = ["Coded", "profile_path"]
