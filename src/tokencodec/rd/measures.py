"""Rates and distortions that carry their unit and direction in the data, not in a column name."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Kind = Literal["rate", "distortion", "knob", "other"]


@dataclass(frozen=True)
class Measure:
    name: str
    unit: str
    higher_is_better: bool
    kind: Kind
    description: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    @classmethod
    def from_json(cls, name: str, data: dict) -> Measure:
        return cls(name=name, unit=data.get("unit", ""), higher_is_better=bool(data["higher_is_better"]),
                   kind=data.get("kind", "other"), description=data.get("description", ""))


def _m(name: str, unit: str, higher: bool, kind: Kind, description: str) -> tuple[str, Measure]:
    return name, Measure(name, unit, higher, kind, description)


# Measures with a fixed meaning. Names follow CompressAI where it has one ("bpp", "psnr-rgb").
KNOWN: dict[str, Measure] = dict([
    _m("bpp", "bit/pixel", False, "rate",
       "bits of the real bitstreams per pixel: over a data set, total bits / total pixels (pixel-weighted)"),
    _m("bpp_mean", "bit/pixel", False, "rate", "bits per pixel of each image, then the mean over images "
       "(CompressAI's averaging; one tiny image can dominate it)"),
    _m("bits", "bit", False, "rate", "size of the real bitstream"),
    _m("ideal_bits", "bit", False, "rate",
       "ideal code length −Σ log2 p of a token bitstream's sections under its tables"),
    _m("bytes", "byte", False, "rate", "size of the real bitstream"),
    _m("payload_bytes", "byte", False, "rate", "coded image data of the bitstream, container and tables left out"),
    _m("payload_bpp", "bit/pixel", False, "rate",
       "payload bits per pixel (container and tables left out), pixel-weighted over a data set"),
    # token and compute rates: computed in one place, tokencodec.metrics.rates.CostModel.point
    _m("tokens_in", "token", False, "rate", "visual tokens entering the consumer's first layer (LLM or ViT head)"),
    _m("tokens", "token", False, "rate", "visual tokens at the consumer's last layer (LLM, ViT or CNN head)"),
    _m("tokens_avg_layers", "token", False, "rate", "visual tokens averaged over the consumer's layers"),
    _m("flops", "FLOP", False, "rate", "analytic prefill FLOPs; convention and parts counted in provenance['cost']"),
    _m("latency_pred_s", "s", False, "rate", "roofline-predicted prefill time; device profile in provenance"),
    _m("latency_s", "s", False, "rate", "measured wall-clock time"),
    _m("encoding_time", "s", False, "rate", "encoder wall-clock time per image"),
    _m("decoding_time", "s", False, "rate", "decoder wall-clock time per image"),
    _m("kv_bytes", "byte", False, "rate", "KV-cache bytes after prefill, batch 1; dtype in provenance['cost']"),
    _m("psnr-rgb", "dB", True, "distortion", "PSNR over R, G, B, per image then averaged"),
    _m("psnr", "dB", True, "distortion", "PSNR (CompressAI files)"),
    _m("ssim-rgb", "", True, "distortion", "SSIM (Gaussian window 11, sigma 1.5)"),
    _m("ms-ssim-rgb", "", True, "distortion", "MS-SSIM, 5 scales, per image then averaged"),
    _m("ms-ssim", "", True, "distortion", "MS-SSIM (CompressAI files)"),
    _m("vmaf", "", True, "distortion", "VMAF (libvmaf vmaf_v0.6.1), mean over frames"),
    _m("psnr-y", "dB", True, "distortion", "PSNR of Y on yuv420p (BT.601 limited), mean over frames"),
    _m("ssim-y", "", True, "distortion", "SSIM of Y on yuv420p (ffmpeg ssim), mean over frames"),
    _m("accuracy", "", True, "distortion", "task accuracy (fraction correct)"),
    _m("agreement", "", True, "distortion", "agreement with the uncompressed model"),
    _m("top1_agreement", "", True, "distortion", "top-1 agreement with the uncompressed model"),
    _m("top5_agreement", "", True, "distortion", "top-1 of the uncompressed model within top-5"),
    _m("object_recall", "", True, "distortion", "fraction of object patches some kept token stands for"),
    _m("relevant_recall", "", True, "distortion",
       "fraction of the patches the answer depends on that some kept token stands for"),
    _m("kl", "nat", False, "distortion", "KL divergence from the uncompressed model's output"),
    _m("feature_mse", "", False, "distortion", "mean squared error of features"),
    _m("quality", "", True, "knob", "codec quality setting"),
    _m("keep_ratio", "", True, "knob", "fraction of visual tokens kept"),
    _m("loss", "", False, "knob", "packet loss rate of the channel (the mean rate of a bursty one)"),
    _m("file_bytes", "byte", False, "rate", "the file (token container or pixel file) before packetisation"),
    _m("packet_bytes", "byte", False, "rate", "the packets before FEC (headers and CRCs included)"),
    _m("fec_bytes", "byte", False, "rate", "what FEC adds on the wire (repair symbols and FEC headers)"),
    _m("datagrams", "", False, "rate", "datagrams sent"),
    _m("repair", "", False, "rate", "FEC repair symbols sent"),
    _m("datagrams_lost", "", False, "other", "datagrams the channel lost"),
    _m("delivered", "", True, "other", "fraction of the tokens (or pixel units) that reached the receiver"),
    _m("decoded", "", True, "other", "1 when the receiver had an image or tokens, 0 for no image"),
])


def lookup(name: str) -> Measure:
    """The known measure of that name, or an 'other' measure when the name is not known."""
    if name in KNOWN:
        return KNOWN[name]
    return Measure(name, "", False, "other", "not a known measure; direction unknown")
