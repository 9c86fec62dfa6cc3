"""Files over a channel, for the command line: ``tokencodec channel FILE -o RECEIVED`` and the receivers that
read RECEIVED (``tokencodec answer`` / ``classify`` / ``decode``).

FILE is a token bitstream (the container ``tokencodec encode`` writes) or a packet capture. A container
is decoded with its shipped profile and packetised at the MTU in **token-norm order** (the container
keeps raster order only, so the sender's attention is gone; the feature norm is the importance proxy
that needs nothing else); a capture's datagrams are sent again as they are. RECEIVED is a capture
(:func:`tokencodec.entropy.packets.write_capture`) of the datagrams that came off the link, bit errors
included; the receiver drops what fails a CRC, recovers FEC blocks, finds the profile by the 4-byte tag
and decodes the tokens that arrived.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tokencodec.entropy import TokenBitstreamError


class NothingArrived(TokenBitstreamError):
    """A capture in which no token packet survived: the receiver has no image."""


def _profiles():
    from tokencodec.entropy import TokenCodecProfile
    from tokencodec.tokens.compress.coded import PROFILES

    for path in sorted(PROFILES.rglob("*.safetensors")):
        yield TokenCodecProfile.load(path), path


def transmit_file(path: Path, spec, loss: float) -> tuple[bytes, dict]:
    """(the capture of what arrives, a report) for a token container or a capture sent over the channel."""
    from tokencodec.channels.transport import protect_packets, source_mtu, through_channel
    from tokencodec.entropy.packets import CAPTURE_MAGIC, packetize, read_capture, write_capture
    from tokencodec.split import decode_file

    data = Path(path).read_bytes()
    key = hashlib.sha256(data).hexdigest()
    if data[:4] == CAPTURE_MAGIC:
        wire, repair, kind = list(read_capture(data, str(path)).datagrams), None, "capture"
    else:
        head, tokens, where = decode_file(path)
        profile = next(p for p, f in _profiles() if f == where)
        order = np.argsort(-np.linalg.norm(tokens.features, axis=1), kind="stable")
        stream = packetize(tokens.features, tokens.positions, tokens.grid, tokens.frames, profile, tokens.prefix,
                           order, source_mtu(spec))
        wire, repair = protect_packets(list(stream.packets), spec)
        kind = "container"
    arrived, lost = through_channel(wire, spec, loss, key)
    report = {"input": kind, "datagrams_sent": len(wire), "datagrams_lost": int(lost.sum()),
              "bytes_sent": sum(len(d) for d in wire), "repair": repair, "loss": loss,
              "channel": spec.describe(loss)}
    return write_capture(arrived, report), report


def receive_file(data: bytes, name: str):
    """(report, DecodedTokens, profile path) of a capture: the tokens that arrived (NothingArrived if none)."""
    from tokencodec.channels.fec import recover
    from tokencodec.entropy import DecodedTokens
    from tokencodec.entropy.packets import PROFILE_TAG, read_capture, read_packet_header, receive_tokens

    capture = read_capture(data, name)
    packets = recover(capture.datagrams).packets
    tags = set()
    for p in packets:
        try:
            tags.add(read_packet_header(p)["profile_tag"])
        except TokenBitstreamError:
            continue
    for profile, where in _profiles():
        if profile.id[:PROFILE_TAG].hex() in tags:
            got = receive_tokens(packets, profile, name)
            report = {"channel": capture.meta, **got.report(), "profile": profile.id.hex(),
                      "grid": list(got.grid), "frames": got.frames}
            return report, DecodedTokens(got.features, got.positions, got.grid, got.frames, profile.id,
                                         got.prefix), where
    why = "no valid token packet" if not tags else f"no shipped profile has tag(s) {sorted(tags)}"
    raise NothingArrived(f"{name}: {why} among {len(capture.datagrams)} datagrams received "
                         f"({len(packets)} after FEC)")


__all__ = ["NothingArrived", "receive_file", "transmit_file"]
