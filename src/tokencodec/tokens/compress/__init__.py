"""Token-compression methods: one file each, registered in ``METHODS``.

Importing this package imports every method module so that the registry is complete.
"""

from tokencodec.tokens.compress import (  # noqa: F401  (each import registers its methods)
    cdpruner,
    coded,
    dart,
    dct,
    divprune,
    fastv,
    fastvid,
    flowcut,
    frame_sampling,
    holitom,
    norm,
    pool,
    prumerge,
    pyramiddrop,
    quadtree,
    random,
    rdo,
    scalable,
    sparsevlm,
    temporal,
    tome,
    visionzip,
    vispruner,
)
from tokencodec.tokens.compress.base import (
    METHODS,
    Budget,
    BudgetError,
    MethodOptionError,
    MethodOptions,
    ScoreMethod,
    TokenMethod,
    get_method,
    register_method,
)

__all__ = ["METHODS", "Budget", "BudgetError", "MethodOptionError", "MethodOptions", "ScoreMethod", "TokenMethod",
           "get_method", "register_method"]
