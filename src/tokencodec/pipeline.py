"""Pipelines: a chain of modules, each with a knob, between the data and an observer.

A module is a pixel codec at a quality (encode → real bytes → decode; on a video observer a video
codec, H.264 / H.265 / AV1, codes the whole clip) or a token method at a
keep ratio (acting inside the observer's model); a chain "codec, then token method" is allowed.
Each module adds its rates to the operating point: a codec its ``bytes``, ``bits``, ``bpp`` and
coding times; the token method's rates (tokens, tokens averaged over layers, FLOPs) come from the
observer's runner, which is where the tokens exist; a method that writes a token bitstream
(``coded``) reports its ``bits``, ``bytes``, ``payload_bytes`` in ``last_rates``, and ``bpp`` /
``payload_bpp`` follow per pixel of the sample's image, the pixel codecs' axis.

A :class:`PipelineSpec` sweeps one knob: a codec's qualities, or a method's keep ratios; a chain
fixes the method's keep ratio (one spec per ratio) and sweeps the codec's qualities. So each spec
is one RD curve. A ``channel`` after a pixel codec or the ``coded`` token bitstream
(:mod:`tokencodec.channels.transport`) sends the file or the tokens as packets over a lossy channel; it
fixes the quality or keep ratio (one value) and sweeps the channel's loss rates (knob ``loss``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokencodec.observers.base import Observer, Prepared, Sample, video_support


class PipelineError(ValueError):
    """A pipeline that cannot run: unknown module, knob out of range, or a module the observer cannot judge."""


def is_video_codec(name: str) -> bool:
    from tokencodec.codecs.video import VIDEO_CODECS

    return name in VIDEO_CODECS


def codec_for(name: str):
    """The image codec, or the video codec, of that name."""
    from tokencodec.codecs import get_codec
    from tokencodec.codecs.video import get_video_codec

    return get_video_codec(name) if is_video_codec(name) else get_codec(name)


@dataclass(frozen=True)
class PipelineSpec:
    codec: str | None = None
    qualities: tuple[int, ...] = ()
    method: str | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    keep_ratios: tuple[float, ...] = ()
    name: str | None = None               # label override
    channel: dict[str, Any] | None = field(default=None, hash=False)   # a lossy channel (knob: its losses)

    @property
    def knob(self) -> str:
        if self.channel is not None:
            return "loss"
        return "quality" if self.codec else "keep_ratio"

    def channel_spec(self):
        from tokencodec.channels.transport import ChannelSpec

        return ChannelSpec.parse(self.channel)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        method = None
        if self.method:
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
            method = self.method + (f"({opts})" if opts else "")
        if self.codec and method:
            return f"{self.codec}+{method}@{self.keep_ratios[0]:g}"
        if self.channel is not None:
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.channel.items()) if k != "losses")
            fixed = f"q{self.qualities[0]}" if self.codec else f"{self.keep_ratios[0]:g}"
            return f"{self.codec or method}@{fixed}~channel({opts})"
        return self.codec or method or "?"

    def points(self) -> list[dict[str, float]]:
        """The knob settings of this curve, from highest rate to lowest (a channel: from no loss up)."""
        if self.channel is not None:
            fixed = {"quality": int(self.qualities[0])} if self.codec else {"keep_ratio": float(self.keep_ratios[0])}
            return [{"loss": float(v), **fixed} for v in sorted(set(self.channel.get("losses", [0.0])))]
        if self.codec:
            extra = {"keep_ratio": self.keep_ratios[0]} if self.method else {}
            return [{"quality": int(q), **extra} for q in sorted(set(self.qualities), reverse=True)]
        return [{"keep_ratio": float(r)} for r in sorted(set(self.keep_ratios), reverse=True)]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.codec:
            out.update(codec=self.codec, qualities=sorted(set(self.qualities), reverse=True))
        if self.method:
            out.update(method=self.method, options=dict(self.options), keep_ratios=list(self.keep_ratios))
        if self.name:
            out["name"] = self.name
        if self.channel is not None:
            out["channel"] = self.channel_spec().to_json()
        return out

    def check(self, observer_runner=None) -> None:
        """Refuse unknown codecs/methods/options and knobs out of range, before any work."""
        from tokencodec.codecs import CODECS, CodecError
        from tokencodec.codecs.video import VIDEO_CODECS
        from tokencodec.tokens.compress import METHODS, Budget, BudgetError, get_method

        if not self.codec and not self.method:
            raise PipelineError("a pipeline needs a codec, a method, or both")
        if self.channel is not None:
            self._check_channel(observer_runner)
        if self.codec:
            if self.codec not in CODECS and self.codec not in VIDEO_CODECS:
                raise PipelineError(f"unknown codec {self.codec!r}; known: {', '.join(CODECS.names())}; video: "
                                    f"{', '.join(VIDEO_CODECS.names())}")
            if not self.qualities:
                raise PipelineError(f"codec {self.codec!r}: give qualities (a non-empty list)")
            if observer_runner is not None and is_video_codec(self.codec) != bool(observer_runner.video):
                kind = "video codec" if is_video_codec(self.codec) else "image codec"
                raise PipelineError(f"{kind} {self.codec!r} cannot run on this observer: it shows "
                                    + ("clips (use h264, h265 or av1)" if observer_runner.video else
                                       "single images (video codecs need diagnostic-video or fashion-vit-video)"))
            codec = codec_for(self.codec)
            try:
                for q in self.qualities:
                    codec.check_quality(q)
            except CodecError as err:
                raise PipelineError(str(err)) from None
        if self.method:
            if self.method not in METHODS:
                raise PipelineError(f"unknown token method {self.method!r}; known: {', '.join(METHODS.names())}")
            if not self.keep_ratios:
                raise PipelineError(f"method {self.method!r}: give keep_ratios (a non-empty list in (0, 1])")
            if self.codec and len(self.keep_ratios) != 1:
                raise PipelineError(f"{self.codec} then {self.method}: a chain sweeps the codec's qualities at ONE "
                                    f"keep ratio; got {list(self.keep_ratios)} (write one pipeline per ratio)")
            try:
                for r in self.keep_ratios:
                    Budget(ratio=r)
                get_method(self.method, **self.options)
            except (BudgetError, ValueError, TypeError) as err:
                raise PipelineError(f"method {self.method!r}: {err}") from None
            if observer_runner is not None:
                method_cls = METHODS.get(self.method)
                why = video_support(observer_runner.video, method_cls) or observer_runner.supports(method_cls)
                if why:
                    raise PipelineError(f"method {self.method!r} cannot run on this observer: {why}")

    def _check_channel(self, observer_runner) -> None:
        from tokencodec.channels import ChannelError

        try:
            self.channel_spec()
        except (ChannelError, TypeError) as err:
            raise PipelineError(f"channel: {err}") from None
        if self.codec and self.method:
            raise PipelineError("a channel follows a pixel codec or the coded token method, not a chain of both")
        if self.method and self.method != "coded":
            raise PipelineError(f"a channel carries a bitstream: method 'coded' (a token bitstream), not "
                                f"{self.method!r}")
        if len(self.qualities) > 1 or len(self.keep_ratios) > 1:
            raise PipelineError("a channel sweeps its loss rates at ONE quality or keep ratio; got "
                                f"{list(self.qualities or self.keep_ratios)} (write one pipeline per value)")
        if (self.codec and is_video_codec(self.codec)) or (observer_runner is not None and observer_runner.video):
            raise PipelineError("channels carry single images (a video over a channel is not built)")

    def config_id(self, observer_key: str, seed: int) -> str:
        """Identifies everything that changes a record except the knob and the sample."""
        settings = codec_for(self.codec).settings() if self.codec else None
        parts = [observer_key, self.codec, settings, self.method, self.options, seed]
        if self.channel is not None:       # older records (no channel) keep their ids
            parts.append({k: v for k, v in self.channel_spec().to_json().items() if k != "losses"})
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_point(observer: Observer, sample: Sample, spec: PipelineSpec, knob: dict[str, float],
              prepared: Prepared, method=None) -> dict[str, float]:
    """Rates and distortions of one sample through the pipeline at one knob setting."""
    from tokencodec.codecs.payload import has_payload_parser, payload_bytes
    from tokencodec.tokens.compress import Budget

    rates: dict[str, float] = {}
    image, changed = sample.image, False
    pixels = int(np.prod(sample.image.shape[:-1]))       # H·W, or T·H·W for a clip: bpp over every frame
    channel = spec.channel_spec() if spec.channel is not None else None
    t0 = time.perf_counter()
    if spec.codec:
        codec = codec_for(spec.codec)
        t_enc = time.perf_counter()
        data = codec.encode(sample.image, int(knob["quality"]))
        t_dec = time.perf_counter()
        if channel is not None:           # the file as packets over the channel; None: no image
            from tokencodec.channels.pixels import no_image
            from tokencodec.channels.transport import transmit_image

            image, sent = transmit_image(spec.codec, data, sample.image.shape, int(knob["quality"]), channel,
                                         knob["loss"], sample.digest)
            image = no_image(sample.image.shape) if image is None else image
        else:
            image = codec.decode(data)
        t_end = time.perf_counter()
        if image.shape != sample.image.shape:
            raise PipelineError(f"{spec.codec} on {sample.id!r} at quality {knob['quality']}: decoded shape "
                                f"{image.shape} differs from {sample.image.shape}")
        # video files (no payload parser for Matroska) and plug-in codecs: the whole file counts as payload
        whole = is_video_codec(spec.codec) or not has_payload_parser(spec.codec)
        payload = len(data) if whole else payload_bytes(spec.codec, data)
        rates.update(bytes=float(len(data)), bits=8.0 * len(data), bpp=8.0 * len(data) / pixels,
                     payload_bytes=float(payload), payload_bpp=8.0 * payload / pixels,
                     encoding_time=t_dec - t_enc, decoding_time=t_end - t_dec)
        if channel is not None:           # bits on the wire (packets, FEC): the equal-bits axis
            rates.update(sent, bpp=sent["bits"] / pixels)
        changed = not np.array_equal(image, sample.image)
    budget = Budget(ratio=knob["keep_ratio"]) if spec.method else None
    if hasattr(method, "last_rates"):
        method.last_rates = {}
    if channel is not None and spec.method:
        measured = _observe_over_channel(observer, sample, method, budget, prepared, channel, knob["loss"])
    else:
        measured = observer.observe(sample, image, method, budget, prepared, changed)
    coded = getattr(method, "last_rates", None)
    if coded:            # a token bitstream (the coded method): its bits per pixel of the sample's image
        rates.update(coded, bpp=coded["bits"] / pixels, payload_bpp=8 * coded["payload_bytes"] / pixels)
    return {**rates, **measured, "latency_s": time.perf_counter() - t0}


def _observe_over_channel(observer: Observer, sample: Sample, method, budget, prepared: Prepared, channel,
                          loss: float) -> dict[str, float]:
    """The coded method's tokens sent over the channel; when none arrive, the observer sees no image."""
    from tokencodec.channels.pixels import no_image
    from tokencodec.channels.transport import NothingReceived, TokenTransport

    method.transport = TokenTransport(channel, loss, sample.digest)
    try:
        measured = observer.observe(sample, sample.image, method, budget, prepared, False)
    except NothingReceived:
        measured = observer.observe(sample, no_image(sample.image.shape), None, None, prepared, True)
        measured["tokens"] = 0.0            # what reached the model from the sender
    finally:
        transport, method.transport = method.transport, None
    method.last_rates = {**(method.last_rates or {}), **transport.rates}   # bits: on the wire
    return measured


__all__ = ["PipelineError", "PipelineSpec", "codec_for", "is_video_codec", "run_point"]
