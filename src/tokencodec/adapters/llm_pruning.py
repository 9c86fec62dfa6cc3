"""Model-agnostic sequence surgery for visual-token pruning inside (or in front of) a decoder LLM.

Pure tensor functions; no module, no hook. The adapters (``llava.py``, ``llm_stages.py``,
``qwen2_vl.py``) call them to shorten a sequence whose image tokens occupy one contiguous span per
sample, and to keep every per-token tensor of the later layers consistent with it; Qwen2-VL's
pre-LLM path, where a row may hold several images and rows keep different counts, uses
:func:`left_aligned_gather`, :func:`gather_seq` and :func:`prune_mask`.

**The edit.** One pruning stage replaces the span ``[start_b, start_b + n)`` of sample b by K new
tokens. Each new token names the old span slot it stands for (``rep``: itself when kept, the
representative when merged). :func:`span_index` turns that into ``index`` [B, S'], for every new
slot the old slot it takes its identity from (position, mask row and column, RoPE angle). Text
slots keep their own. Everything per token is then gathered with ``index``:

- hidden states / input embeddings: :func:`take` (the span's features are then overwritten with the
  method's output by :func:`write_span`, so merged tokens carry merged features);
- position ids ``[B|1, S]`` (or ``[3, B, S]`` for M-RoPE: pass ``seq_dim=-1``) and RoPE cos/sin
  ``[B|1, S, d]``: :func:`take`; or, to renumber, :func:`renumber_positions` and the model's rotary embedding;
- attention masks, 2-D ``[B, S]`` padding masks or 4-D ``[B, 1, Q, KV]`` additive/boolean masks:
  :func:`take_mask` (rows and columns at prefill), :func:`decode_mask` (columns only, plus the new
  tokens' columns, during decoding with a KV cache whose pruned layers hold fewer entries).

Order: the adapter sorts the new span by ``rep`` (:func:`sort_by_rep`), so ``index`` is
non-decreasing. Gathering a causal mask with a monotone index gives again a causal mask in slot
order, which is what SDPA's ``is_causal`` (mask None) assumes; no mask has to be rebuilt, and the
attention implementation does not matter.

**Signals without attention maps.** :func:`query_key` recomputes one layer's queries (for a few
rows only) and keys from its input, with the model's RoPE function and GQA-aware head counts, and
:func:`attention_rows` forms softmax rows with a causal + padding mask built from slot order and
a 2-D key-validity mask (:func:`allowed_keys`). Both match eager attention's probabilities.

**Compositions.** Several stages compose: ``index`` of stage s points into the slots of stage s−1;
:func:`compose` maps it back to layer-0 slots, which is what the decode-time column slicing needs
(the mask the model builds each decode step is sized by layer 0's cache).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tokencodec.tokens import batch as batch_module  # CHECK_VALUES, read at call time
from tokencodec.tokens.transfer import to_device

# -- the edit -------------------------------------------------------------------------------------


def span_index(start: Tensor, span: int, rep: Tensor, seq_len: int) -> Tensor:
    """[B, seq_len − span + K] long: for each new slot, the old slot it comes from.

    ``start`` [B] is each sample's span start, ``span`` the span's current length, ``rep`` [B, K] the
    old span slot (0 ≤ rep < span) each new span token stands for.
    """
    k = rep.shape[1]
    j = torch.arange(seq_len - span + k, device=rep.device)[None]          # [1, S']
    s = start[:, None].to(rep.device)
    inside = (j >= s) & (j < s + k)
    outside = torch.where(j < s, j, j - k + span)
    spanned = s + rep.gather(1, (j - s).clamp(0, max(k - 1, 0)).expand(rep.shape[0], -1)) if k else outside
    return torch.where(inside, spanned, outside)


def ragged_span_index(start: Tensor, spans: list[int], rep: Tensor, seq_len: int
                      ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`span_index` for rows whose spans differ in length (``spans``: host ints, one per row).

    Each row is left-padded by ``spans[b] − min(spans)`` slots, so that every row has the one width
    ``seq_len − min(spans) + K``. Returns (``index`` [B, W], ``real`` [B, W]: False on the added padding, whose
    index is 0; ``pad`` [B]); with equal spans, ``(span_index(...), None, None)``.
    """
    lo, k = min(spans), rep.shape[1]
    if max(spans) == lo:
        return span_index(start, lo, rep, seq_len), None, None
    pad = to_device(torch.tensor([s - lo for s in spans]), rep.device)       # host ints: a non-blocking copy
    j = torch.arange(seq_len - lo + k, device=rep.device)[None] - pad[:, None]    # slot in the row's own layout
    s = start[:, None].to(rep.device)
    inside = (j >= s) & (j < s + k)
    outside = torch.where(j < s, j, j - k + lo + pad[:, None])
    spanned = s + rep.gather(1, (j - s).clamp(0, max(k - 1, 0))) if k else outside
    return torch.where(inside, spanned, outside).clamp_min(0), j >= 0, pad


