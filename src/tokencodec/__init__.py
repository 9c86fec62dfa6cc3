"""tokencodec: visual tokens of multimodal LLMs treated as a coding problem.

One rate-distortion core serves pixel codecs (rate in bits) and token compression (rate in
tokens, FLOPs, latency); see ``tokencodec.rd``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokencodec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
