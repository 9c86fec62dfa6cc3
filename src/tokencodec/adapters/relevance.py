"""Where a text-guided method's relevance embeddings come from: ``image_embedding`` and ``text_embedding``.

CDPruner (docs/token-methods.md, its card) scores each patch by its similarity to the question in an
image–text space; an adapter that runs it supplies both sides (signals ``image_embedding`` [B, N, E],
context ``text_embedding`` [B|1, M, E] and optionally ``text_embedding_mask`` [B, M]). Two spaces, an
adapter option ``embedding_space``:

- ``"clip"`` (default; the official one): CLIP's joint space. Image side: the feature layer's patch
  states through the tower's ``post_layernorm`` (in the tower's dtype) and CLIP's ``visual_projection``
  (in its own dtype, float32 as officially loaded); the projection is the model's own
  (``CLIPVisionModelWithProjection``) or the ``visual_projection=`` option (an ``nn.Linear``, or a
  ``CLIPVisionModelWithProjection`` of the tower's checkpoint: HF LLaVA checkpoints do not ship it).
  Text side: ``text_embedding=`` (a tensor the caller computed), or ``text_encoder=`` (a
  ``CLIPTextModelWithProjection`` of the same checkpoint) with ``text_tokenizer=`` and ``question=``,
  the **raw question** (no chat template), encoded by :func:`clip_text_embedding` as the official code
  does: tokenised without truncation, zero-padded to a multiple of the text tower's 77 positions and
  encoded as M chunks, one ``text_embeds`` per chunk.
- ``"llm-input"`` (a deviation, never the default; for MLLMs without a CLIP text tower, such as the
  diagnostic MLLM): the LLM's input-embedding space. Image side: the projector's output (the tokens as
  the LLM receives them); text side: the LLM's input-embedding rows of ``question_ids=`` [B|1, M] (the
  raw question tokenised by the LLM's tokenizer; ``question_mask=`` [B, M] when lengths differ), one
  embedding per token. The official code has no such path (the author left it unanswered, issues #18 and
  #20); OpenVINO GenAI's third-party port uses the LLM's text embeddings of the instruction. The −cos sign
  flip CDPruner applies was observed for CLIP only, so in this space the sign (``relevance=``) is a choice
  to make on held-out data.

Text embeddings are computed once, when the adapter is built (the question is known then), not per forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tokencodec.tokens.signals import Signal

EMBEDDING_SIGNALS = frozenset({Signal.IMAGE_EMBEDDING, Signal.TEXT_EMBEDDING, Signal.TEXT_EMBEDDING_MASK})
SPACES = ("clip", "llm-input")
OPTIONS = ("embedding_space", "visual_projection", "text_embedding", "text_embedding_mask", "text_encoder",
           "text_tokenizer", "question", "question_ids", "question_mask")


def reads_embeddings(needs) -> bool:
    """Whether a method's (resolved) needs include the relevance embeddings."""
    return bool(set(needs) & EMBEDDING_SIGNALS)


@torch.no_grad()
def clip_text_embedding(text_encoder: nn.Module, tokenizer, questions: str | Sequence[str]) -> tuple[Tensor, Tensor]:
    """``text_embeds`` [B, M, E] of each question's 77-token chunks and a mask [B, M] of the real chunks.

    As the official ``CLIPVisionTower.forward``: the tokenizer's ``input_ids`` and ``attention_mask``
    (no truncation), both zero-padded to a multiple of ``max_position_embeddings`` and reshaped into
    chunks, each encoded alone. Questions of different lengths get different M; the shorter are padded
    with zero embeddings, masked out.
    """
    questions = [questions] if isinstance(questions, str) else list(questions)
    if not questions or not all(isinstance(q, str) for q in questions):
        raise ValueError(f"question must be a string or a list of strings; got {questions!r}")
    length = text_encoder.config.max_position_embeddings
    device = next(text_encoder.parameters()).device
    rows = []
    for q in questions:
        enc = tokenizer(text=[q], return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pad = (-ids.shape[1]) % length
        chunks = {k: torch.cat([v, v.new_zeros(1, pad)], 1).reshape(-1, length).to(device)
                  for k, v in (("input_ids", ids), ("attention_mask", mask))}
        rows.append(text_encoder(**chunks).text_embeds)
    m = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), m, rows[0].shape[-1])
    real = torch.zeros(len(rows), m, dtype=torch.bool, device=out.device)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]], real[i, :r.shape[0]] = r, True
    return out, real


