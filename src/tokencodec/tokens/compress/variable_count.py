"""Outputs whose token count depends on the data (HoliTom's and FastVID's official counts).

The candidates are scored on fixed shapes; only the output length needs a number on the host. Two
ways, chosen by the caller: ``width=None`` reads the batch's largest count with **one** host read per
call (the output is exactly the official count for a batch of one, padded to the largest count for
several videos); ``width=w`` (a bound known from the shapes alone) pads every row to w slots and
never syncs. Padded slots follow :class:`~tokencodec.tokens.batch.TokenBatch`'s convention: zero
features and size, no source patch, position −1, ``mask`` False.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch


def order_kept(keep: Tensor, key: Tensor, width: int | None = None) -> tuple[Tensor, Tensor, bool]:
    """(order [B, W]: the kept candidates by ascending ``key``, then the rest; valid [B, W]; padded).

    ``keep`` [B, C] bool, ``key`` [B, C] long (distinct per row among kept candidates).
    """
    counts = keep.sum(1)
    if width is None:
        hi, lowest = torch.stack([counts.max(), counts.min()]).tolist()      # the one host read of a call
        width, padded = hi, lowest < hi
    else:
        padded = True
    width = min(width, keep.shape[1])
    last = torch.iinfo(torch.long).max
    order = torch.where(keep, key, last).argsort(dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=keep.device) < counts[:, None]
    return order, valid, padded


def combine_kept(batch: TokenBatch, weights: Tensor, members: Tensor, rep: Tensor, valid: Tensor,
                 padded: bool) -> TokenBatch:
    """``batch.combine`` for the output slots (weights/members [B, W, N], rep [B, W]), padding masked."""
    weights = weights * valid[..., None]
    members = members & valid[..., None]
    out = batch.combine(weights, members, torch.where(valid, rep, 0))
    if not padded:
        return out
    signals = {name: v.masked_fill(~valid.reshape(*valid.shape, *[1] * (v.dim() - 2)), 0)
               for name, v in out.signals.items()}
    return replace(out, positions=out.positions.masked_fill(~valid, -1), mask=valid, signals=signals)


__all__ = ["combine_kept", "order_kept"]
