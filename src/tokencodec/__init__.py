"""tokencodec: visual tokens of multimodal LLMs treated as a coding problem.

One rate-distortion core serves pixel codecs (rate in bits) and token compression (rate in
tokens, FLOPs, latency); see ``tokencodec.rd``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokencodec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def compress(model, method, budget=None, **options):
    """The token-compression adapter for ``model`` (picked from its class), as a context manager.

    ``with tokencodec.compress(model, "divprune", Budget(ratio=0.25)) as patch: model(...)``; on LLaVA
    ``method`` may be a chain of (method, budget) steps, with ``budget`` None; see
    :mod:`tokencodec.adapters.registry`. Imported lazily so that ``import tokencodec`` stays light.
    """
    from tokencodec.adapters.registry import compress as _compress

    return _compress(model, method, budget, **options)