def image_spans(is_image: Tensor, n: int) -> Tensor | None:
    """[B] the start of each row's one contiguous run of ``n`` image slots.

    The layout is checked (None if a row has another one) only when value checks are on
    (``TOKENCODEC_CHECK_VALUES``, :mod:`tokencodec.tokens.batch`): the check reads the device (a host sync),
    and a wrong layout is refused by the model itself when its image features and tokens disagree.
    """
    start = is_image.to(torch.int8).argmax(1)
    if batch_module.CHECK_VALUES:
        span = span_slots(start, n).clamp_max(is_image.shape[1] - 1)
        if not bool(((is_image.sum(1) == n) & is_image.gather(1, span).all(1)).all()):    # one read
            return None
    return start


def span_slots(start: Tensor, k: int) -> Tensor:
    """[B, K] the slots of the new span (it starts where the old one did)."""
    return start[:, None] + torch.arange(k, device=start.device)


def sort_by_rep(rep: Tensor, valid: Tensor | None = None) -> Tensor:
    """The order [B, K] that makes ``rep`` non-decreasing; invalid (padded) tokens go last."""
    key = rep if valid is None else torch.where(valid, rep, rep.new_full((), torch.iinfo(rep.dtype).max))
    return key.argsort(dim=1, stable=True)


def compose(outer: Tensor | None, inner: Tensor) -> Tensor:
    """Map ``inner`` (indices into the slots described by ``outer``) back to ``outer``'s space."""
    return inner if outer is None else outer.gather(1, inner)


def take(x: Tensor, index: Tensor, seq_dim: int = 1, batch_dim: int = 0) -> Tensor:
    """``x`` gathered along ``seq_dim`` with ``index`` [B, S'], broadcasting a batch axis of size 1.

    Works for [B, S, …] tensors, 4-D masks (``seq_dim=-1`` for keys, ``-2`` for queries), attention rows
    [B, R, T] (``seq_dim=-1``) and M-RoPE position ids [3, B, S] (``batch_dim=1, seq_dim=-1``).
    """
    seq_dim, batch_dim = seq_dim % x.dim(), batch_dim % x.dim()
    shape = list(x.shape)
    shape[batch_dim] = index.shape[0]
    view = [1] * x.dim()
    view[batch_dim], view[seq_dim] = index.shape
    out = list(shape)
    out[seq_dim] = index.shape[1]
    return x.expand(*shape).gather(seq_dim, index.reshape(view).expand(*out))


def write_span(x: Tensor, start: Tensor, values: Tensor) -> Tensor:
    """``x`` [B, S, D] with ``values`` [B, K, D] written at slots start_b … start_b + K − 1."""
    slots = span_slots(start.to(x.device), values.shape[1])
    return x.scatter(1, slots[..., None].expand(-1, -1, x.shape[-1]), values.to(x.dtype))


# -- masks ----------------------------------------------------------------------------------------


