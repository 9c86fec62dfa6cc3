"""Lossy channels for token streams and pixel files: packet loss (i.i.d. or bursty), bit errors, FEC.

``base.py`` (the channel interfaces and the ``CHANNELS`` registry), one file per channel model
(``erasure.py``, ``gilbert_elliott.py``, ``bit_errors.py``), ``fec.py`` (RaptorQ with unequal
protection), ``pixels.py`` (pixel files packetised as their formats allow, and what their decoders do
with a loss), ``transport.py`` (the ``channel`` pipeline module: sender, channel, receiver, rates).
The token packets themselves are in :mod:`tokencodec.entropy.packets`.
"""

from tokencodec.channels import bit_errors, erasure, gilbert_elliott  # noqa: F401  (registry)
from tokencodec.channels.base import CHANNELS, BitChannel, ChannelError, PacketChannel, register_channel

__all__ = ["CHANNELS", "BitChannel", "ChannelError", "PacketChannel", "register_channel"]
