"""Token codecs: quantisers, entropy models (integer tables coded with constriction) and the bitstream.

Apart from the token methods, as CompressAI keeps entropy models apart from its networks:
``quantizers.py`` (scalar per channel, k-means codebook), ``models.py`` (factorised per-channel
tables, an adaptive categorical, the positions bitmap), ``bitstream.py`` (the shared profile and the
versioned, checksummed container). Needs the ``entropy`` extra (constriction).
"""

from tokencodec.entropy.bitstream import (
    DecodedTokens,
    EncodedTokens,
    TokenBitstreamError,
    TokenCodecProfile,
    decode_tokens,
    encode_tokens,
    read_header,
)
from tokencodec.entropy.models import AdaptiveCategorical, FactorizedTables
from tokencodec.entropy.quantizers import QuantizerError, ScalarQuantizer, VectorQuantizer

__all__ = ["AdaptiveCategorical", "DecodedTokens", "EncodedTokens", "FactorizedTables", "QuantizerError",
           "ScalarQuantizer", "TokenBitstreamError", "TokenCodecProfile", "VectorQuantizer", "decode_tokens",
           "encode_tokens", "read_header"]