def take_mask(mask: Tensor | None, index: Tensor, rows: bool = True) -> Tensor | None:
    """A 2-D [B, S] or 4-D [B, H, Q, S] mask gathered to the kept slots (4-D: rows too, when ``rows``)."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return take(mask, index)
    out = take(mask, index, seq_dim=-1)
    return take(out, index, seq_dim=-2) if rows else out


def decode_columns(index: Tensor, space: int, total: int) -> Tensor:
    """[B, S' + total − space]: the kept cache columns (``index`` into ``space`` slots), then the new ones."""
    new = torch.arange(space, total, device=index.device).expand(index.shape[0], -1)
    return torch.cat([index, new], dim=1)


def decode_mask(mask: Tensor | None, index: Tensor, space: int) -> Tensor | None:
    """A decode-step mask whose key axis spans ``space`` prefill slots + new ones, sliced to the kept keys."""
    if mask is None:
        return None
    cols = decode_columns(index, space, mask.shape[-1])
    return take(mask, cols, seq_dim=-1)


def mask_invalid(mask: Tensor, valid: Tensor) -> Tensor:
    """A 2-D [B, S] padding mask with the slots where ``valid`` is False masked out (its own dtype)."""
    return mask * valid.to(mask.dtype) if mask.dtype != torch.bool else mask & valid


# -- several spans per row, different counts per row (Qwen2-VL pre-LLM) ---------------------------

def left_aligned_gather(keep: Tensor, counts: list[int] | None = None) -> Tensor:
    """[B, S'] unpruned column of each slot: kept columns in order, left-padded with −1 to the longest row.

    ``counts``: the kept columns per row when the caller knows them (no host read); else they are read once.
    """
    if counts is None:
        counts = keep.sum(1).tolist()                  # the output's width depends on them: one read
    width = max(counts)
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)        # kept columns first, in order
    pad = width - to_device(torch.tensor(counts), keep.device)[:, None]       # a non-blocking copy
    src = torch.arange(width, device=keep.device) - pad
    return torch.where(src >= 0, order.gather(1, src.clamp_min(0)), -1)


def gather_seq(x: Tensor, gather: Tensor, axis: int = 0, fill: float = 0) -> Tensor:
    """Gather the sequence axis (``axis + 1``) of x at ``gather`` [B, S'] (batch at ``axis``); −1 gives ``fill``.

    ``axis=0`` for inputs_embeds [B, S, D] and masks [B, S]; ``axis=1`` for position ids [R, B, S].
    """
    shape = [1] * x.dim()
    shape[axis], shape[axis + 1] = gather.shape
    size = list(x.shape)
    size[axis + 1] = gather.shape[1]
    out = x.gather(axis + 1, gather.clamp(min=0).view(shape).expand(size))
    return out.masked_fill((gather < 0).view(shape).expand(size), fill)


def prune_mask(mask: Tensor | None, gather: Tensor, full_len: int) -> Tensor | None:
    """Map an unpruned-length 2-D mask [B, full_len + n] onto the pruned cache layout [B, S' + n]."""
    if mask is None:
        if (gather >= 0).all():
            return None
        mask = torch.ones(gather.shape[0], full_len, dtype=torch.long, device=gather.device)
    if mask.dim() != 2:
        raise NotImplementedError("the adapter needs a 2-D attention mask [B, S] (or None); "
                                  f"got shape {tuple(mask.shape)}")
    if mask.shape[1] < full_len:
        raise ValueError(f"attention mask covers {mask.shape[1]} tokens, fewer than the {full_len} of the "
                         "unpruned prompt; pass the mask of the whole (unpruned) sequence")
    head = gather_seq(mask[:, :full_len], gather)
    return torch.cat([head, mask[:, full_len:]], 1)


# -- positions ------------------------------------------------------------------------------------


