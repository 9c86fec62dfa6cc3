"""The token side: visual tokens as data, and the methods that compress them."""

from tokencodec.tokens.batch import TokenBatch

__all__ = ["TokenBatch"]