class RelevanceEmbeddings:
    """The two sides of one adapter's relevance space (see the module docstring); build with :meth:`from_options`."""

    def __init__(self, space: str, text: Tensor, text_mask: Tensor | None, post_layernorm: nn.Module | None = None,
                 visual_projection: nn.Module | None = None):
        self.space, self.text, self.text_mask = space, text, text_mask
        self.post_layernorm, self.visual_projection = post_layernorm, visual_projection
        self._on: dict[torch.device, dict[str, Tensor]] = {}     # the text side per device, moved once

    @classmethod
    def from_options(cls, who: str, *, tower_model: nn.Module | None = None, model: nn.Module | None = None,
                     input_embeddings: nn.Module | None = None, **options: Any) -> RelevanceEmbeddings:
        """Check the adapter's ``options`` (names in :data:`OPTIONS`) and compute the text side.

        ``tower_model``: the CLIP vision model (its ``post_layernorm``); ``model``: what the user passed (its
        own ``visual_projection``, if any); ``input_embeddings``: the LLM's embedding table (None: no LLM, so
        no "llm-input" space). Errors are one line naming the option and what is allowed.
        """
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"{who}: unknown option(s) {unknown}; a text-guided method takes {list(OPTIONS)}")
        space = options.get("embedding_space") or "clip"
        if space not in SPACES:
            raise ValueError(f"{who}: embedding_space={space!r}; allowed: {list(SPACES)}")
        text = options.get("text_embedding")
        mask = options.get("text_embedding_mask")
        clip_only = [k for k in ("visual_projection", "text_encoder", "text_tokenizer", "question")
                     if options.get(k) is not None]
        llm_only = [k for k in ("question_ids", "question_mask") if options.get(k) is not None]
        if space == "llm-input":
            if input_embeddings is None:
                raise ValueError(f"{who}: embedding_space='llm-input' needs an MLLM (its projector and LLM "
                                 "embeddings); a bare tower supports 'clip'")
            if clip_only:
                raise ValueError(f"{who}: options {clip_only} belong to embedding_space='clip'")
            if text is None:
                ids = options.get("question_ids")
                if not isinstance(ids, Tensor) or ids.dtype.is_floating_point or ids.dim() not in (1, 2):
                    raise ValueError(f"{who}: embedding_space='llm-input' needs question_ids= (the raw question's "
                                     "token ids in the LLM's vocabulary, [B or 1, M]) or text_embedding=")
                ids = ids[None] if ids.dim() == 1 else ids
                device = input_embeddings.weight.device
                with torch.no_grad():
                    text = input_embeddings(ids.to(device))
                mask = options.get("question_mask")
            return cls(space, _check_text(who, text), _check_mask(who, mask, text))
        if llm_only:
            raise ValueError(f"{who}: options {llm_only} belong to embedding_space='llm-input'")
        projection = options.get("visual_projection")
        if projection is None:
            projection = getattr(model, "visual_projection", None)
        projection = getattr(projection, "visual_projection", projection)   # a CLIPVisionModelWithProjection
        post_ln = getattr(tower_model, "post_layernorm", None)
        if not isinstance(projection, nn.Module) or post_ln is None:
            raise ValueError(f"{who}: CDPruner's image side is CLIP's visual_projection of the post_layernorm-ed "
                             "patches; pass visual_projection= (an nn.Linear or a CLIPVisionModelWithProjection of "
                             "the tower's checkpoint), or embedding_space='llm-input' on an MLLM without CLIP's "
                             "text tower (a deviation)")
        if text is None:
            enc, tok, question = options.get("text_encoder"), options.get("text_tokenizer"), options.get("question")
            if enc is None or tok is None or question is None:
                raise ValueError(f"{who}: the text side needs text_embedding= (a tensor [B or 1, M, E]) or "
                                 "text_encoder= (a CLIPTextModelWithProjection), text_tokenizer= and question= "
                                 "(the raw question, no chat template)")
            text, mask = clip_text_embedding(enc, tok, question)
        elif any(options.get(k) is not None for k in ("text_encoder", "text_tokenizer", "question")):
            raise ValueError(f"{who}: give text_embedding= or text_encoder=/text_tokenizer=/question=, not both")
        text = _check_text(who, text)
        width = projection.weight.shape[0] if isinstance(getattr(projection, "weight", None), Tensor) else None
        if width is not None and text.shape[-1] != width:
            raise ValueError(f"{who}: text_embedding has width {text.shape[-1]} but visual_projection gives {width}")
        return cls(space, text, _check_mask(who, mask, text), post_ln, projection)

    def image(self, patches: Tensor, projected: Tensor | None = None) -> Tensor:
        """``image_embedding`` [B, N, E] of the feature layer's ``patches`` [B, N, D] (``projected``: the
        projector's output, the "llm-input" image side)."""
        if self.space == "llm-input":
            if projected is None:
                raise RuntimeError("embedding_space='llm-input' reads the projector's output")
            return projected
        x = self.post_layernorm(patches)
        weight = next(self.visual_projection.parameters())
        return self.visual_projection(x.to(weight.dtype))

    def context(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        """The context entries for a batch of ``batch`` images on ``device`` (the text moved there once)."""
        if self.text.shape[0] not in (1, batch):
            raise ValueError(f"text_embedding holds {self.text.shape[0]} questions for {batch} images; give one "
                             "per image, or one for all")
        if device not in self._on:
            out = {Signal.TEXT_EMBEDDING: self.text.to(device)}
            if self.text_mask is not None:
                out[Signal.TEXT_EMBEDDING_MASK] = self.text_mask.to(device)
            self._on[device] = out
        return dict(self._on[device])


def _check_text(who: str, text) -> Tensor:
    if not isinstance(text, Tensor) or not text.dtype.is_floating_point or text.dim() not in (2, 3):
        raise ValueError(f"{who}: text_embedding must be a float tensor [B or 1, M, E] (or [M, E]); got "
                         f"{type(text).__name__ if not isinstance(text, Tensor) else tuple(text.shape)}")
    return text[None] if text.dim() == 2 else text


def _check_mask(who: str, mask, text: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dim() != 2 or tuple(mask.shape) != tuple(text.shape[:2]):
        raise ValueError(f"{who}: the text mask must be a tensor [B, M] = {tuple(text.shape[:2])}")
    return mask.bool()


__all__ = ["EMBEDDING_SIGNALS", "OPTIONS", "SPACES", "RelevanceEmbeddings", "clip_text_embedding",
           "reads_embeddings"]