def renumber_positions(positions: Tensor, index: Tensor, start: Tensor, span: int | Tensor, k: int,
                       pad: Tensor | None = None, real: Tensor | None = None) -> Tensor:
    """Contiguous positions [B, S'] after the edit: the span counts on from its first slot's position,
    the slots after it shift down by span − K (``positions`` [B|1, S]; for M-RoPE apply per axis).

    Rows of different span lengths (:func:`ragged_span_index`): ``span`` [B] and ``pad`` [B], each row's left
    padding. A span whose last slots are padding (``real`` [B]: real tokens first, then masked slots) numbers
    only its real tokens: the text after it shifts down by span − real. Either way a row's positions then all
    move up by its padding (pad + K − real; RoPE sees the same distances), so that every row's next position is
    the one width's, less min(spans) − K.
    """
    kept = take(positions, index)
    j = torch.arange(index.shape[1], device=index.device)[None]
    s = start[:, None].to(index.device)
    first = take(positions, s)
    shift, drop = 0, span - k
    if pad is not None:
        shift, drop = pad[:, None], span[:, None] - k
        j = j - shift
    if real is not None:
        shift = shift + (k - real[:, None])
        drop = drop + (k - real[:, None])
    inside = (j >= s) & (j < s + k)
    return torch.where(inside, first + (j - s), torch.where(j >= s + k, kept - drop, kept)) + shift


# -- attention signals without attention maps -----------------------------------------------------


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """[B, Hkv, T, d] → [B, Hkv·groups, T, d] (GQA), as the model does before attention."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def query_key(attn, normed: Tensor, cos: Tensor, sin: Tensor, rope: Callable, rows: Tensor | None = None,
              need_query: bool = True) -> tuple[Tensor | None, Tensor]:
    """One attention module's post-RoPE queries [B, H, R, d] (only ``rows`` [B, R] when given) and keys [B, Hkv, T, d].

    ``attn`` has ``q_proj``, ``k_proj`` and ``head_dim`` (Llama, Mistral, Qwen2…); ``normed`` is the layer's
    input after its input norm; ``rope(q, k, cos, sin)`` is the model's own rotary function.
    """
    b, t, _ = normed.shape
    d = attn.head_dim
    k = attn.k_proj(normed).view(b, t, -1, d).transpose(1, 2)
    q = None
    if need_query:
        x, c, s = normed, cos.expand(b, -1, -1), sin.expand(b, -1, -1)
        if rows is not None:
            x, c, s = take(normed, rows), take(c, rows), take(s, rows)
        q = attn.q_proj(x).view(b, x.shape[1], -1, d).transpose(1, 2)
        q, _ = rope(q, q, c, s)
    _, k = rope(k, k, cos.expand(b, -1, -1), sin.expand(b, -1, -1))
    return q, k


def allowed_keys(query_slots: Tensor, key_valid: Tensor) -> Tensor:
    """[B, R, T] bool: causal in slot order (key ≤ query) and the key is a real token."""
    t = key_valid.shape[1]
    causal = torch.arange(t, device=key_valid.device)[None, None] <= query_slots[..., None]
    return causal & key_valid[:, None, :]


def attention_rows(q: Tensor, k: Tensor, allowed: Tensor, scaling: float | None = None) -> Tensor:
    """softmax(q·kᵀ·scaling) over the allowed keys, [B, H, R, T] float32, like eager attention."""
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    scaling = q.shape[-1] ** -0.5 if scaling is None else scaling
    logits = torch.matmul(q, k.transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~allowed[:, None], torch.finfo(logits.dtype).min)
    return logits.softmax(-1, dtype=torch.float32)


def last_valid(valid: Tensor) -> Tensor:
    """[B] the last real slot of each sample (the last prompt token, left or right padding)."""
    t = valid.shape[1]
    return t - 1 - valid.flip(1).to(torch.int8).argmax(1)


__all__ = ["allowed_keys", "attention_rows", "compose", "decode_columns", "decode_mask", "gather_seq",
           "image_spans", "last_valid", "left_aligned_gather", "mask_invalid", "prune_mask", "query_key",
           "ragged_span_index", "renumber_positions", "repeat_kv", "sort_by_rep", "span_index", "span_slots", "take",
           "take_mask", "write_span"]
