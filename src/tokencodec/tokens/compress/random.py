"""Random pruning: keep a uniformly random subset of K tokens ("random").

The ``random_pre_llm`` baseline of UniPruneBench (arXiv 2511.02650): a ``randperm`` prefix of
K = round(ratio·N) tokens (our ``Budget`` rounds; UniPruneBench truncates with int()). We sort the
kept indices to raster order as its README and Qwen path do (its ``Random_PreLLM.py`` does not).

Seeding, which no reference does: the draw for each image comes from a ``torch.Generator`` seeded
with ``self.seed`` mixed with a hash of that image's features (each token's strongest channel,
which survives the last-bit noise of batched computation). So a call is deterministic for a
seed, an image gets the same subset whatever batch it sits in, and different images still get
different subsets (a plain per-call seed would prune every batch-1 image identically). With
``content_seed=False`` one subset is drawn from ``self.seed`` alone and shared by every image.

Host syncs: the subsets are drawn on the host (``torch.randperm`` with a CPU generator, as the
reference code) and copied to the device without blocking; with ``content_seed`` the hash needs each
image's channel argmax on the host: one read per call, for the whole batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.transfer import to_device, to_host


def image_seed(seed: int, strongest: Tensor) -> int:
    """A 63-bit seed from ``seed`` and one image's strongest channel per token ([N] long, on the host).

    It hashes each token's strongest channel (argmax over D), not the raw bytes: the same image
    computed alone or inside a padded batch differs in the last bits of its features (other
    matmul blocking), which would change a byte hash and so the subset; an argmax changes only
    when two channels tie to within that noise.
    """
    data = strongest.to(torch.int64).numpy().tobytes()
    digest = hashlib.blake2b(data, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little") >> 1


def random_select(n: int, k: int, generator: torch.Generator) -> Tensor:
    """K distinct indices out of n, uniformly at random, in raster order."""
    return torch.randperm(n, generator=generator)[:k].sort().values


@dataclass(frozen=True)
class RandomOptions(MethodOptions):
    content_seed: bool = True   # seed each image from its content (False: one subset for all images)


@register_method("random")
class RandomPrune(TokenMethod):
    """Uniformly random subset of K tokens, in raster order (UniPruneBench, arXiv 2511.02650).

    Options: ``content_seed`` (default True) — see the module docstring.
    """

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: no signal is read"
    paper = "UniPruneBench random_pre_llm baseline, arXiv 2511.02650"
    Options = RandomOptions

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        n = batch.num_tokens
        k = budget.tokens(n)
        if self.options.content_seed:
            strongest, = to_host(batch.features.detach().float().argmax(-1))     # one read for the batch
            gens = [torch.Generator().manual_seed(image_seed(self.seed, row)) for row in strongest]
            index = torch.stack([random_select(n, k, g) for g in gens])
        else:
            shared = random_select(n, k, torch.Generator().manual_seed(self.seed))
            index = shared.expand(batch.batch_size, k)
        return batch.take(to_device(index, batch.features.device))
